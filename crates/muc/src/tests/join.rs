//! Occupancy: joining (order, status codes, errors), presence updates, nickname changes,
//! departures, multi-session nicknames, discussion history.

use super::*;
use crate::{Role, Whois};

#[test]
fn join_order_and_self_presence() {
    let mut room = new_room();
    join(&mut room, ALICE, "alice");
    let out = join(&mut room, BOB, "bob");
    let s = stanzas(&out);
    let route: Vec<(&str, &str, &str)> = s.iter().map(|e| (e.name(), from(e), to(e))).collect();
    let (o, a, b) = (occ("Owner"), occ("alice"), occ("bob"));
    assert_eq!(
        route,
        vec![
            ("presence", o.as_str(), BOB),
            ("presence", a.as_str(), BOB),
            ("presence", b.as_str(), OWNER),
            ("presence", b.as_str(), ALICE),
            ("presence", b.as_str(), BOB),
            ("message", ROOM, BOB),
        ]
    );
    // Existing occupants as bob (a participant of a semi-anonymous room) sees them.
    assert_eq!(item(s[0]).attr("affiliation"), Some("owner"));
    assert_eq!(item(s[0]).attr("role"), Some("moderator"));
    assert_eq!(item(s[0]).attr("jid"), None);
    assert_eq!(item(s[1]).attr("role"), Some("participant"));
    // The moderator sees bob's real JID, alice does not.
    assert_eq!(item(s[2]).attr("jid"), Some(BOB));
    assert_eq!(item(s[3]).attr("jid"), None);
    assert!(statuses(s[2]).is_empty());
    // Self-presence: 110 and 170 (logged), the join id echoed, own JID shown.
    assert_eq!(statuses(s[4]), vec![110, 170]);
    assert_eq!(s[4].attr("id"), Some("j1"));
    assert_eq!(item(s[4]).attr("jid"), Some(BOB));
    assert_eq!(item(s[4]).attr("affiliation"), Some("none"));
    // Subject last, empty.
    let subject = s[5].get_child("subject", NS_CLIENT).unwrap_or_else(|| panic!("no subject"));
    assert_eq!(subject.text(), "");
    assert_eq!(s[5].attr("type"), Some("groupchat"));
    assert!(!s[5].has_child("body", NS_CLIENT));
    assert_eq!(room.occupant_count(), 3);
}

#[test]
fn presence_payload_is_carried_and_muc_x_stripped() {
    let mut room = new_room();
    let out = feed(
        &mut room,
        &format!(
            "<presence from='{ALICE}' to='{ROOM}/alice'><show>away</show><status>lunch</status>\
             <x xmlns='http://jabber.org/protocol/muc'><password>x</password></x></presence>"
        ),
    );
    let to_owner = for_jid(&out, OWNER);
    assert_eq!(to_owner.len(), 1);
    let p = to_owner[0];
    assert_eq!(p.get_child("show", NS_CLIENT).map(Element::text).as_deref(), Some("away"));
    assert!(!p.has_child("x", ns::MUC));
    assert_eq!(p.children().filter(|c| c.is("x", ns::MUC_USER)).count(), 1);
}

#[test]
fn status_codes_for_non_anonymous_unlogged_room() {
    let mut room = room_with(RoomConfig { whois: Whois::Anyone, logged: false, ..RoomConfig::default() });
    let out = join(&mut room, ALICE, "alice");
    let own = for_jid(&out, ALICE);
    let self_presence = own.iter().find(|e| from(e) == occ("alice")).unwrap_or_else(|| panic!("no self"));
    assert_eq!(statuses(self_presence), vec![100, 110]);
    // Everyone sees real JIDs in a non-anonymous room.
    let owner_seen = own.iter().find(|e| from(e) == occ("Owner")).unwrap_or_else(|| panic!("no owner"));
    assert_eq!(item(owner_seen).attr("jid"), Some(OWNER));
}

