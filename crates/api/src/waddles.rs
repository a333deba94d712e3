//! Waddles, members, channels and permission checks: `/v1/waddles...`, `/v1/channels/...`
//! and `/v1/permissions/check`.
//!
//! Every route requires a session bearer token. Objects the caller may not `view` answer
//! 404 exactly like unknown ids, so existence never leaks; an action on a visible object
//! that the caller's roles do not allow answers 403. Permission checks are done before the
//! body is validated, so validation messages never reach unauthorized callers.

use std::collections::BTreeMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};
use waddle_authz::{ObjectRef, Subject, Tuple, TupleFilter};
use waddle_storage::{ChannelRecord, StorageError, TokenKind, WaddleRecord};

use crate::routes::{bearer, rfc3339, ApiJson};
use crate::{identity, unix_now, ApiError, ApiState};

/// Length of waddle and channel ids.
pub const ID_LEN: usize = 12;
const ID_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Longest waddle name, in characters.
pub const MAX_WADDLE_NAME_CHARS: usize = 64;
/// Longest waddle description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Longest channel name, in characters.
pub const MAX_CHANNEL_NAME_CHARS: usize = 32;
/// Longest channel topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 512;
/// Roles of a waddle member, in display order.
pub const ROLES: [&str; 4] = ["owner", "admin", "moderator", "member"];
/// The channels every new waddle starts with.
const DEFAULT_CHANNELS: [(&str, &str); 2] = [("general", "text"), ("announcements", "announcement")];

/// A fresh object id: 12 characters of `a-z2-7` (60 random bits from the OS CSPRNG).
pub fn new_id() -> String {
    let mut bytes = [0u8; ID_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // 256 is a multiple of 32: masking keeps the distribution uniform.
    bytes.iter().map(|b| char::from(ID_ALPHABET[usize::from(b & 31)])).collect()
}

/// Whether `id` has the shape of [`new_id`]'s output.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b))
}

// ---------------------------------------------------------------------------------------
// Extractors

/// The username behind the request's session bearer token (`401 unauthorized` without a
/// valid one).
pub(crate) struct AuthUser(pub String);

impl FromRequestParts<ApiState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let session = state
            .accounts
            .lookup_token(TokenKind::HttpSession, token, unix_now())
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(AuthUser(session.username))
    }
}

type IdPath = Result<Path<String>, PathRejection>;
type IdUserPath = Result<Path<(String, String)>, PathRejection>;

fn path_error(e: PathRejection) -> ApiError {
    ApiError::InvalidRequest(format!("invalid path: {}", e.body_text()))
}

fn checked_id(what: &str, id: String) -> Result<String, ApiError> {
    if is_valid_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::InvalidRequest(format!("invalid {what} id in path: expected {ID_LEN} characters of a-z and 2-7")))
    }
}

fn path_id(what: &str, path: IdPath) -> Result<String, ApiError> {
    let Path(id) = path.map_err(path_error)?;
    checked_id(what, id)
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------
// Validation

fn validate_waddle_name(name: &str) -> Result<(), ApiError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_WADDLE_NAME_CHARS {
        return Err(ApiError::InvalidRequest(format!("name must be 1 to {MAX_WADDLE_NAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest("name must not contain control characters".into()));
    }
    if name.trim().is_empty() {
        return Err(ApiError::InvalidRequest("name must not be blank".into()));
    }
    Ok(())
}

fn validate_description(description: &str) -> Result<(), ApiError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::InvalidRequest(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    if description.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ApiError::InvalidRequest(
            "description must not contain control characters other than newline and tab".into(),
        ));
    }
    Ok(())
}

fn validate_channel_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=MAX_CHANNEL_NAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "channel name must be 1 to {MAX_CHANNEL_NAME_CHARS} characters of a-z, 0-9, '-' and '_'"
        )))
    }
}

fn validate_channel_kind(kind: &str) -> Result<(), ApiError> {
    if matches!(kind, "text" | "announcement") {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest("type must be \"text\" or \"announcement\"".into()))
    }
}

