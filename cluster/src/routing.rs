//! The routing decision: where a stanza addressed to `to` must go. Pure and I/O-free;
//! the node's router dispatches on the result. In a cluster, `Account`/`Session`
//! destinations are further placed on the node owning the bare JID's partition.

use waddle_jid::Jid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The server itself: no `to`, or `to` is the local domain (or a resource of it).
    Server,
    /// A local account's bare JID.
    Account(waddle_jid::BareJid),
    /// A local full JID (a specific session).
    Session(waddle_jid::FullJid),
    /// A local service domain (e.g. the MUC service) by index in the service list.
    Service { domain: String, jid: Jid },
    /// Another domain. Without S2S this is answered with `remote-server-not-found`.
    Remote(String),
}

/// Classifies an already parsed destination JID. `services` are the component/service
/// domains this cluster hosts (e.g. `muc.example.org`).
pub fn classify(to: Option<&Jid>, local_domain: &str, services: &[String]) -> Destination {
    let Some(to) = to else {
        return Destination::Server;
    };
    let domain = to.domain().as_str();
    if domain == local_domain {
        return match (to.node(), to.resource()) {
            (None, _) => Destination::Server,
            (Some(_), None) => Destination::Account(to.to_bare()),
            (Some(_), Some(_)) => match to.clone().try_into_full() {
                Ok(full) => Destination::Session(full),
                Err(bare) => Destination::Account(bare),
            },
        };
    }
    if services.iter().any(|s| s == domain) {
        return Destination::Service { domain: domain.to_owned(), jid: to.clone() };
    }
    Destination::Remote(domain.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap_or_else(|e| panic!("bad test jid {s}: {e}"))
    }

    const DOMAIN: &str = "example.org";

    #[test]
    fn no_to_is_the_server() {
        assert_eq!(classify(None, DOMAIN, &[]), Destination::Server);
    }

    #[test]
    fn domain_and_domain_resource_are_the_server() {
        assert_eq!(classify(Some(&jid("example.org")), DOMAIN, &[]), Destination::Server);
        assert_eq!(classify(Some(&jid("example.org/admin")), DOMAIN, &[]), Destination::Server);
    }

    #[test]
    fn bare_and_full_local_jids() {
        assert!(matches!(
            classify(Some(&jid("alice@example.org")), DOMAIN, &[]),
            Destination::Account(b) if b.as_str() == "alice@example.org"
        ));
        assert!(matches!(
            classify(Some(&jid("alice@example.org/phone")), DOMAIN, &[]),
            Destination::Session(f) if f.as_str() == "alice@example.org/phone"
        ));
    }

    #[test]
    fn jids_are_normalised_before_routing() {
        // nodeprep lowercases: both spellings must reach the same account.
        assert_eq!(
            classify(Some(&jid("Alice@Example.org")), DOMAIN, &[]),
            classify(Some(&jid("alice@example.org")), DOMAIN, &[])
        );
    }

    #[test]
    fn services_and_remote_domains() {
        let services = vec!["muc.example.org".to_owned()];
        assert!(matches!(
            classify(Some(&jid("room@muc.example.org")), DOMAIN, &services),
            Destination::Service { domain, .. } if domain == "muc.example.org"
        ));
        assert_eq!(
            classify(Some(&jid("bob@elsewhere.net")), DOMAIN, &services),
            Destination::Remote("elsewhere.net".into())
        );
    }
}
