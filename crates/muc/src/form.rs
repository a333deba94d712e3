//! XEP-0004 data forms of a room: the `muc#roomconfig` form (XEP-0045 §10.2) and the
//! `muc#roominfo` extension of disco#info (XEP-0045 §6.4).

use waddle_xml::Element;

use crate::ns;
use crate::{RoomConfig, Whois};

const ROOMNAME: &str = "muc#roomconfig_roomname";
const ROOMDESC: &str = "muc#roomconfig_roomdesc";
const PERSISTENT: &str = "muc#roomconfig_persistentroom";
const MEMBERS_ONLY: &str = "muc#roomconfig_membersonly";
const MODERATED: &str = "muc#roomconfig_moderatedroom";
const WHOIS: &str = "muc#roomconfig_whois";
const MAX_USERS: &str = "muc#roomconfig_maxusers";
const PASSWORD_PROTECTED: &str = "muc#roomconfig_passwordprotectedroom";
const SECRET: &str = "muc#roomconfig_roomsecret";
const PUBLIC: &str = "muc#roomconfig_publicroom";
const ALLOW_INVITES: &str = "muc#roomconfig_allowinvites";
const CHANGE_SUBJECT: &str = "muc#roomconfig_changesubject";
const LOGGING: &str = "muc#roomconfig_enablelogging";
const HISTORY_LENGTH: &str = "muc#roomconfig_historylength";

/// Why a submitted configuration form was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FormError(pub &'static str);

fn field(var: &str, kind: &str, label: Option<&str>, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS).with_attr("var", var);
    if !kind.is_empty() {
        f.set_attr("type", kind);
    }
    if let Some(label) = label {
        f.set_attr("label", label);
    }
    for v in values {
        f.append_child(Element::new("value", ns::DATA_FORMS).with_text(*v));
    }
    f
}

fn option(label: &str, value: &str) -> Element {
    Element::new("option", ns::DATA_FORMS)
        .with_attr("label", label)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

fn boolean(var: &str, label: &str, value: bool) -> Element {
    field(var, "boolean", Some(label), &[if value { "1" } else { "0" }])
}

fn form_type(value: &str) -> Element {
    field("FORM_TYPE", "hidden", None, &[value])
}

/// The configuration form (`<x xmlns='jabber:x:data' type='form'>`) with the current
/// values.
pub(crate) fn config_form(config: &RoomConfig) -> Element {
    let max_users = if config.max_users == 0 { "none".to_owned() } else { config.max_users.to_string() };
    let history = config.history_max.to_string();
    let mut whois = field(WHOIS, "list-single", Some("Who may discover real JIDs"), &[config.whois.as_str()]);
    whois.append_child(option("Moderators only", "moderators"));
    whois.append_child(option("Anyone", "anyone"));
    let mut max = field(MAX_USERS, "list-single", Some("Maximum number of occupants"), &[&max_users]);
    for n in ["10", "20", "30", "50", "100", "200", "500", "1000"] {
        max.append_child(option(n, n));
    }
    max.append_child(option("No limit", "none"));
    let secret = config.password.as_deref().unwrap_or("");
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(Element::new("title", ns::DATA_FORMS).with_text("Room configuration"))
        .with_child(form_type(ns::MUC_ROOMCONFIG))
        .with_child(field(ROOMNAME, "text-single", Some("Room name"), &[&config.name]))
        .with_child(field(ROOMDESC, "text-single", Some("Room description"), &[&config.description]))
        .with_child(boolean(PERSISTENT, "Make room persistent", config.persistent))
        .with_child(boolean(PUBLIC, "Make room publicly searchable", config.public))
        .with_child(boolean(MEMBERS_ONLY, "Make room members-only", config.members_only))
        .with_child(boolean(MODERATED, "Make room moderated", config.moderated))
        .with_child(whois)
        .with_child(max)
        .with_child(boolean(PASSWORD_PROTECTED, "Password required to enter", config.password_required().is_some()))
        .with_child(field(SECRET, "text-private", Some("Password"), &[secret]))
        .with_child(boolean(ALLOW_INVITES, "Allow occupants to invite others", config.allow_invites))
        .with_child(boolean(CHANGE_SUBJECT, "Allow occupants to change the subject", config.change_subject))
        .with_child(boolean(LOGGING, "Archive the discussion", config.logged))
        .with_child(field(HISTORY_LENGTH, "text-single", Some("Number of messages of discussion history"), &[&history]))
}

fn parse_bool(value: &str) -> Result<bool, FormError> {
    match value.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(FormError("not-acceptable")),
    }
}