fn validate_topic(topic: &str) -> Result<(), ApiError> {
    if topic.chars().count() > MAX_TOPIC_CHARS {
        return Err(ApiError::InvalidRequest(format!("topic must be at most {MAX_TOPIC_CHARS} characters")));
    }
    if topic.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest("topic must not contain control characters".into()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Permission helpers

fn waddle_ref(id: &str) -> ObjectRef {
    ObjectRef::new("waddle", id)
}

fn channel_ref(id: &str) -> ObjectRef {
    ObjectRef::new("channel", id)
}

fn require(
    state: &ApiState,
    object: &ObjectRef,
    permission: &str,
    user: &str,
    why: &'static str,
) -> Result<(), ApiError> {
    if state.authz.check(object, permission, user) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(why))
    }
}

/// The waddle, if it exists and `user` may view it; 404 otherwise.
async fn visible_waddle(state: &ApiState, id: &str, user: &str) -> Result<WaddleRecord, ApiError> {
    if !state.authz.check(&waddle_ref(id), "view", user) {
        return Err(ApiError::NotFound);
    }
    state.control.waddle(id).await?.ok_or(ApiError::NotFound)
}

/// The channel, if it exists and `user` may view it; 404 otherwise.
async fn visible_channel(state: &ApiState, id: &str, user: &str) -> Result<ChannelRecord, ApiError> {
    if !state.authz.check(&channel_ref(id), "view", user) {
        return Err(ApiError::NotFound);
    }
    state.control.channel(id).await?.ok_or(ApiError::NotFound)
}

// ---------------------------------------------------------------------------------------
// JSON shapes

#[derive(Serialize)]
pub(crate) struct WaddleJson {
    id: String,
    name: String,
    description: Option<String>,
    owner: String,
    created_at: String,
    channels: Vec<ChannelJson>,
}

#[derive(Serialize)]
pub(crate) struct ChannelJson {
    id: String,
    waddle_id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    topic: Option<String>,
    room_jid: String,
    created_at: String,
}

#[derive(Serialize)]
pub(crate) struct MemberJson {
    user: String,
    roles: Vec<&'static str>,
}

fn channel_json(c: ChannelRecord, room_jid: String) -> Result<ChannelJson, ApiError> {
    Ok(ChannelJson {
        created_at: rfc3339(c.created_at)?,
        id: c.id,
        waddle_id: c.waddle_id,
        name: c.name,
        kind: c.kind,
        topic: c.topic,
        room_jid,
    })
}

fn room_channel_json(state: &ApiState, c: ChannelRecord) -> Result<ChannelJson, ApiError> {
    let jid = state.rooms.room_jid(&c);
    channel_json(c, jid)
}

/// The waddle with the channels `user` may view.
async fn waddle_json(state: &ApiState, w: WaddleRecord, user: &str) -> Result<WaddleJson, ApiError> {
    let channels = visible_channels(state, &w.id, user).await?;
    waddle_json_with(w, channels)
}

fn waddle_json_with(w: WaddleRecord, channels: Vec<ChannelJson>) -> Result<WaddleJson, ApiError> {
    Ok(WaddleJson {
        created_at: rfc3339(w.created_at)?,
        id: w.id,
        name: w.name,
        description: w.description,
        owner: w.owner,
        channels,
    })
}

async fn visible_channels(state: &ApiState, waddle_id: &str, user: &str) -> Result<Vec<ChannelJson>, ApiError> {
    state
        .control
        .channels(waddle_id)
        .await?
        .into_iter()
        .filter(|c| state.authz.check(&channel_ref(&c.id), "view", user))
        .map(|c| room_channel_json(state, c))
        .collect()
}

/// The roles each user holds directly in the waddle, by username.
fn members_of(state: &ApiState, waddle_id: &str) -> BTreeMap<String, Vec<&'static str>> {
    let mut members: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for tuple in state.authz.list(&TupleFilter { object: Some(waddle_ref(waddle_id)), ..TupleFilter::default() }) {
        if let (Subject::User(user), Some(role)) = (tuple.subject, ROLES.iter().find(|r| **r == tuple.relation)) {
            members.entry(user).or_default().push(role);
        }
    }
    for roles in members.values_mut() {
        roles.sort_by_key(|r| ROLES.iter().position(|x| x == r));
    }
    members
}

// ---------------------------------------------------------------------------------------
// Channel lifecycle (shared by waddle and channel creation)

