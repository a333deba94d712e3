//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! Hand-written; a unit test checks that it lists exactly the routes of the router.

use serde_json::{json, Map, Value};

use crate::waddles::{ID_LEN, MAX_CHANNEL_NAME_CHARS, MAX_DESCRIPTION_CHARS, MAX_TOPIC_CHARS, MAX_WADDLE_NAME_CHARS};
use crate::{DEFAULT_MAX_CHANNELS_PER_WADDLE, MAX_BODY_BYTES};

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn array_of(name: &str) -> Value {
    json!({ "type": "array", "items": schema_ref(name) })
}

fn response_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn id_param(name: &str, what: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true,
        "description": format!("{what} id"),
        "schema": schema_ref("Id"),
    })
}

fn user_param() -> Value {
    json!({
        "name": "user", "in": "path", "required": true,
        "description": "Username (JID localpart) of the member",
        "schema": { "type": "string", "minLength": 1, "maxLength": 64 },
    })
}

/// One operation. `responses` are added to the errors common to every route (500) and, if
/// `auth`, to the 401 and the bearer security requirement.
fn op(summary: &str, id: &str, auth: bool, params: Vec<Value>, body: Option<Value>, responses: Value) -> Value {
    let mut o = Map::new();
    o.insert("summary".into(), json!(summary));
    o.insert("operationId".into(), json!(id));
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if let Some(body) = body {
        o.insert("requestBody".into(), body);
    }
    let mut r = match responses {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if auth {
        r.entry("401").or_insert_with(|| response_ref("Unauthorized"));
        o.insert("security".into(), json!([{ "bearer": [] }]));
    } else {
        o.insert("security".into(), json!([]));
    }
    r.entry("500").or_insert_with(|| response_ref("Internal"));
    o.insert("responses".into(), Value::Object(r));
    Value::Object(o)
}

fn account_paths() -> Value {
    json!({
        "/v1/accounts": { "post": op(
            "Create an account (open registration, or the admin bearer token)", "createAccount", false, vec![],
            Some(json_body(schema_ref("Credentials"))),
            json!({
                "201": json_response("Account created", schema_ref("AccountCreated")),
                "400": response_ref("BadRequest"),
                "403": response_ref("Forbidden"),
                "409": response_ref("Conflict"),
                "413": response_ref("PayloadTooLarge"),
                "415": response_ref("UnsupportedMediaType"),
                "429": response_ref("RateLimited"),
            }),
        )},
        "/auth/session": { "post": op(
            "Log in with username and password; returns a session bearer token", "createSession", false, vec![],
            Some(json_body(schema_ref("Credentials"))),
            json!({
                "200": json_response("Session opened", schema_ref("SessionIssued")),
                "400": response_ref("BadRequest"),
                "401": response_ref("InvalidCredentials"),
                "415": response_ref("UnsupportedMediaType"),
                "429": response_ref("RateLimited"),
            }),
        )},
        "/auth/xmpp-token": { "post": op(
            "Exchange a session token for a short-lived XMPP token (SASL PLAIN password)", "createXmppToken", true,
            vec![], None,
            json!({ "200": json_response("XMPP token issued", schema_ref("XmppTokenIssued")) }),
        )},
        "/health": { "get": op(
            "Liveness probe", "health", false, vec![], None,
            json!({ "200": json_response("The process is up", schema_ref("Status")) }),
        )},
        "/ready": { "get": op(
            "Readiness probe (started, not draining, database reachable)", "ready", false, vec![], None,
            json!({
                "200": json_response("Ready", schema_ref("Status")),
                "503": json_response("Not ready", schema_ref("Error")),
            }),
        )},
        "/openapi.json": { "get": op(
            "This document", "openapi", false, vec![], None,
            json!({ "200": { "description": "OpenAPI 3.1 document", "content": { "application/json": {} } } }),
        )},
    })
}

fn waddle_paths() -> Value {
    let w = || id_param("id", "Waddle");
    json!({
        "/v1/waddles": {
            "post": op(
                "Create a waddle; the caller becomes its owner. Channels `general` (text) and `announcements` \
                 (announcement) are created with it", "createWaddle", true, vec![],
                Some(json_body(schema_ref("CreateWaddle"))),
                json!({ "201": json_response("Waddle created", schema_ref("Waddle")), "400": response_ref("BadRequest") }),
            ),
            "get": op(
                "The waddles the caller can view", "listWaddles", true, vec![], None,
                json!({ "200": json_response("Waddles", array_of("Waddle")) }),
            ),
        },
        "/v1/waddles/{id}": {
            "get": op(
                "A waddle (permission `view`)", "getWaddle", true, vec![w()], None,
                json!({
                    "200": json_response("The waddle", schema_ref("Waddle")),
                    "400": response_ref("BadRequest"),
                    "404": response_ref("NotFound"),
                }),
            ),
            "patch": op(
                "Edit a waddle (permission `administer`)", "updateWaddle", true, vec![w()],
                Some(json_body(schema_ref("UpdateWaddle"))),
                json!({
                    "200": json_response("The updated waddle", schema_ref("Waddle")),
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                }),
            ),
            "delete": op(
                "Delete a waddle, its channels and their rooms (permission `delete`: owner only)", "deleteWaddle",
                true, vec![w()], None,
                json!({
                    "204": { "description": "Deleted" },
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                }),
            ),
        },
        "/v1/waddles/{id}/members": {
            "get": op(
                "Members of a waddle and their roles (permission `view`)", "listMembers", true, vec![w()], None,
                json!({
                    "200": json_response("Members", array_of("Member")),
                    "400": response_ref("BadRequest"),
                    "404": response_ref("NotFound"),
                }),
            ),
            "post": op(
                "Grant a role to an existing account (permission `manage_members`); `admin` and `moderator` \
                 also grant `member`", "addMember", true, vec![w()], Some(json_body(schema_ref("AddMember"))),
                json!({
                    "201": json_response("The member's roles after the change", schema_ref("Member")),
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                }),
            ),
        },
        "/v1/waddles/{id}/members/{user}": {
            "delete": op(
                "Remove every role of a user in the waddle, and their grants on its channels (permission \
                 `manage_members`, or the user themself leaving). The owner cannot be removed",
                "removeMember", true, vec![w(), user_param()], None,
                json!({
                    "204": { "description": "Removed" },
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                    "409": response_ref("Conflict"),
                }),
            ),
        },
        "/v1/waddles/{id}/channels": {
            "post": op(
                "Create a channel and its MUC room (permission `manage_channels`)", "createChannel", true,
                vec![w()], Some(json_body(schema_ref("CreateChannel"))),
                json!({
                    "201": json_response("Channel created", schema_ref("Channel")),
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                    "409": response_ref("Conflict"),
                }),
            ),
            "get": op(
                "The channels of a waddle the caller can view (permission `view` on the waddle)", "listChannels",
                true, vec![w()], None,
                json!({
                    "200": json_response("Channels", array_of("Channel")),
                    "400": response_ref("BadRequest"),
                    "404": response_ref("NotFound"),
                }),
            ),
        },
    })
}

fn channel_paths() -> Value {
    let c = || id_param("id", "Channel");
    json!({
        "/v1/channels/{id}": {
            "get": op(
                "A channel (permission `view`)", "getChannel", true, vec![c()], None,
                json!({
                    "200": json_response("The channel", schema_ref("Channel")),
                    "400": response_ref("BadRequest"),
                    "404": response_ref("NotFound"),
                }),
            ),
            "patch": op(
                "Rename a channel or change its topic (permission `manage`)", "updateChannel", true, vec![c()],
                Some(json_body(schema_ref("UpdateChannel"))),
                json!({
                    "200": json_response("The updated channel", schema_ref("Channel")),
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                    "409": response_ref("Conflict"),
                }),
            ),
            "delete": op(
                "Delete a channel and destroy its room (permission `delete`)", "deleteChannel", true, vec![c()],
                None,
                json!({
                    "204": { "description": "Deleted" },
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                    "404": response_ref("NotFound"),
                }),
            ),
        },
        "/v1/permissions/check": {
            "post": op(
                "Check a permission of the caller, or of another user (requires `administer` on the object's \
                 waddle)", "checkPermission", true, vec![], Some(json_body(schema_ref("CheckRequest"))),
                json!({
                    "200": json_response("The answer", schema_ref("CheckResponse")),
                    "400": response_ref("BadRequest"),
                    "403": response_ref("Forbidden"),
                }),
            ),
        },
    })
}

fn schemas() -> Value {
    let id = json!({ "type": "string", "pattern": format!("^[a-z2-7]{{{ID_LEN}}}$") });
    let username = json!({ "type": "string", "minLength": 1, "maxLength": 64, "examples": ["alice"] });
    let timestamp = json!({ "type": "string", "format": "date-time" });
    let waddle_name = json!({ "type": "string", "minLength": 1, "maxLength": MAX_WADDLE_NAME_CHARS,
                              "description": "No control characters, not blank" });
    let description = json!({ "type": ["string", "null"], "maxLength": MAX_DESCRIPTION_CHARS });
    let channel_name = json!({ "type": "string", "pattern": format!("^[a-z0-9_-]{{1,{MAX_CHANNEL_NAME_CHARS}}}$"),
                               "description": "Unique within the waddle" });
    let channel_type = json!({ "type": "string", "enum": ["text", "announcement"] });
    let topic =
        json!({ "type": ["string", "null"], "maxLength": MAX_TOPIC_CHARS, "description": "No control characters" });
    json!({
        "Id": id,
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": false,
            "properties": { "error": {
                "type": "object", "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string", "description": "Stable machine-readable code", "enum": [
                        "invalid_username", "weak_password", "account_exists", "invalid_credentials",
                        "rate_limited", "unauthorized", "forbidden", "not_found", "method_not_allowed",
                        "invalid_json", "invalid_request", "unsupported_media_type", "payload_too_large",
                        "channel_exists", "channel_limit", "owner_cannot_leave", "not_ready", "internal_error",
                    ]},
                    "message": { "type": "string", "description": "Human-readable explanation" },
                },
            }},
        },
        "Status": { "type": "object", "required": ["status"], "properties": { "status": { "type": "string" } } },
        "Credentials": {
            "type": "object", "required": ["username", "password"],
            "properties": { "username": username, "password": { "type": "string", "minLength": 1 } },
        },
        "AccountCreated": {
            "type": "object", "required": ["username", "jid"],
            "properties": { "username": { "type": "string" }, "jid": { "type": "string" } },
        },
        "SessionIssued": {
            "type": "object", "required": ["token", "token_type", "expires_at", "jid"],
            "properties": {
                "token": { "type": "string" }, "token_type": { "const": "Bearer" },
                "expires_at": timestamp, "jid": { "type": "string" },
            },
        },
        "XmppTokenIssued": {
            "type": "object",
            "required": ["jid", "token", "expires_at", "xmpp_host", "xmpp_port", "websocket_url"],
            "properties": {
                "jid": { "type": "string" }, "token": { "type": "string" }, "expires_at": timestamp,
                "xmpp_host": { "type": "string" }, "xmpp_port": { "type": "integer" },
                "websocket_url": { "type": "string" },
            },
        },
        "Waddle": {
            "type": "object", "required": ["id", "name", "description", "owner", "created_at", "channels"],
            "properties": {
                "id": schema_ref("Id"), "name": { "type": "string" }, "description": { "type": ["string", "null"] },
                "owner": { "type": "string", "description": "Username of the owner" },
                "created_at": timestamp,
                "channels": { "type": "array", "items": schema_ref("Channel"),
                              "description": "The channels the caller can view, by name" },
            },
        },
        "CreateWaddle": {
            "type": "object", "required": ["name"], "additionalProperties": false,
            "properties": { "name": waddle_name, "description": description },
        },
        "UpdateWaddle": {
            "type": "object", "additionalProperties": false,
            "description": "Absent fields are left unchanged; a null description clears it",
            "properties": { "name": waddle_name, "description": description },
        },
        "Member": {
            "type": "object", "required": ["user", "roles"],
            "properties": {
                "user": { "type": "string" },
                "roles": { "type": "array", "items": { "type": "string", "enum": ["owner", "admin", "moderator", "member"] } },
            },
        },
        "AddMember": {
            "type": "object", "required": ["user", "role"], "additionalProperties": false,
            "properties": { "user": username, "role": { "type": "string", "enum": ["member", "moderator", "admin"] } },
        },
        "Channel": {
            "type": "object", "required": ["id", "waddle_id", "name", "type", "topic", "room_jid", "created_at"],
            "properties": {
                "id": schema_ref("Id"), "waddle_id": schema_ref("Id"), "name": { "type": "string" },
                "type": channel_type, "topic": { "type": ["string", "null"] },
                "room_jid": { "type": "string", "description": "JID of the channel's MUC room" },
                "created_at": timestamp,
            },
        },
        "CreateChannel": {
            "type": "object", "required": ["name", "type"], "additionalProperties": false,
            "description": format!("At most {DEFAULT_MAX_CHANNELS_PER_WADDLE} channels per waddle (configurable)"),
            "properties": { "name": channel_name, "type": channel_type, "topic": topic },
        },
        "UpdateChannel": {
            "type": "object", "additionalProperties": false,
            "description": "Absent fields are left unchanged; a null topic clears it",
            "properties": { "name": channel_name, "topic": topic },
        },
        "CheckRequest": {
            "type": "object", "required": ["object", "permission"], "additionalProperties": false,
            "properties": {
                "object": { "type": "string", "examples": ["channel:abcdefghijkl"], "description": "kind:id" },
                "permission": { "type": "string", "examples": ["send_message"],
                                "description": "A relation or permission of the object's type" },
                "user": { "type": "string", "description": "Username to check (default: the caller)" },
            },
        },
        "CheckResponse": {
            "type": "object", "required": ["allowed"], "properties": { "allowed": { "type": "boolean" } },
        },
    })
}