#[test]
fn created_room_is_locked_until_configured() {
    let mut room = Room::new(ROOM, RoomConfig::default(), Some("owner@example.org"), false);
    assert!(room.is_locked());
    let out = join(&mut room, OWNER, "Owner");
    let s = stanzas(&out);
    assert_eq!(s.len(), 2);
    assert_eq!(statuses(s[0]), vec![110, 170, 201]);
    assert_eq!(item(s[0]).attr("affiliation"), Some("owner"));
    assert_eq!(item(s[0]).attr("role"), Some("moderator"));
    // Non-owners cannot enter a locked room.
    let out = join(&mut room, ALICE, "alice");
    assert_eq!(error_of(&out).as_deref(), Some("item-not-found"));
    let err = stanzas(&out)[0];
    assert_eq!(err.name(), "presence");
    assert_eq!(from(err), occ("alice"));
    assert_eq!(to(err), ALICE);
    // Instant room: an empty submitted form.
    let out = feed(&mut room, &owner_iq(OWNER, "c1", "set", "<x xmlns='jabber:x:data' type='submit'/>"));
    assert!(is_result(&out, "c1"));
    assert_eq!(persists(&out), 1);
    assert!(!room.is_locked());
    let out = join(&mut room, ALICE, "alice");
    assert!(error_of(&out).is_none());
}

#[test]
fn join_errors() {
    // Nickname conflict.
    let mut room = new_room();
    join(&mut room, ALICE, "alice");
    let out = join(&mut room, "mallory@example.org/m", "alice");
    assert_eq!(error_of(&out).as_deref(), Some("conflict"));
    let err = stanzas(&out)[0];
    assert_eq!(err.get_child("error", NS_CLIENT).and_then(|e| e.attr("type")), Some("cancel"));

    // Members-only.
    let mut room = room_with(RoomConfig { members_only: true, ..RoomConfig::default() });
    assert_eq!(error_of(&join(&mut room, ALICE, "alice")).as_deref(), Some("registration-required"));

    // Banned.
    let mut room = new_room();
    feed(&mut room, &admin_iq(OWNER, "b", "set", "<item affiliation='outcast' jid='alice@example.org'/>"));
    assert_eq!(error_of(&join(&mut room, ALICE, "alice")).as_deref(), Some("forbidden"));

    // Password.
    let mut room = room_with(RoomConfig { password: Some("secret".into()), ..RoomConfig::default() });
    assert_eq!(error_of(&join(&mut room, ALICE, "alice")).as_deref(), Some("not-authorized"));
    let out = feed(&mut room, &join_xml(ALICE, "alice", "<password>wrong</password>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-authorized"));
    let out = feed(&mut room, &join_xml(ALICE, "alice", "<password>secret</password>"));
    assert!(error_of(&out).is_none());

    // Room full; owners and admins may still enter.
    let mut room = room_with(RoomConfig { max_users: 2, ..RoomConfig::default() });
    join(&mut room, ALICE, "alice");
    assert_eq!(error_of(&join(&mut room, BOB, "bob")).as_deref(), Some("service-unavailable"));
    feed(&mut room, &admin_iq(OWNER, "a", "set", "<item affiliation='admin' jid='bob@example.org'/>"));
    assert!(error_of(&join(&mut room, BOB, "bob")).is_none());

    // Invalid nickname: empty resource, and no nickname at all.
    let mut room = new_room();
    let out = feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}/'><x xmlns='{}'/></presence>", ns::MUC));
    assert_eq!(error_of(&out).as_deref(), Some("jid-malformed"));
    let out = feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}'><x xmlns='{}'/></presence>", ns::MUC));
    assert_eq!(error_of(&out).as_deref(), Some("jid-malformed"));
    assert_eq!(room.occupant_count(), 1);
}

