//! Message delivery rules, RFC 6121 §8.5.

use waddle_im::{deliver_to_bare, deliver_to_missing_full, MessageDelivery as D, MessageType as T, SessionView};

fn s(resource: &str, priority: i8) -> SessionView {
    SessionView { resource: resource.into(), priority, available: true }
}

fn unavailable(resource: &str, priority: i8) -> SessionView {
    SessionView { available: false, ..s(resource, priority) }
}

fn to(resources: &[&str]) -> D {
    D::Resources(resources.iter().map(|r| (*r).to_owned()).collect())
}

const ALL_TYPES: [T; 5] = [T::Normal, T::Chat, T::Groupchat, T::Headline, T::Error];

#[test]
fn unknown_account() {
    let sessions = [s("a", 5)];
    for f in [deliver_to_bare, deliver_to_missing_full] {
        assert_eq!(f(T::Normal, false, &sessions), D::ErrorServiceUnavailable);
        assert_eq!(f(T::Chat, false, &[]), D::ErrorServiceUnavailable);
        assert_eq!(f(T::Groupchat, false, &sessions), D::Drop);
        assert_eq!(f(T::Headline, false, &sessions), D::Drop);
        assert_eq!(f(T::Error, false, &sessions), D::Drop);
    }
}

#[test]
fn chat_and_normal_go_to_highest_priority() {
    let sessions = [s("low", 1), s("high", 10), s("mid", 5)];
    for t in [T::Normal, T::Chat] {
        assert_eq!(deliver_to_bare(t, true, &sessions), to(&["high"]), "{t:?}");
    }
}

#[test]
fn chat_and_normal_ties_go_to_all_in_session_order() {
    let sessions = [s("a", 3), s("b", 1), s("c", 3), s("d", -1)];
    for t in [T::Normal, T::Chat] {
        assert_eq!(deliver_to_bare(t, true, &sessions), to(&["a", "c"]), "{t:?}");
    }
}

#[test]
fn priority_zero_is_eligible() {
    let sessions = [s("zero", 0), s("neg", -5)];
    assert_eq!(deliver_to_bare(T::Chat, true, &sessions), to(&["zero"]));
    assert_eq!(deliver_to_bare(T::Headline, true, &sessions), to(&["zero"]));
}

#[test]
fn extreme_priorities() {
    let sessions = [s("max", 127), s("min", -128), s("zero", 0)];
    assert_eq!(deliver_to_bare(T::Normal, true, &sessions), to(&["max"]));
}

#[test]
fn negative_priority_never_receives_bare_messages() {
    let sessions = [s("a", -1), s("b", -128)];
    assert_eq!(deliver_to_bare(T::Normal, true, &sessions), D::StoreOffline);
    assert_eq!(deliver_to_bare(T::Chat, true, &sessions), D::StoreOffline);
    assert_eq!(deliver_to_bare(T::Headline, true, &sessions), D::Drop);
}

#[test]
fn unavailable_sessions_are_ignored() {
    let sessions = [unavailable("hidden", 50), s("shown", 1)];
    assert_eq!(deliver_to_bare(T::Chat, true, &sessions), to(&["shown"]));
    assert_eq!(deliver_to_bare(T::Headline, true, &sessions), to(&["shown"]));

    let only_unavailable = [unavailable("x", 10)];
    assert_eq!(deliver_to_bare(T::Chat, true, &only_unavailable), D::StoreOffline);
    assert_eq!(deliver_to_bare(T::Headline, true, &only_unavailable), D::Drop);
}

#[test]
fn no_sessions() {
    assert_eq!(deliver_to_bare(T::Normal, true, &[]), D::StoreOffline);
    assert_eq!(deliver_to_bare(T::Chat, true, &[]), D::StoreOffline);
    assert_eq!(deliver_to_bare(T::Headline, true, &[]), D::Drop);
    assert_eq!(deliver_to_bare(T::Groupchat, true, &[]), D::ErrorServiceUnavailable);
    assert_eq!(deliver_to_bare(T::Error, true, &[]), D::Drop);
}

#[test]
fn headline_goes_to_all_non_negative() {
    let sessions = [s("a", 1), s("b", 10), s("c", -1), s("d", 0)];
    assert_eq!(deliver_to_bare(T::Headline, true, &sessions), to(&["a", "b", "d"]));
}

#[test]
fn groupchat_to_bare_is_an_error_even_with_sessions() {
    let sessions = [s("a", 1)];
    assert_eq!(deliver_to_bare(T::Groupchat, true, &sessions), D::ErrorServiceUnavailable);
}

#[test]
fn error_messages_are_dropped() {
    let sessions = [s("a", 1)];
    assert_eq!(deliver_to_bare(T::Error, true, &sessions), D::Drop);
    assert_eq!(deliver_to_missing_full(T::Error, true, &sessions), D::Drop);
}

#[test]
fn missing_full_jid_chat_is_treated_as_bare() {
    let sessions = [s("phone", 1), s("desktop", 5), s("tablet", 5)];
    assert_eq!(deliver_to_missing_full(T::Chat, true, &sessions), to(&["desktop", "tablet"]));
    assert_eq!(deliver_to_missing_full(T::Chat, true, &[s("n", -1)]), D::StoreOffline);
    assert_eq!(deliver_to_missing_full(T::Chat, true, &[]), D::StoreOffline);
}

#[test]
fn missing_full_jid_other_types_are_not_rerouted() {
    // RFC 6121 §8.5.3.2.1: normal, groupchat, headline → ignore or error,
    // never delivered to the account's other resources.
    for sessions in [vec![], vec![s("other", 5)]] {
        assert_eq!(deliver_to_missing_full(T::Normal, true, &sessions), D::ErrorServiceUnavailable);
        assert_eq!(deliver_to_missing_full(T::Groupchat, true, &sessions), D::ErrorServiceUnavailable);
        assert_eq!(deliver_to_missing_full(T::Headline, true, &sessions), D::Drop);
        assert_eq!(deliver_to_missing_full(T::Error, true, &sessions), D::Drop);
    }
}

#[test]
fn resources_lists_are_never_empty() {
    let sets: [&[SessionView]; 4] = [&[], &[s("n", -1)], &[unavailable("u", 3)], &[s("a", 0), s("b", 2)]];
    for sessions in sets {
        for t in ALL_TYPES {
            for exists in [false, true] {
                for d in [deliver_to_bare(t, exists, sessions), deliver_to_missing_full(t, exists, sessions)] {
                    if let D::Resources(r) = d {
                        assert!(!r.is_empty());
                    }
                }
            }
        }
    }
}
