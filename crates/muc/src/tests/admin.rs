//! muc#admin: kicks, voice, moderators, bans, affiliations and their lists, privilege
//! rules, channel rooms.

use super::*;

fn kick(from: &str, nick: &str) -> String {
    admin_iq(from, "k1", "set", &format!("<item nick='{nick}' role='none'><reason>spam</reason></item>"))
}

#[test]
fn moderator_kicks_participant() {
    let mut room = room3();
    let out = feed(&mut room, &kick(OWNER, "alice"));
    let s = stanzas(&out);
    // Alice first, then the remaining occupants, then the result.
    assert_eq!(s.len(), 4);
    assert_eq!(to(s[0]), ALICE);
    assert_eq!(statuses(s[0]), vec![110, 307]);
    for p in &s[..3] {
        assert_eq!(p.attr("type"), Some("unavailable"));
        assert_eq!(from(p), occ("alice"));
        assert_eq!(item(p).attr("role"), Some("none"));
        assert_eq!(item(p).get_child("actor", ns::MUC_USER).and_then(|a| a.attr("nick")), Some("Owner"));
        assert_eq!(item(p).get_child("reason", ns::MUC_USER).map(Element::text).as_deref(), Some("spam"));
        assert!(statuses(p).contains(&307));
    }
    assert!(is_result(&out, "k1"));
    assert_eq!(room.nick_of(ALICE), None);
    assert_eq!(persists(&out), 0);
    // A kick is not a ban.
    assert!(error_of(&join(&mut room, ALICE, "alice")).is_none());
}

