//! Nickname collisions (RFC 8266 comparison, look-alikes) and reserved nicknames.

use super::*;

fn conflict(out: &[Outbound]) -> bool {
    error_of(out).as_deref() == Some("conflict")
}

#[test]
fn nicknames_equal_under_case_folding_or_width_collide() {
    let mut room = room3();
    // alice holds "alice"; carol may not take any spelling of it.
    for taken in ["Alice", "ALICE", "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", "\u{ff21}LICE"] {
        assert!(conflict(&join(&mut room, CAROL, taken)), "{taken:?}");
        assert_eq!(room.nick_of(CAROL), None);
    }
    assert_eq!(room.occupant_count(), 3);
    // Nor change to it from another nickname.
    assert!(conflict(&feed(&mut room, &format!("<presence from='{BOB}' to='{ROOM}/ALICE'/>"))));
    assert_eq!(room.nick_of(BOB), Some("bob"));
    // A different nickname is fine.
    assert!(error_of(&join(&mut room, CAROL, "Alicia")).is_none());
}

#[test]
fn look_alikes_from_other_scripts_collide() {
    let mut room = room3();
    // Cyrillic а (U+0430) for the Latin a.
    assert!(conflict(&join(&mut room, CAROL, "\u{430}lice")));
    // Uppercase Cyrillic В, О for B, O against "bob".
    assert!(conflict(&join(&mut room, CAROL, "\u{412}\u{41e}\u{412}")));
    // Greek Ο (omicron) for the O of "Owner".
    assert!(conflict(&join(&mut room, CAROL, "\u{39f}wner")));
    assert_eq!(room.occupant_count(), 3);
    // Real Cyrillic names are not look-alikes of anyone here.
    assert!(error_of(&join(&mut room, CAROL, "\u{431}\u{43e}\u{440}\u{438}\u{441}")).is_none());
}

#[test]
fn a_second_session_with_another_spelling_shares_the_occupant() {
    let mut room = room3();
    let alice2 = "alice@example.org/phone";
    let out = join(&mut room, alice2, "ALICE");
    assert!(error_of(&out).is_none(), "{out:?}");
    assert_eq!(room.occupant_count(), 3, "still one occupant");
    assert_eq!(room.nick_of(alice2), Some("alice"), "under the occupant's spelling");
    let own = for_jid(&out, alice2).into_iter().find(|e| statuses(e).contains(&110)).unwrap_or_else(|| panic!());
    assert_eq!(from(own), occ("alice"));
    assert!(statuses(own).contains(&210), "the client learns its nickname was changed");
}

#[test]
fn an_occupant_may_respell_its_own_nickname() {
    let mut room = room3();
    let out = feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}/Alice'/>"));
    assert!(error_of(&out).is_none(), "{out:?}");
    assert_eq!(room.nick_of(ALICE), Some("Alice"));
    assert_eq!(room.nicks().collect::<Vec<_>>(), vec!["Alice", "Owner", "bob"]);
    // The new spelling still blocks the others.
    assert!(conflict(&join(&mut room, CAROL, "alice")));
}

#[test]
fn a_members_username_is_reserved_in_a_channel() {
    let oracle = ChannelOracle::default()
        .with("owner@example.org", Some("owner"), true, true)
        .with("alice@example.org", Some("member"), true, true)
        .with("bob@example.org", Some("member"), true, true);
    let mut room = Room::new(ROOM, RoomConfig::default(), None, true);
    // bob joins first, while the owner is away, and tries the owner's username.
    for nick in ["owner", "Owner", "OWNER", "\u{41e}wner", "\u{ff4f}wner"] {
        assert!(conflict(&join_with(&mut room, BOB, nick, &oracle)), "{nick:?}");
    }
    assert!(error_of(&join_with(&mut room, BOB, "bob", &oracle)).is_none());
    // Nor may he change to alice's username while she is away.
    let out = feed_with(&mut room, &format!("<presence from='{BOB}' to='{ROOM}/Alice'/>"), &oracle);
    assert!(conflict(&out));
    // The owner gets their own nickname, in any spelling.
    assert!(error_of(&join_with(&mut room, OWNER, "Owner", &oracle)).is_none());
    assert_eq!(room.nick_of(OWNER), Some("Owner"));
    // A nickname that is nobody's username is free.
    assert!(error_of(&join_with(&mut room, ALICE, "wonderland", &oracle)).is_none());
}

#[test]
fn ad_hoc_rooms_reserve_nothing() {
    let mut room = new_room();
    // carol's username is not reserved for her in an ad-hoc room.
    assert!(error_of(&join(&mut room, BOB, "carol")).is_none());
    assert!(conflict(&join(&mut room, CAROL, "Carol")), "but it is occupied now");
}
