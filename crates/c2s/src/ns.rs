//! Namespace URIs used by the c2s layer and services.

pub const CLIENT: &str = "jabber:client";
pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const ROSTER: &str = "jabber:iq:roster";
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
pub const REGISTER: &str = "jabber:iq:register";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const PING: &str = "urn:xmpp:ping";
pub const DELAY: &str = "urn:xmpp:delay";
pub const VCARD: &str = "vcard-temp";
pub const MSG_OFFLINE: &str = "msgoffline";
pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const SID: &str = "urn:xmpp:sid:0";