/// Creates a channel: storage (within the per-waddle limit), its `parent` tuple, then its
/// room. Each failed step undoes the earlier ones.
async fn create_channel(
    state: &ApiState,
    waddle: &WaddleRecord,
    name: &str,
    kind: &str,
    topic: Option<String>,
) -> Result<ChannelJson, ApiError> {
    let channel = ChannelRecord {
        id: new_id(),
        waddle_id: waddle.id.clone(),
        name: name.to_owned(),
        kind: kind.to_owned(),
        topic,
        created_at: unix_now(),
    };
    let limit = state.config.max_channels_per_waddle;
    let created =
        state.control.channel_create_limited(&channel, u64::try_from(limit).unwrap_or(u64::MAX)).await.map_err(
            |e| match e {
                StorageError::AlreadyExists => ApiError::ChannelExists,
                StorageError::NotFound => ApiError::NotFound,
                other => other.into(),
            },
        )?;
    if !created {
        return Err(ApiError::ChannelLimit(limit));
    }
    let object = channel_ref(&channel.id);
    let parent = Tuple::new(object.clone(), "parent", Subject::Object(waddle_ref(&waddle.id)));
    if let Err(e) = state.authz.write(parent).await {
        undo_channel(state, &channel).await;
        return Err(e);
    }
    match state.rooms.channel_created(waddle, &channel).await {
        Ok(room_jid) => {
            tracing::info!(waddle = %waddle.id, channel = %channel.id, room = %room_jid, "channel created");
            channel_json(channel, room_jid)
        }
        Err(why) => {
            if let Err(e) = state.authz.delete_object(&object).await {
                tracing::error!(channel = %channel.id, error = %e, "cannot remove the tuples of a failed channel");
            }
            undo_channel(state, &channel).await;
            Err(ApiError::Internal(format!("cannot create the room of channel {}: {why}", channel.id)))
        }
    }
}

async fn undo_channel(state: &ApiState, channel: &ChannelRecord) {
    if let Err(e) = state.control.channel_delete(&channel.id).await {
        tracing::error!(channel = %channel.id, error = %e, "cannot roll back a failed channel creation");
    }
}

/// Removes a deleted channel's tuples and destroys its room (best effort: the channel is
/// already gone from storage, so failures are logged).
async fn retire_channel(state: &ApiState, channel: &ChannelRecord, reason: &str) {
    if let Err(e) = state.authz.delete_object(&channel_ref(&channel.id)).await {
        tracing::error!(channel = %channel.id, error = %e, "cannot remove the tuples of a deleted channel");
    }
    state.rooms.channel_deleted(channel, reason).await;
}

/// Tells the rooms of a waddle that roles changed.
async fn access_changed(state: &ApiState, waddle: &WaddleRecord) {
    match state.control.channels(&waddle.id).await {
        Ok(channels) => state.rooms.access_changed(waddle, &channels).await,
        Err(e) => tracing::error!(waddle = %waddle.id, error = %e, "cannot notify rooms of an access change"),
    }
}