#[test]
fn role_privilege_rules() {
    let mut room = room3();
    feed(&mut room, &admin_iq(OWNER, "a", "set", "<item affiliation='admin' jid='carol@example.org'/>"));
    join(&mut room, CAROL, "carol");
    // A participant can't kick.
    assert_eq!(error_of(&feed(&mut room, &kick(ALICE, "bob"))).as_deref(), Some("forbidden"));
    // A non-occupant without affiliation can't either.
    assert_eq!(error_of(&feed(&mut room, &kick("dave@example.org/d", "bob"))).as_deref(), Some("forbidden"));
    // An admin can't kick an owner (nor another admin).
    assert_eq!(error_of(&feed(&mut room, &kick(CAROL, "Owner"))).as_deref(), Some("not-allowed"));
    // Unknown nickname.
    assert_eq!(error_of(&feed(&mut room, &kick(OWNER, "nobody"))).as_deref(), Some("item-not-found"));
    // Admins grant moderator; a participant-affiliated moderator can kick participants
    // but not demote moderators.
    let out = feed(&mut room, &admin_iq(CAROL, "m", "set", "<item nick='alice' role='moderator'/>"));
    assert!(is_result(&out, "m"));
    assert!(stanzas(&out).iter().filter(|e| e.name() == "presence").all(|p| item(p).attr("role") == Some("moderator")));
    let out = feed(&mut room, &admin_iq(ALICE, "d", "set", "<item nick='alice' role='participant'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
    let out = feed(&mut room, &admin_iq(ALICE, "g", "set", "<item nick='bob' role='moderator'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
    assert!(is_result(&feed(&mut room, &kick(ALICE, "bob")), "k1"));
    // Invalid role value.
    let out = feed(&mut room, &admin_iq(OWNER, "x", "set", "<item nick='alice' role='king'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("bad-request"));
}

#[test]
fn voice_grant_and_revoke() {
    let mut room = room_with(RoomConfig { moderated: true, ..RoomConfig::default() });
    join(&mut room, ALICE, "alice");
    let out = feed(
        &mut room,
        &admin_iq(OWNER, "v", "set", "<item nick='alice' role='participant'><reason>ok</reason></item>"),
    );
    assert!(is_result(&out, "v"));
    let presences: Vec<_> = stanzas(&out).into_iter().filter(|e| e.name() == "presence").collect();
    assert_eq!(presences.len(), 2);
    assert!(presences.iter().all(|p| item(p).attr("role") == Some("participant") && p.attr("type").is_none()));
    assert_eq!(statuses(for_jid(&out, ALICE)[0]), vec![110]);
    let out = feed(&mut room, &admin_iq(OWNER, "r", "set", "<item nick='alice' role='visitor'/>"));
    assert!(is_result(&out, "r"));
    assert_eq!(error_of(&feed(&mut room, &groupchat(ALICE, "hi"))).as_deref(), Some("forbidden"));
    // Revoking an owner's voice is not allowed.
    join(&mut room, BOB, "bob");
    let out = feed(&mut room, &admin_iq(OWNER, "o", "set", "<item nick='Owner' role='visitor'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
}

#[test]
fn ban_removes_and_lists() {
    let mut room = room3();
    let out = feed(
        &mut room,
        &admin_iq(
            OWNER,
            "b1",
            "set",
            "<item affiliation='outcast' jid='bob@example.org'><reason>troll</reason></item>",
        ),
    );
    let s = stanzas(&out);
    assert_eq!(to(s[0]), BOB);
    assert_eq!(statuses(s[0]), vec![110, 301]);
    assert_eq!(item(s[0]).attr("affiliation"), Some("outcast"));
    assert_eq!(item(s[0]).attr("role"), Some("none"));
    assert_eq!(s.iter().filter(|e| e.name() == "presence").count(), 3);
    assert!(is_result(&out, "b1"));
    // Result then persist.
    assert!(matches!(out.last(), Some(Outbound::Persist)));
    assert_eq!(room.occupant_count(), 2);
    assert_eq!(room.affiliation("bob@example.org"), Affiliation::Outcast);
    assert_eq!(error_of(&join(&mut room, BOB, "bob")).as_deref(), Some("forbidden"));
    // The outcast list carries the reason.
    let out = feed(&mut room, &admin_iq(OWNER, "l", "get", "<item affiliation='outcast'/>"));
    let q = stanzas(&out)[0].get_child("query", ns::MUC_ADMIN).unwrap_or_else(|| panic!("no query"));
    let items: Vec<&Element> = q.children().collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attr("jid"), Some("bob@example.org"));
    assert_eq!(items[0].get_child("reason", ns::MUC_ADMIN).map(Element::text).as_deref(), Some("troll"));
    // Lifting the ban.
    let out = feed(&mut room, &admin_iq(OWNER, "u", "set", "<item affiliation='none' jid='bob@example.org'/>"));
    assert!(is_result(&out, "u"));
    assert!(error_of(&join(&mut room, BOB, "bob")).is_none());
}

#[test]
fn ban_by_nick_and_admin_rules() {
    let mut room = room3();
    feed(&mut room, &admin_iq(OWNER, "a", "set", "<item affiliation='admin' jid='carol@example.org'/>"));
    join(&mut room, CAROL, "carol");
    // Admins manage members and outcasts...
    let out = feed(&mut room, &admin_iq(CAROL, "b", "set", "<item affiliation='outcast' nick='alice'/>"));
    assert!(is_result(&out, "b"));
    assert_eq!(room.affiliation("alice@example.org"), Affiliation::Outcast);
    let out = feed(&mut room, &admin_iq(CAROL, "m", "set", "<item affiliation='member' jid='dave@example.org'/>"));
    assert!(is_result(&out, "m"));
    // ...but not admins and owners.
    let out = feed(&mut room, &admin_iq(CAROL, "o", "set", "<item affiliation='outcast' jid='owner@example.org'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
    let out = feed(&mut room, &admin_iq(CAROL, "p", "set", "<item affiliation='admin' jid='bob@example.org'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
    // Participants can't change affiliations at all.
    let out = feed(&mut room, &admin_iq(BOB, "q", "set", "<item affiliation='member' jid='bob@example.org'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    // A batch is all or nothing.
    let out = feed(
        &mut room,
        &admin_iq(
            CAROL,
            "r",
            "set",
            "<item affiliation='member' jid='erin@example.org'/><item affiliation='owner' jid='erin@example.org'/>",
        ),
    );
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
    assert_eq!(room.affiliation("erin@example.org"), Affiliation::None);
}

#[test]
fn owners_manage_owners_and_keep_one() {
    let mut room = room3();
    let out = feed(&mut room, &admin_iq(OWNER, "a", "set", "<item affiliation='admin' jid='alice@example.org'/>"));
    assert!(is_result(&out, "a"));
    // Alice became admin: her role becomes moderator and everyone is told.
    let to_bob = for_jid(&out, BOB);
    assert_eq!(item(to_bob[0]).attr("affiliation"), Some("admin"));
    assert_eq!(item(to_bob[0]).attr("role"), Some("moderator"));
    // The last owner can't step down.
    let out = feed(&mut room, &admin_iq(OWNER, "s", "set", "<item affiliation='admin' jid='owner@example.org'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("conflict"));
    // With a second owner they can.
    feed(&mut room, &admin_iq(OWNER, "o", "set", "<item affiliation='owner' jid='bob@example.org'/>"));
    let out = feed(&mut room, &admin_iq(OWNER, "s2", "set", "<item affiliation='member' jid='owner@example.org'/>"));
    assert!(is_result(&out, "s2"));
    assert_eq!(room.affiliation("owner@example.org"), Affiliation::Member);
    // Demoted from owner to member: no longer a moderator.
    let to_alice = for_jid(&out, ALICE);
    assert_eq!(item(to_alice[0]).attr("role"), Some("participant"));
}

#[test]
fn losing_membership_of_members_only_room_removes_with_321() {
    let mut room = room_with(RoomConfig { members_only: true, ..RoomConfig::default() });
    feed(&mut room, &admin_iq(OWNER, "m", "set", "<item affiliation='member' jid='alice@example.org'/>"));
    join(&mut room, ALICE, "alice");
    let out = feed(&mut room, &admin_iq(OWNER, "r", "set", "<item affiliation='none' jid='alice@example.org'/>"));
    assert_eq!(statuses(for_jid(&out, ALICE)[0]), vec![110, 321]);
    assert_eq!(statuses(for_jid(&out, OWNER)[0]), vec![321]);
    assert_eq!(room.occupant_count(), 1);
}

#[test]
fn lists() {
    let mut room = room3();
    feed(
        &mut room,
        &admin_iq(
            OWNER,
            "m",
            "set",
            "<item affiliation='member' jid='alice@example.org'/><item affiliation='member' jid='zed@example.org'/>",
        ),
    );
    let out = feed(&mut room, &admin_iq(OWNER, "l", "get", "<item affiliation='member'/>"));
    let q = stanzas(&out)[0].get_child("query", ns::MUC_ADMIN).unwrap_or_else(|| panic!("no query"));
    let jids: Vec<&str> = q.children().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(jids, vec!["alice@example.org", "zed@example.org"]);
    let out = feed(&mut room, &admin_iq(OWNER, "o", "get", "<item affiliation='owner'/>"));
    let q = stanzas(&out)[0].get_child("query", ns::MUC_ADMIN).unwrap_or_else(|| panic!("no query"));
    assert_eq!(q.children().filter_map(|i| i.attr("jid")).collect::<Vec<_>>(), vec!["owner@example.org"]);
    // Participants may not see lists.
    let out = feed(&mut room, &admin_iq(BOB, "l2", "get", "<item affiliation='member'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    let out = feed(&mut room, &admin_iq(BOB, "r2", "get", "<item role='participant'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    // Moderators see role lists with nicknames and real JIDs.
    let out = feed(&mut room, &admin_iq(OWNER, "r", "get", "<item role='participant'/>"));
    let q = stanzas(&out)[0].get_child("query", ns::MUC_ADMIN).unwrap_or_else(|| panic!("no query"));
    let items: Vec<(&str, &str)> =
        q.children().map(|i| (i.attr("nick").unwrap_or(""), i.attr("jid").unwrap_or(""))).collect();
    assert_eq!(items, vec![("alice", ALICE), ("bob", BOB)]);
    // Nonsense.
    let out = feed(&mut room, &admin_iq(OWNER, "n", "get", "<item affiliation='none'/>"));
    assert_eq!(error_of(&out).as_deref(), Some("bad-request"));
    let out = feed(&mut room, &admin_iq(OWNER, "e", "get", ""));
    assert_eq!(error_of(&out).as_deref(), Some("bad-request"));
}

#[test]
fn channel_rooms_refuse_affiliation_changes_but_allow_kicks() {
    let oracle = ChannelOracle::default()
        .with("owner@example.org", Some("owner"), true, true)
        .with("alice@example.org", Some("member"), true, true)
        .with("bob@example.org", Some("member"), true, true)
        .with("carol@example.org", Some("moderator"), true, true);
    let mut room = Room::new(ROOM, RoomConfig::default(), None, true);
    for (full, nick) in [(OWNER, "Owner"), (ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")] {
        join_with(&mut room, full, nick, &oracle);
    }
    let out = feed_with(
        &mut room,
        &admin_iq(OWNER, "b", "set", "<item affiliation='outcast' jid='bob@example.org'/>"),
        &oracle,
    );
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
    // A waddle moderator kicks a member.
    let out = feed_with(&mut room, &kick(CAROL, "bob"), &oracle);
    assert!(is_result(&out, "k1"));
    assert_eq!(room.occupant_count(), 3);
    // A member can't kick.
    assert_eq!(error_of(&feed_with(&mut room, &kick(ALICE, "carol"), &oracle)).as_deref(), Some("forbidden"));
    // The channel owner kicks the waddle moderator.
    assert!(is_result(&feed_with(&mut room, &kick(OWNER, "carol"), &oracle), "k1"));
}

#[test]
fn moderating_a_room_keeps_current_voices() {
    let mut room = room3();
    let submit =
        "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_moderatedroom'><value>1</value></field></x>";
    let out = feed(&mut room, &owner_iq(OWNER, "s", "set", submit));
    assert!(is_result(&out, "s"));
    // Alice keeps her voice, and a policy re-evaluation does not take it away...
    assert!(room.apply_policy_change(&StandardOracle).is_empty());
    assert!(error_of(&feed(&mut room, &groupchat(ALICE, "still here"))).is_none());
    // ...but newcomers enter as visitors.
    let out = join(&mut room, CAROL, "carol");
    let self_p = for_jid(&out, CAROL).into_iter().find(|e| statuses(e).contains(&110)).unwrap_or_else(|| panic!());
    assert_eq!(item(self_p).attr("role"), Some("visitor"));
}