fn responses() -> Value {
    let error = |description: &str| json_response(description, schema_ref("Error"));
    json!({
        "BadRequest": error("invalid_json, invalid_request (body or path value breaks a rule), invalid_username \
                             or weak_password"),
        "Unauthorized": error("unauthorized: missing, invalid or expired session bearer token"),
        "InvalidCredentials": error("invalid_credentials"),
        "Forbidden": error("forbidden: the caller's roles do not allow this action"),
        "NotFound": error("not_found: unknown id, or an object the caller may not view"),
        "Conflict": error("account_exists, channel_exists, channel_limit or owner_cannot_leave"),
        "PayloadTooLarge": error(&format!("payload_too_large: body over {MAX_BODY_BYTES} bytes")),
        "UnsupportedMediaType": error("unsupported_media_type: the body must be application/json"),
        "RateLimited": error("rate_limited (with Retry-After)"),
        "Internal": error("internal_error (details are logged server-side)"),
    })
}

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for part in [account_paths(), waddle_paths(), channel_paths()] {
        if let Value::Object(m) = part {
            paths.extend(m);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "waddle HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Accounts, sessions and XMPP tokens; waddles (communities), their members, channels \
                            (MUC rooms) and permission checks. Every error is {\"error\":{\"code\",\"message\"}}. \
                            Objects the caller may not view answer 404, like unknown ids.",
        },
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer",
                                             "description": "Session token from POST /auth/session" } },
            "schemas": schemas(),
            "responses": responses(),
        },
    })
}