// ---------------------------------------------------------------------------------------
// Waddles

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateWaddle {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

pub(crate) async fn create_waddle(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    body: Result<ApiJson<CreateWaddle>, ApiError>,
) -> Result<(StatusCode, Json<WaddleJson>), ApiError> {
    let ApiJson(req) = body?;
    validate_waddle_name(&req.name)?;
    if let Some(d) = &req.description {
        validate_description(d)?;
    }
    let mut waddle = WaddleRecord {
        id: new_id(),
        name: req.name,
        description: req.description,
        owner: user,
        created_at: unix_now(),
    };
    let mut attempts = 0;
    loop {
        match state.control.waddle_create(&waddle).await {
            Ok(()) => break,
            // A 60-bit id collision: astronomically rare, but cheap to survive.
            Err(StorageError::AlreadyExists) if attempts < 3 => {
                attempts += 1;
                waddle.id = new_id();
            }
            Err(e) => return Err(e.into()),
        }
    }
    let object = waddle_ref(&waddle.id);
    let owner = Subject::user(waddle.owner.clone());
    let roles = vec![Tuple::new(object.clone(), "owner", owner.clone()), Tuple::new(object, "member", owner)];
    if let Err(e) = state.authz.write_all(roles).await {
        undo_waddle(&state, &waddle).await;
        return Err(e);
    }
    let mut channels = Vec::new();
    for (name, kind) in DEFAULT_CHANNELS {
        match create_channel(&state, &waddle, name, kind, None).await {
            Ok(channel) => channels.push(channel),
            Err(e) => {
                undo_waddle(&state, &waddle).await;
                return Err(e);
            }
        }
    }
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    tracing::info!(waddle = %waddle.id, owner = %waddle.owner, "waddle created");
    Ok((StatusCode::CREATED, Json(waddle_json_with(waddle, channels)?)))
}

/// Rolls back a waddle whose creation failed half-way.
async fn undo_waddle(state: &ApiState, waddle: &WaddleRecord) {
    match state.control.waddle_delete(&waddle.id).await {
        Ok(channels) => {
            // Channels that failed were already undone; these are the ones that worked.
            for channel in &channels {
                retire_channel(state, channel, "The waddle could not be created").await;
            }
        }
        Err(e) => tracing::error!(waddle = %waddle.id, error = %e, "cannot roll back a failed waddle creation"),
    }
    if let Err(e) = state.authz.delete_object(&waddle_ref(&waddle.id)).await {
        tracing::error!(waddle = %waddle.id, error = %e, "cannot remove the tuples of a failed waddle");
    }
}

pub(crate) async fn list_waddles(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<WaddleJson>>, ApiError> {
    let ids = state.authz.lookup_objects("waddle", "view", &user);
    let mut out = Vec::with_capacity(ids.len());
    for waddle in state.control.waddles_by_ids(&ids).await? {
        out.push(waddle_json(&state, waddle, &user).await?);
    }
    Ok(Json(out))
}

pub(crate) async fn get_waddle(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
) -> Result<Json<WaddleJson>, ApiError> {
    let id = path_id("waddle", path)?;
    let waddle = visible_waddle(&state, &id, &user).await?;
    Ok(Json(waddle_json(&state, waddle, &user).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchWaddle {
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    description: Option<Option<String>>,
}

pub(crate) async fn patch_waddle(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
    body: Result<ApiJson<PatchWaddle>, ApiError>,
) -> Result<Json<WaddleJson>, ApiError> {
    let id = path_id("waddle", path)?;
    let mut waddle = visible_waddle(&state, &id, &user).await?;
    require(&state, &waddle_ref(&id), "administer", &user, "only owners and admins may edit a waddle")?;
    let ApiJson(req) = body?;
    match req.name {
        Some(Some(name)) => {
            validate_waddle_name(&name)?;
            waddle.name = name;
        }
        Some(None) => return Err(ApiError::InvalidRequest("name cannot be null".into())),
        None => {}
    }
    if let Some(description) = req.description {
        if let Some(d) = &description {
            validate_description(d)?;
        }
        waddle.description = description;
    }
    state.control.waddle_update(&waddle).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::NotFound,
        other => other.into(),
    })?;
    Ok(Json(waddle_json(&state, waddle, &user).await?))
}

pub(crate) async fn delete_waddle(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
) -> Result<StatusCode, ApiError> {
    let id = path_id("waddle", path)?;
    visible_waddle(&state, &id, &user).await?;
    require(&state, &waddle_ref(&id), "delete", &user, "only the owner may delete a waddle")?;
    let channels = state.control.waddle_delete(&id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::NotFound,
        other => other.into(),
    })?;
    // The waddle is gone from storage: revoke first, then tear the rooms down.
    if let Err(e) = state.authz.delete_object(&waddle_ref(&id)).await {
        tracing::error!(waddle = %id, error = %e, "cannot remove the tuples of a deleted waddle");
    }
    for channel in &channels {
        retire_channel(&state, channel, "The waddle was deleted").await;
    }
    tracing::info!(waddle = %id, by = %user, channels = channels.len(), "waddle deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Members

pub(crate) async fn list_members(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
) -> Result<Json<Vec<MemberJson>>, ApiError> {
    let id = path_id("waddle", path)?;
    visible_waddle(&state, &id, &user).await?;
    let members = members_of(&state, &id).into_iter().map(|(user, roles)| MemberJson { user, roles }).collect();
    Ok(Json(members))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMember {
    user: String,
    role: String,
}

pub(crate) async fn add_member(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
    body: Result<ApiJson<AddMember>, ApiError>,
) -> Result<(StatusCode, Json<MemberJson>), ApiError> {
    let id = path_id("waddle", path)?;
    let waddle = visible_waddle(&state, &id, &user).await?;
    require(&state, &waddle_ref(&id), "manage_members", &user, "only owners and admins may add members")?;
    let ApiJson(req) = body?;
    let role = match req.role.as_str() {
        "member" | "moderator" | "admin" => req.role,
        _ => return Err(ApiError::InvalidRequest("role must be \"member\", \"moderator\" or \"admin\"".into())),
    };
    let member = identity::validate_username(&req.user)?;
    if !state.accounts.account_exists(&member).await? {
        return Err(ApiError::NotFound);
    }
    let object = waddle_ref(&id);
    let subject = Subject::user(member.clone());
    let mut tuples = vec![Tuple::new(object.clone(), "member", subject.clone())];
    if role != "member" {
        tuples.push(Tuple::new(object, role.clone(), subject));
    }
    state.authz.write_all(tuples).await?;
    tracing::info!(waddle = %id, member = %member, role = %role, by = %user, "waddle member added");
    access_changed(&state, &waddle).await;
    let roles = members_of(&state, &id).remove(&member).unwrap_or_default();
    Ok((StatusCode::CREATED, Json(MemberJson { user: member, roles })))
}

pub(crate) async fn remove_member(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdUserPath,
) -> Result<StatusCode, ApiError> {
    let Path((id, member)) = path.map_err(path_error)?;
    let id = checked_id("waddle", id)?;
    let waddle = visible_waddle(&state, &id, &user).await?;
    let member = identity::validate_username(&member)?;
    if member != user {
        require(&state, &waddle_ref(&id), "manage_members", &user, "only owners and admins may remove members")?;
    }
    let subject = Subject::user(member.clone());
    let mut tuples = state.authz.list(&TupleFilter {
        object: Some(waddle_ref(&id)),
        subject: Some(subject.clone()),
        relation: None,
    });
    if tuples.iter().any(|t| t.relation == "owner") {
        return Err(ApiError::OwnerCannotLeave);
    }
    if tuples.is_empty() {
        return Err(ApiError::NotFound);
    }
    // Leaving a waddle also drops the grants the user held on its channels.
    for channel in state.control.channels(&id).await? {
        tuples.extend(state.authz.list(&TupleFilter {
            object: Some(channel_ref(&channel.id)),
            subject: Some(subject.clone()),
            relation: None,
        }));
    }
    state.authz.delete_all(&tuples).await?;
    tracing::info!(waddle = %id, member = %member, by = %user, "waddle member removed");
    access_changed(&state, &waddle).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Channels

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateChannel {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    topic: Option<String>,
}

pub(crate) async fn create_channel_route(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
    body: Result<ApiJson<CreateChannel>, ApiError>,
) -> Result<(StatusCode, Json<ChannelJson>), ApiError> {
    let id = path_id("waddle", path)?;
    let waddle = visible_waddle(&state, &id, &user).await?;
    require(&state, &waddle_ref(&id), "manage_channels", &user, "only owners and admins may create channels")?;
    let ApiJson(req) = body?;
    validate_channel_name(&req.name)?;
    validate_channel_kind(&req.kind)?;
    if let Some(topic) = &req.topic {
        validate_topic(topic)?;
    }
    let channel = create_channel(&state, &waddle, &req.name, &req.kind, req.topic).await?;
    Ok((StatusCode::CREATED, Json(channel)))
}

pub(crate) async fn list_channels(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
) -> Result<Json<Vec<ChannelJson>>, ApiError> {
    let id = path_id("waddle", path)?;
    visible_waddle(&state, &id, &user).await?;
    Ok(Json(visible_channels(&state, &id, &user).await?))
}

pub(crate) async fn get_channel(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
) -> Result<Json<ChannelJson>, ApiError> {
    let id = path_id("channel", path)?;
    let channel = visible_channel(&state, &id, &user).await?;
    Ok(Json(room_channel_json(&state, channel)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchChannel {
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    topic: Option<Option<String>>,
}

pub(crate) async fn patch_channel(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
    body: Result<ApiJson<PatchChannel>, ApiError>,
) -> Result<Json<ChannelJson>, ApiError> {
    let id = path_id("channel", path)?;
    let mut channel = visible_channel(&state, &id, &user).await?;
    require(&state, &channel_ref(&id), "manage", &user, "only channel managers may edit a channel")?;
    let ApiJson(req) = body?;
    match req.name {
        Some(Some(name)) => {
            validate_channel_name(&name)?;
            channel.name = name;
        }
        Some(None) => return Err(ApiError::InvalidRequest("name cannot be null".into())),
        None => {}
    }
    if let Some(topic) = req.topic {
        if let Some(t) = &topic {
            validate_topic(t)?;
        }
        channel.topic = topic;
    }
    state.control.channel_update(&channel).await.map_err(|e| match e {
        StorageError::AlreadyExists => ApiError::ChannelExists,
        StorageError::NotFound => ApiError::NotFound,
        other => other.into(),
    })?;
    state.rooms.channel_updated(&channel).await;
    Ok(Json(room_channel_json(&state, channel)?))
}

pub(crate) async fn delete_channel(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    path: IdPath,
) -> Result<StatusCode, ApiError> {
    let id = path_id("channel", path)?;
    let channel = visible_channel(&state, &id, &user).await?;
    require(&state, &channel_ref(&id), "delete", &user, "only channel managers may delete a channel")?;
    state.control.channel_delete(&id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::NotFound,
        other => other.into(),
    })?;
    retire_channel(&state, &channel, "The channel was deleted").await;
    tracing::info!(channel = %id, by = %user, "channel deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Permission checks

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckRequest {
    object: String,
    permission: String,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct CheckResponse {
    allowed: bool,
}

/// The waddle whose administrators may inspect others' permissions on `object`.
fn governing_waddle(state: &ApiState, object: &ObjectRef) -> Option<ObjectRef> {
    let linked = |object: &ObjectRef, relation: &str| {
        state
            .authz
            .list(&TupleFilter { object: Some(object.clone()), relation: Some(relation.into()), subject: None })
            .into_iter()
            .find_map(|t| match t.subject {
                Subject::Object(o) => Some(o),
                _ => None,
            })
    };
    match object.kind.as_str() {
        "waddle" => Some(object.clone()),
        "channel" => linked(object, "parent"),
        "message" => linked(object, "channel").and_then(|channel| linked(&channel, "parent")),
        _ => None,
    }
}

pub(crate) async fn check_permission(
    State(state): State<ApiState>,
    AuthUser(user): AuthUser,
    body: Result<ApiJson<CheckRequest>, ApiError>,
) -> Result<Json<CheckResponse>, ApiError> {
    let ApiJson(req) = body?;
    let object: ObjectRef =
        req.object.parse().map_err(|e| ApiError::InvalidRequest(format!("object must be kind:id ({e})")))?;
    if !state.authz.has_permission(&object.kind, &req.permission) {
        return Err(ApiError::InvalidRequest(format!(
            "unknown permission {:?} on object type {:?}",
            req.permission, object.kind
        )));
    }
    let target = match req.user {
        None => user.clone(),
        Some(other) => identity::validate_username(&other)?,
    };
    if target != user {
        let allowed = governing_waddle(&state, &object).is_some_and(|w| state.authz.check(&w, "administer", &user));
        if !allowed {
            return Err(ApiError::Forbidden("checking another user's permissions requires administer on the waddle"));
        }
    }
    Ok(Json(CheckResponse { allowed: state.authz.check(&object, &req.permission, &target) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_base32() {
        let a = new_id();
        assert!(is_valid_id(&a), "{a}");
        assert_ne!(a, new_id());
        for bad in ["", "abcdefghijk", "abcdefghijklm", "abcdefghijk1", "ABCDEFGHIJKL", "abcdefghijk-"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn validation_rules() {
        assert!(validate_waddle_name("Penguins 🐧").is_ok());
        assert!(validate_waddle_name(&"é".repeat(64)).is_ok());
        for bad in ["", "   ", "a\u{0}b", "tab\there", &"x".repeat(65)] {
            assert!(validate_waddle_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_description("line 1\nline 2\ttab").is_ok());
        assert!(validate_description(&"d".repeat(1025)).is_err());
        assert!(validate_description("bell\u{7}").is_err());
        for good in ["general", "dev-ops_2", &"a".repeat(32)] {
            assert!(validate_channel_name(good).is_ok(), "{good}");
        }
        for bad in ["", "General", "with space", "é", "a.b", &"a".repeat(33)] {
            assert!(validate_channel_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_channel_kind("text").is_ok() && validate_channel_kind("announcement").is_ok());
        assert!(validate_channel_kind("Text").is_err() && validate_channel_kind("voice").is_err());
        assert!(validate_topic(&"t".repeat(512)).is_ok());
        assert!(validate_topic(&"t".repeat(513)).is_err());
        assert!(validate_topic("two\nlines").is_err());
    }
}