#[test]
fn channel_policy_controls_entry() {
    let oracle = ChannelOracle::default()
        .with("owner@example.org", Some("owner"), true, true)
        .with("alice@example.org", Some("member"), true, true)
        .with("bob@example.org", Some("member"), false, true)
        .with("carol@example.org", Some("moderator"), true, true);
    let mut room = Room::new(ROOM, RoomConfig { members_only: true, ..RoomConfig::default() }, None, true);
    // No view: forbidden even though the room would otherwise say registration-required.
    assert_eq!(error_of(&join_with(&mut room, BOB, "bob", &oracle)).as_deref(), Some("forbidden"));
    // The policy's affiliation replaces the (empty) stored list.
    let out = join_with(&mut room, OWNER, "Owner", &oracle);
    let own = for_jid(&out, OWNER);
    assert_eq!(item(own[0]).attr("affiliation"), Some("owner"));
    let out = join_with(&mut room, ALICE, "alice", &oracle);
    let self_p = for_jid(&out, ALICE).into_iter().find(|e| from(e) == occ("alice")).unwrap_or_else(|| panic!("self"));
    assert_eq!(item(self_p).attr("affiliation"), Some("member"));
    assert_eq!(item(self_p).attr("role"), Some("participant"));
    // Waddle moderators are members with the moderator role.
    let out = join_with(&mut room, CAROL, "carol", &oracle);
    let self_p = for_jid(&out, CAROL).into_iter().find(|e| from(e) == occ("carol")).unwrap_or_else(|| panic!("self"));
    assert_eq!(item(self_p).attr("affiliation"), Some("member"));
    assert_eq!(item(self_p).attr("role"), Some("moderator"));
    // Unknown users (no view) are refused too.
    let out = join_with(&mut room, "dave@example.org/d", "dave", &oracle);
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    // A read-only member enters as a visitor.
    let ro = ChannelOracle::default().with("eve@example.org", Some("member"), true, false);
    let out = join_with(&mut room, "eve@example.org/e", "eve", &ro);
    let self_p = for_jid(&out, "eve@example.org/e")
        .into_iter()
        .find(|e| from(e) == occ("eve"))
        .unwrap_or_else(|| panic!("self"));
    assert_eq!(item(self_p).attr("role"), Some("visitor"));
}

#[test]
fn presence_update_is_broadcast_to_all() {
    let mut room = room3();
    let out = feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}/alice'><show>dnd</show></presence>"));
    let s = stanzas(&out);
    assert_eq!(s.len(), 3);
    for p in &s {
        assert_eq!(from(p), occ("alice"));
        assert_eq!(p.get_child("show", NS_CLIENT).map(Element::text).as_deref(), Some("dnd"));
    }
    let own = for_jid(&out, ALICE);
    assert_eq!(statuses(own[0]), vec![110]);
    assert_eq!(statuses(for_jid(&out, BOB)[0]), Vec::<u16>::new());
}

#[test]
fn rejoin_resends_state() {
    let mut room = room3();
    let out = join(&mut room, ALICE, "alice");
    let own = for_jid(&out, ALICE);
    // Owner, bob, self, subject.
    assert_eq!(own.len(), 4);
    assert_eq!(statuses(own[2]), vec![110, 170]);
    assert!(own[3].has_child("subject", NS_CLIENT));
    assert_eq!(room.occupant_count(), 3);
}

#[test]
fn nick_change() {
    let mut room = room3();
    let out = feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}/alicia'/>"));
    let s = stanzas(&out);
    assert_eq!(s.len(), 6);
    // First the unavailable from the old nickname (303, new nick), to everyone.
    for p in &s[..3] {
        assert_eq!(from(p), occ("alice"));
        assert_eq!(p.attr("type"), Some("unavailable"));
        assert_eq!(item(p).attr("nick"), Some("alicia"));
        assert!(statuses(p).contains(&303));
    }
    // Then the available from the new one.
    for p in &s[3..] {
        assert_eq!(from(p), occ("alicia"));
        assert_eq!(p.attr("type"), None);
        assert!(!statuses(p).contains(&303));
    }
    let own = for_jid(&out, ALICE);
    assert_eq!(statuses(own[0]), vec![110, 303]);
    assert_eq!(statuses(own[1]), vec![110]);
    assert_eq!(room.nick_of(ALICE), Some("alicia"));
    assert_eq!(room.nicks().collect::<Vec<_>>(), vec!["Owner", "alicia", "bob"]);
    // Conflict with a taken nickname.
    let out = feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}/bob'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("conflict"));
    assert_eq!(room.nick_of(ALICE), Some("alicia"));
}

