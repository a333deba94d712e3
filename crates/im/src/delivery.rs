//! Message delivery rules for local users (RFC 6121 §8.5).

/// The message `type` attribute (RFC 6121 §5.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MessageType {
    /// `normal` (also: no or unknown `type`).
    #[default]
    Normal,
    /// `chat`.
    Chat,
    /// `groupchat`.
    Groupchat,
    /// `headline`.
    Headline,
    /// `error`.
    Error,
}

impl MessageType {
    /// Parses the `type` attribute. A missing or unrecognized value MUST be
    /// treated as `normal` (RFC 6121 §5.2.2).
    pub fn parse(attr: Option<&str>) -> MessageType {
        match attr {
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Normal => "normal",
            MessageType::Chat => "chat",
            MessageType::Groupchat => "groupchat",
            MessageType::Headline => "headline",
            MessageType::Error => "error",
        }
    }
}

/// What the router knows about one connected session of the recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// Resourcepart of the session's full JID.
    pub resource: String,
    /// Priority of the session's last available presence.
    pub priority: i8,
    /// The session has sent available presence (and not unavailable since).
    /// Connected but unavailable sessions never receive messages sent to the
    /// bare JID.
    pub available: bool,
}

/// Where a message to a local account goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageDelivery {
    /// Deliver to these resources (never empty; in the order of the input
    /// sessions). The caller addresses each copy as received (`to` unchanged).
    Resources(Vec<String>),
    /// No suitable session: store the message offline. A server without (or
    /// with full) offline storage answers `service-unavailable` instead
    /// (RFC 6121 §8.5.2.2.1 allows either).
    StoreOffline,
    /// Bounce a `<service-unavailable/>` (type `cancel`) error to the sender.
    ErrorServiceUnavailable,
    /// Silently ignore the message.
    Drop,
}

/// Delivery of a message addressed to a local user's bare JID
/// (RFC 6121 §8.5.2), or to any JID of a non-existent account (§8.5.1).
///
/// * Unknown account (§8.5.1, "ignore or error"): `normal` and `chat` →
///   [`MessageDelivery::ErrorServiceUnavailable`]; `groupchat`, `headline`
///   and `error` → [`MessageDelivery::Drop`].
/// * `normal`, `chat` (§8.5.2.1.1 option "most available"): every available
///   session with the highest non-negative priority (ties → all of them);
///   none → [`MessageDelivery::StoreOffline`] (§8.5.2.2.1).
/// * `headline`: every available session with a non-negative priority; none
///   → [`MessageDelivery::Drop`].
/// * `groupchat` → [`MessageDelivery::ErrorServiceUnavailable`] whatever the
///   sessions.
/// * `error` → [`MessageDelivery::Drop`].
///
/// Sessions with a negative priority never receive messages addressed to the
/// bare JID; if they are the only ones, the user counts as having no
/// available resource.
pub fn deliver_to_bare(msg_type: MessageType, account_exists: bool, sessions: &[SessionView]) -> MessageDelivery {
    if !account_exists {
        return unknown_account(msg_type);
    }
    match msg_type {
        MessageType::Error => MessageDelivery::Drop,
        MessageType::Groupchat => MessageDelivery::ErrorServiceUnavailable,
        MessageType::Headline => {
            let all: Vec<String> = eligible(sessions).map(|s| s.resource.clone()).collect();
            if all.is_empty() {
                MessageDelivery::Drop
            } else {
                MessageDelivery::Resources(all)
            }
        }
        MessageType::Normal | MessageType::Chat => match eligible(sessions).map(|s| s.priority).max() {
            None => MessageDelivery::StoreOffline,
            Some(top) => MessageDelivery::Resources(
                eligible(sessions).filter(|s| s.priority == top).map(|s| s.resource.clone()).collect(),
            ),
        },
    }
}

/// Delivery of a message addressed to a full JID of a local account whose
/// resource matches no session (RFC 6121 §8.5.3.2.1). `sessions` are the
/// account's other sessions.
///
/// * Unknown account: as [`deliver_to_bare`] (§8.5.1).
/// * `chat` → handled exactly as if sent to the bare JID (most available
///   resources, else [`MessageDelivery::StoreOffline`]).
/// * `normal`, `groupchat` → [`MessageDelivery::ErrorServiceUnavailable`]
///   (§8.5.3.2.1: "silently ignore or return an error"; the sender learns the
///   resource is gone).
/// * `headline`, `error` → [`MessageDelivery::Drop`].
///
/// A message whose resource does match a connected session is simply
/// delivered to it (§8.5.3.1) and does not come here.
pub fn deliver_to_missing_full(
    msg_type: MessageType,
    account_exists: bool,
    sessions: &[SessionView],
) -> MessageDelivery {
    if !account_exists {
        return unknown_account(msg_type);
    }
    match msg_type {
        MessageType::Chat => deliver_to_bare(MessageType::Chat, true, sessions),
        MessageType::Normal | MessageType::Groupchat => MessageDelivery::ErrorServiceUnavailable,
        MessageType::Headline | MessageType::Error => MessageDelivery::Drop,
    }
}

/// RFC 6121 §8.5.1: the account does not exist.
fn unknown_account(msg_type: MessageType) -> MessageDelivery {
    match msg_type {
        MessageType::Normal | MessageType::Chat => MessageDelivery::ErrorServiceUnavailable,
        MessageType::Groupchat | MessageType::Headline | MessageType::Error => MessageDelivery::Drop,
    }
}

/// Sessions that may receive a message addressed to the bare JID.
fn eligible(sessions: &[SessionView]) -> impl Iterator<Item = &SessionView> {
    sessions.iter().filter(|s| s.available && s.priority >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_type_attribute() {
        assert_eq!(MessageType::parse(None), MessageType::Normal);
        assert_eq!(MessageType::parse(Some("normal")), MessageType::Normal);
        assert_eq!(MessageType::parse(Some("chat")), MessageType::Chat);
        assert_eq!(MessageType::parse(Some("groupchat")), MessageType::Groupchat);
        assert_eq!(MessageType::parse(Some("headline")), MessageType::Headline);
        assert_eq!(MessageType::parse(Some("error")), MessageType::Error);
        assert_eq!(MessageType::parse(Some("")), MessageType::Normal);
        assert_eq!(MessageType::parse(Some("bogus")), MessageType::Normal);
        assert_eq!(MessageType::parse(Some("Chat")), MessageType::Normal);
        for t in
            [MessageType::Normal, MessageType::Chat, MessageType::Groupchat, MessageType::Headline, MessageType::Error]
        {
            assert_eq!(MessageType::parse(Some(t.as_str())), t);
        }
    }
}