fn parse_u32(value: &str) -> Result<u32, FormError> {
    value.trim().parse::<u32>().map_err(|_| FormError("not-acceptable"))
}

/// Apply a submitted form (`type='submit'`) to `current`. Unknown fields are ignored;
/// an empty form (instant room) keeps everything.
pub(crate) fn apply_config_form(current: &RoomConfig, x: &Element) -> Result<RoomConfig, FormError> {
    let mut config = current.clone();
    let mut protected: Option<bool> = None;
    let mut secret: Option<String> = None;
    for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
        let Some(var) = f.attr("var") else { continue };
        let values: Vec<String> = f.children().filter(|c| c.is("value", ns::DATA_FORMS)).map(Element::text).collect();
        let first = values.first().map(String::as_str).unwrap_or("");
        match var {
            "FORM_TYPE" if first != ns::MUC_ROOMCONFIG => return Err(FormError("bad-request")),
            ROOMNAME => config.name = first.to_owned(),
            ROOMDESC => config.description = first.to_owned(),
            PERSISTENT => config.persistent = parse_bool(first)?,
            MEMBERS_ONLY => config.members_only = parse_bool(first)?,
            MODERATED => config.moderated = parse_bool(first)?,
            PUBLIC => config.public = parse_bool(first)?,
            ALLOW_INVITES => config.allow_invites = parse_bool(first)?,
            CHANGE_SUBJECT => config.change_subject = parse_bool(first)?,
            LOGGING => config.logged = parse_bool(first)?,
            WHOIS => config.whois = Whois::parse(first.trim()).ok_or(FormError("not-acceptable"))?,
            MAX_USERS => {
                config.max_users = match first.trim() {
                    "" | "none" => 0,
                    n => parse_u32(n)?,
                }
            }
            HISTORY_LENGTH => config.history_max = parse_u32(first)?,
            PASSWORD_PROTECTED => protected = Some(parse_bool(first)?),
            SECRET => secret = Some(first.to_owned()),
            _ => {}
        }
    }
    config.password = match (protected, secret) {
        (Some(false), _) => None,
        (Some(true), Some(s)) if !s.is_empty() => Some(s),
        (Some(true), _) => match current.password_required() {
            Some(p) => Some(p.to_owned()),
            None => return Err(FormError("not-acceptable")),
        },
        (None, Some(s)) => Some(s).filter(|s| !s.is_empty()),
        (None, None) => current.password.clone(),
    };
    Ok(config)
}

/// The `muc#roominfo` form of disco#info.
pub(crate) fn roominfo_form(config: &RoomConfig, occupants: usize, subject: &str) -> Element {
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "result")
        .with_child(form_type(ns::MUC_ROOMINFO))
        .with_child(field("muc#roomconfig_roomname", "", Some("Room name"), &[&config.name]))
        .with_child(field("muc#roominfo_description", "", Some("Description"), &[&config.description]))
        .with_child(field("muc#roominfo_occupants", "", Some("Number of occupants"), &[&occupants.to_string()]))
        .with_child(field("muc#roominfo_subject", "", Some("Subject"), &[subject]))
        .with_child(field(
            "muc#roominfo_subjectmod",
            "boolean",
            Some("Occupants may change the subject"),
            &[if config.change_subject { "1" } else { "0" }],
        ))
}