#[test]
fn leave() {
    let mut room = room3();
    let out = feed(
        &mut room,
        &format!("<presence from='{ALICE}' to='{ROOM}/alice' type='unavailable'><status>bye</status></presence>"),
    );
    let s = stanzas(&out);
    assert_eq!(s.len(), 3);
    assert_eq!(to(s[0]), ALICE);
    assert_eq!(statuses(s[0]), vec![110]);
    for p in &s {
        assert_eq!(p.attr("type"), Some("unavailable"));
        assert_eq!(item(p).attr("role"), Some("none"));
        assert_eq!(p.get_child("status", NS_CLIENT).map(Element::text).as_deref(), Some("bye"));
    }
    assert!(statuses(s[1]).is_empty());
    assert_eq!(room.occupant_count(), 2);
    assert!(!room.is_occupant(ALICE));
    assert!(room.is_occupant("BOB@example.org/b"));
    assert!(!destroyed(&out));
    // A stranger's unavailable is ignored.
    assert!(feed(&mut room, &format!("<presence from='{CAROL}' to='{ROOM}/x' type='unavailable'/>")).is_empty());
}

#[test]
fn temporary_room_vanishes_with_its_last_occupant() {
    let mut room = new_room();
    join(&mut room, ALICE, "alice");
    let out = room.occupant_left(ALICE);
    // Only the owner is told; the vanished session gets nothing.
    assert_eq!(stanzas(&out).len(), 1);
    assert_eq!(to(stanzas(&out)[0]), OWNER);
    assert!(!destroyed(&out));
    let out = feed(&mut room, &format!("<presence from='{OWNER}' to='{ROOM}/Owner' type='unavailable'/>"));
    assert!(destroyed(&out));
    assert!(room.is_destroyed());
    // Persistent rooms stay.
    let mut room = room_with(RoomConfig { persistent: true, ..RoomConfig::default() });
    let out = room.occupant_left(OWNER);
    assert!(!destroyed(&out));
    assert!(room.is_empty());
}

#[test]
fn multi_session_nick_sharing() {
    let mut room = room3();
    let alice2 = "alice@example.org/phone";
    let out = join(&mut room, alice2, "alice");
    assert!(error_of(&out).is_none());
    assert_eq!(room.occupant_count(), 3);
    // The new session receives the others and its own self-presence; alice's other
    // session sees the occupant's (own) updated presence with 110.
    assert_eq!(statuses(for_jid(&out, ALICE)[0]), vec![110]);
    // Another user may not take the nickname.
    assert_eq!(error_of(&join(&mut room, CAROL, "alice")).as_deref(), Some("conflict"));
    // Groupchat and private messages reach both sessions.
    let out = feed(&mut room, &groupchat(BOB, "hi"));
    assert_eq!(for_jid(&out, ALICE).len(), 1);
    assert_eq!(for_jid(&out, alice2).len(), 1);
    let out =
        feed(&mut room, &format!("<message from='{BOB}' to='{ROOM}/alice' type='chat'><body>psst</body></message>"));
    assert_eq!(stanzas(&out).len(), 2);
    // No nickname change while several sessions share it.
    let out = feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}/alicia'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-acceptable"));
    // One session leaves: only it gets the unavailable; the room keeps alice.
    let out = feed(&mut room, &format!("<presence from='{alice2}' to='{ROOM}/alice' type='unavailable'/>"));
    let unavailable: Vec<_> = stanzas(&out).into_iter().filter(|e| e.attr("type") == Some("unavailable")).collect();
    assert_eq!(unavailable.len(), 1);
    assert_eq!(to(unavailable[0]), alice2);
    assert_eq!(room.nick_of(ALICE), Some("alice"));
    assert_eq!(room.nick_of(alice2), None);
    // The last session vanishing removes the occupant.
    let out = room.occupant_left(ALICE);
    assert_eq!(stanzas(&out).len(), 2);
    assert!(stanzas(&out).iter().all(|e| e.attr("type") == Some("unavailable") && from(e) == occ("alice")));
    assert_eq!(room.occupant_count(), 2);
}

#[test]
fn bounced_presence_and_message_remove_the_session() {
    let mut room = room3();
    let out = feed(
        &mut room,
        &format!(
            "<message from='{ALICE}' to='{ROOM}/alice' type='error'><error type='cancel'>\
             <recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        ),
    );
    assert_eq!(stanzas(&out).len(), 2);
    assert!(stanzas(&out).iter().all(|e| statuses(e) == vec![333]));
    assert_eq!(room.occupant_count(), 2);
    let out = feed(&mut room, &format!("<presence from='{BOB}' to='{ROOM}/bob' type='error'/>"));
    assert_eq!(stanzas(&out).len(), 1);
    assert_eq!(room.occupant_count(), 1);
}

fn history_room() -> Room {
    let mut room = new_room();
    join(&mut room, ALICE, "alice");
    for (i, stamp) in ["2024-05-06T11:00:00Z", "2024-05-06T11:30:00Z", "2024-05-06T11:50:00Z", "2024-05-06T11:59:00Z"]
        .iter()
        .enumerate()
    {
        feed_full(&mut room, &groupchat(ALICE, &format!("msg{i}")), &StandardOracle, stamp);
    }
    room
}

fn history_bodies(out: &[Outbound], to_jid: &str) -> Vec<String> {
    for_jid(out, to_jid)
        .into_iter()
        .filter(|e| e.name() == "message" && e.has_child("delay", ns::DELAY))
        .filter_map(|e| e.get_child("body", NS_CLIENT).map(Element::text))
        .collect()
}

#[test]
fn history_on_join() {
    let mut room = history_room();
    let out = join(&mut room, BOB, "bob");
    assert_eq!(history_bodies(&out, BOB), vec!["msg0", "msg1", "msg2", "msg3"]);
    let to_bob = for_jid(&out, BOB);
    // Order: presences, self-presence, history, subject.
    let self_idx = to_bob.iter().position(|e| statuses(e).contains(&110)).unwrap_or(usize::MAX);
    let first_hist = to_bob.iter().position(|e| e.has_child("delay", ns::DELAY)).unwrap_or(0);
    assert!(self_idx < first_hist);
    assert!(to_bob.last().is_some_and(|e| e.has_child("subject", NS_CLIENT)));
    let h = to_bob[first_hist];
    assert_eq!(from(h), occ("alice"));
    assert_eq!(h.attr("type"), Some("groupchat"));
    let delay = h.get_child("delay", ns::DELAY).unwrap_or_else(|| panic!("no delay"));
    assert_eq!(delay.attr("from"), Some(ROOM));
    assert_eq!(delay.attr("stamp"), Some("2024-05-06T11:00:00Z"));
    assert!(h.has_child("stanza-id", ns::SID));
}

#[test]
fn history_limits() {
    let spec = |history: &str| {
        let mut room = history_room();
        let out = feed(&mut room, &join_xml(BOB, "bob", history));
        history_bodies(&out, BOB)
    };
    assert_eq!(spec("<history maxstanzas='2'/>"), vec!["msg2", "msg3"]);
    assert_eq!(spec("<history maxstanzas='0'/>"), Vec::<String>::new());
    assert_eq!(spec("<history maxchars='0'/>"), Vec::<String>::new());
    assert_eq!(spec("<history seconds='900'/>"), vec!["msg2", "msg3"]);
    assert_eq!(spec("<history since='2024-05-06T11:30:00Z'/>"), vec!["msg2", "msg3"]);
    assert_eq!(spec("<history seconds='3000' maxstanzas='1'/>"), vec!["msg3"]);
    // maxchars counts whole delivered stanzas: room for exactly one.
    let mut room = history_room();
    let probe = feed(&mut room, &join_xml(BOB, "bob", ""));
    let last = for_jid(&probe, BOB).into_iter().rfind(|e| e.has_child("delay", ns::DELAY)).cloned();
    let len = last.map(|e| e.to_bytes(NS_CLIENT).len()).unwrap_or(0);
    assert_eq!(spec(&format!("<history maxchars='{}'/>", len + 5)), vec!["msg3"]);
}

#[test]
fn history_is_bounded_and_restorable() {
    let mut room = room_with(RoomConfig { history_max: 2, ..RoomConfig::default() });
    for i in 0..5 {
        feed(&mut room, &groupchat(OWNER, &format!("m{i}")));
    }
    let bodies: Vec<String> =
        room.history().filter_map(|e| e.message.get_child("body", NS_CLIENT).map(Element::text)).collect();
    assert_eq!(bodies, vec!["m3", "m4"]);
    let entries: Vec<_> = room.history().cloned().collect();
    let mut other = Room::new(ROOM, RoomConfig { history_max: 1, ..RoomConfig::default() }, None, true);
    other.set_history(entries);
    assert_eq!(other.history().count(), 1);
}

#[test]
fn roles_on_entry_follow_moderation() {
    let mut room = room_with(RoomConfig { moderated: true, ..RoomConfig::default() });
    feed(&mut room, &admin_iq(OWNER, "m", "set", "<item affiliation='member' jid='bob@example.org'/>"));
    let out = join(&mut room, ALICE, "alice");
    let self_p = for_jid(&out, ALICE).into_iter().find(|e| statuses(e).contains(&110)).unwrap_or_else(|| panic!());
    assert_eq!(item(self_p).attr("role"), Some(Role::Visitor.as_str()));
    let out = join(&mut room, BOB, "bob");
    let self_p = for_jid(&out, BOB).into_iter().find(|e| statuses(e).contains(&110)).unwrap_or_else(|| panic!());
    assert_eq!(item(self_p).attr("role"), Some("participant"));
    assert_eq!(item(self_p).attr("affiliation"), Some("member"));
}

#[test]
fn normalized_nickname_is_announced_with_210() {
    let mut room = new_room();
    // Resourceprep maps the fullwidth letter to its ASCII form.
    let out = feed(&mut room, &join_xml(ALICE, "\u{ff21}lice", ""));
    assert!(error_of(&out).is_none());
    assert_eq!(room.nick_of(ALICE), Some("Alice"));
    let self_p = for_jid(&out, ALICE).into_iter().find(|e| statuses(e).contains(&110)).unwrap_or_else(|| panic!());
    assert_eq!(from(self_p), occ("Alice"));
    assert_eq!(statuses(self_p), vec![110, 170, 210]);
    // A later update echoes its id to the occupant only.
    let out =
        feed(&mut room, &format!("<presence from='{ALICE}' to='{ROOM}/Alice' id='u1'><show>xa</show></presence>"));
    assert_eq!(for_jid(&out, ALICE)[0].attr("id"), Some("u1"));
    assert_eq!(for_jid(&out, OWNER)[0].attr("id"), None);
}

#[test]
fn a_rejoin_seats_the_session_silently_and_it_receives_messages() {
    let mut room = room_with(RoomConfig::default());
    let presence = xml(&join_xml(ALICE, "alice", ""));
    assert_eq!(room.rejoin(&presence, &StandardOracle), Ok(()));
    assert!(room.is_occupant(ALICE));
    assert_eq!(room.nick_of(ALICE), Some("alice"));
    // Seated without a word to anyone; the next groupchat reaches her like any occupant.
    let out = feed(&mut room, &groupchat(OWNER, "hello"));
    assert!(out.iter().any(|o| matches!(o, Outbound::Stanza(s) if s.attr("to") == Some(ALICE))), "{out:?}");
}

#[test]
fn a_rejoin_of_a_seated_session_changes_nothing() {
    let mut room = room_with(RoomConfig::default());
    join(&mut room, ALICE, "alice");
    let presence = xml(&join_xml(ALICE, "alice", ""));
    assert_eq!(room.rejoin(&presence, &StandardOracle), Ok(()));
    assert_eq!(room.occupant_count(), 2);
}

#[test]
fn a_rejoin_passes_the_admission_checks_of_a_join() {
    let mut room = room_with(RoomConfig { members_only: true, ..RoomConfig::default() });
    let presence = xml(&join_xml(ALICE, "alice", ""));
    assert_eq!(room.rejoin(&presence, &StandardOracle), Err("registration-required"));
    assert!(!room.is_occupant(ALICE));
    // Somebody else holds the nickname now.
    let mut open = room_with(RoomConfig::default());
    join(&mut open, BOB, "alice");
    assert_eq!(open.rejoin(&presence, &StandardOracle), Err("conflict"));
}

#[test]
fn a_locked_room_takes_back_its_occupants() {
    let mut room = Room::new(ROOM, RoomConfig::default(), Some("owner@example.org"), false);
    assert!(room.is_locked());
    let presence = xml(&join_xml(ALICE, "alice", ""));
    assert_eq!(room.rejoin(&presence, &StandardOracle), Ok(()));
    assert!(room.is_occupant(ALICE));
}
