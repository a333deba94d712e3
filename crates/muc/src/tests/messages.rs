//! Messages: groupchat reflection and archiving, permissions to speak, subject,
//! retraction, private messages, invitations.

use super::*;

#[test]
fn groupchat_is_reflected_to_all_with_stanza_id_and_archived_once() {
    let mut room = room3();
    let out = feed(
        &mut room,
        &format!(
            "<message from='{ALICE}' to='{ROOM}' type='groupchat' id='c1'><body>hello</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='{ROOM}'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='other' by='example.org'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='o1'/>\
             <reply xmlns='urn:xmpp:reply:0' to='{ROOM}/bob' id='x'/>\
             <reactions xmlns='urn:xmpp:reactions:0' id='y'><reaction>👍</reaction></reactions></message>"
        ),
    );
    assert_eq!(out.len(), 4);
    let s = stanzas(&out);
    let mut recipients: Vec<&str> = s.iter().map(|e| to(e)).collect();
    recipients.sort_unstable();
    assert_eq!(recipients, vec![ALICE, BOB, OWNER]);
    let ids: Vec<&str> = s
        .iter()
        .map(|e| {
            let sids: Vec<&Element> =
                e.children().filter(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(ROOM)).collect();
            assert_eq!(sids.len(), 1, "{e}");
            sids[0].attr("id").unwrap_or("")
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0] && *id != "forged"));
    for e in &s {
        assert_eq!(from(e), occ("alice"));
        assert_eq!(e.attr("type"), Some("groupchat"));
        assert_eq!(e.attr("id"), Some("c1"));
        assert!(e.has_child("origin-id", ns::SID));
        assert!(e.has_child("reply", "urn:xmpp:reply:0"));
        assert!(e.has_child("reactions", "urn:xmpp:reactions:0"));
        assert!(e.children().any(|c| c.attr("by") == Some("example.org")));
    }
    // The archive entry comes last, once.
    let Some(Outbound::Archive(entry)) = out.last() else { panic!("archive last: {out:?}") };
    assert_eq!(archives(&out).len(), 1);
    assert_eq!(entry.stanza_id, ids[0]);
    assert_eq!(entry.from_nick, "alice");
    assert_eq!(entry.from_real, ALICE);
    assert_eq!(entry.stamp, NOW);
    assert_eq!(entry.message.attr("to"), None);
    assert_eq!(from(&entry.message), occ("alice"));
    assert_eq!(room.history().count(), 1);
}

/// A groupchat message leaves the room as one broadcast naming every occupant session,
/// not as a copy per recipient: the shell serializes it once.
#[test]
fn broadcast_groupchat_is_one_shared_stanza_for_all_recipients() {
    let mut room = room3();
    let out = room.handle(&xml(&groupchat(ALICE, "hello")), &StandardOracle, NOW, &mut || "sid-b".to_owned());
    let broadcasts: Vec<(&Element, &Vec<String>)> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Broadcast { stanza, to } => Some((stanza, to)),
            _ => None,
        })
        .collect();
    assert_eq!(broadcasts.len(), 1, "{out:?}");
    let (stanza, recipients) = broadcasts[0];
    let mut recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
    recipients.sort_unstable();
    assert_eq!(recipients, vec![ALICE, BOB, OWNER]);
    assert_eq!(stanza.attr("to"), None, "each copy gets its recipient's address");
    assert_eq!(from(stanza), occ("alice"));
    assert!(stanzas(&out).is_empty(), "no per-recipient copies: {out:?}");
}

#[test]
fn transient_and_unlogged_messages() {
    let mut room = room3();
    // Chat states are reflected but neither archived nor kept.
    let out = feed(
        &mut room,
        &format!(
            "<message from='{ALICE}' to='{ROOM}' type='groupchat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ),
    );
    assert_eq!(stanzas(&out).len(), 3);
    assert!(archives(&out).is_empty());
    assert!(!stanzas(&out)[0].has_child("stanza-id", ns::SID));
    // no-store hint.
    let out = feed(
        &mut room,
        &format!("<message from='{ALICE}' to='{ROOM}' type='groupchat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"),
    );
    assert!(archives(&out).is_empty());
    assert_eq!(room.history().count(), 0);
    // A room that is not logged keeps history but does not archive.
    let mut room = room_with(RoomConfig { logged: false, ..RoomConfig::default() });
    let out = feed(&mut room, &groupchat(OWNER, "hi"));
    assert!(archives(&out).is_empty());
    assert!(stanzas(&out)[0].has_child("stanza-id", ns::SID));
    assert_eq!(room.history().count(), 1);
}

#[test]
fn only_occupants_may_send() {
    let mut room = room3();
    let out = feed(&mut room, &groupchat(CAROL, "let me in"));
    assert_eq!(out.len(), 1);
    assert_eq!(error_of(&out).as_deref(), Some("not-acceptable"));
    let err = stanzas(&out)[0];
    assert_eq!(to(err), CAROL);
    assert_eq!(from(err), ROOM);
    // Groupchat to an occupant JID is a bad request.
    let out =
        feed(&mut room, &format!("<message from='{ALICE}' to='{ROOM}/bob' type='groupchat'><body>x</body></message>"));
    assert_eq!(error_of(&out).as_deref(), Some("bad-request"));
}

#[test]
fn visitors_in_moderated_rooms_may_not_speak() {
    let mut room = room_with(RoomConfig { moderated: true, ..RoomConfig::default() });
    join(&mut room, ALICE, "alice");
    let out = feed(&mut room, &groupchat(ALICE, "hi"));
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    assert!(archives(&out).is_empty());
    // Voice granted.
    feed(&mut room, &admin_iq(OWNER, "v", "set", "<item nick='alice' role='participant'/>"));
    let out = feed(&mut room, &groupchat(ALICE, "hi"));
    assert!(error_of(&out).is_none());
    assert_eq!(archives(&out).len(), 1);
}

#[test]
fn channel_policy_denies_sending() {
    let oracle = ChannelOracle::default().with("owner@example.org", Some("owner"), true, true).with(
        "alice@example.org",
        Some("member"),
        true,
        false,
    );
    let mut room = Room::new(ROOM, RoomConfig::default(), None, true);
    join_with(&mut room, OWNER, "Owner", &oracle);
    join_with(&mut room, ALICE, "alice", &oracle);
    let out = feed_with(&mut room, &groupchat(ALICE, "hi"), &oracle);
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    let out = feed_with(
        &mut room,
        &format!("<message from='{ALICE}' to='{ROOM}/Owner' type='chat'><body>hi</body></message>"),
        &oracle,
    );
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    // Granted write access: the policy change gives alice voice.
    let oracle = oracle.with("alice@example.org", Some("member"), true, true);
    let out = room.apply_policy_change(&oracle);
    assert_eq!(stanzas(&out).len(), 2);
    let out = feed_with(&mut room, &groupchat(ALICE, "hi"), &oracle);
    assert!(error_of(&out).is_none());
}

#[test]
fn subject_changes() {
    let mut room = room3();
    let out = feed(
        &mut room,
        &format!("<message from='{ALICE}' to='{ROOM}' type='groupchat'><subject>Cats</subject></message>"),
    );
    assert_eq!(stanzas(&out).len(), 3);
    assert!(stanzas(&out).iter().all(|e| from(e) == occ("alice") && !e.has_child("stanza-id", ns::SID)));
    assert_eq!(persists(&out), 1);
    assert!(archives(&out).is_empty());
    assert_eq!(room.subject(), "Cats");
    // Joiners get it from the setter.
    let out = join(&mut room, CAROL, "carol");
    let last = *stanzas(&out).last().unwrap_or_else(|| panic!("empty"));
    assert_eq!(from(last), occ("alice"));
    assert_eq!(last.get_child("subject", NS_CLIENT).map(Element::text).as_deref(), Some("Cats"));
    // Participants may not when the room says so; moderators still may.
    let mut room = room_with(RoomConfig { change_subject: false, ..RoomConfig::default() });
    join(&mut room, ALICE, "alice");
    let subject =
        |from: &str| format!("<message from='{from}' to='{ROOM}' type='groupchat'><subject>Dogs</subject></message>");
    assert_eq!(error_of(&feed(&mut room, &subject(ALICE))).as_deref(), Some("forbidden"));
    assert!(error_of(&feed(&mut room, &subject(OWNER))).is_none());
    assert_eq!(room.subject(), "Dogs");
}

fn retract(from: &str, id: &str) -> String {
    format!(
        "<message from='{from}' to='{ROOM}' type='groupchat'><retract xmlns='urn:xmpp:message-retract:1' id='{id}'/>\
         <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/><body>retracted</body></message>"
    )
}

#[test]
fn retraction_by_author_or_moderator() {
    let mut room = room3();
    let out = feed(&mut room, &groupchat(ALICE, "oops"));
    let id = archives(&out)[0].stanza_id.clone();
    let out = feed(&mut room, &groupchat(BOB, "fine"));
    let bob_id = archives(&out)[0].stanza_id.clone();
    assert_eq!(room.history().count(), 2);
    // Someone else may not retract alice's message.
    let out = feed(&mut room, &retract(BOB, &id));
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    assert_eq!(room.history().count(), 2);
    // The author may: reflected to all, archived, and gone from the history.
    let out = feed(&mut room, &retract(ALICE, &id));
    assert_eq!(stanzas(&out).len(), 3);
    assert!(stanzas(&out).iter().all(|e| e.has_child("retract", ns::RETRACT)));
    assert_eq!(archives(&out).len(), 1);
    assert!(archives(&out)[0].message.has_child("retract", ns::RETRACT));
    assert!(room.history().all(|e| e.stanza_id != id));
    assert_eq!(room.history().count(), 1);
    // A moderator may retract anyone's.
    let out = feed(&mut room, &retract(OWNER, &bob_id));
    assert!(error_of(&out).is_none());
    assert_eq!(room.history().count(), 0);
    // Joiners no longer see retracted messages.
    let out = join(&mut room, CAROL, "carol");
    assert!(for_jid(&out, CAROL).iter().all(|e| !e.has_child("delay", ns::DELAY)));
}

#[test]
fn private_messages() {
    let mut room = room3();
    let out = feed(
        &mut room,
        &format!("<message from='{ALICE}' to='{ROOM}/bob' type='chat' id='p1'><body>psst</body></message>"),
    );
    let s = stanzas(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(to(s[0]), BOB);
    assert_eq!(from(s[0]), occ("alice"));
    assert_eq!(s[0].attr("id"), Some("p1"));
    assert!(s[0].has_child("x", ns::MUC_USER));
    assert!(archives(&out).is_empty());
    // Unknown nickname.
    let out =
        feed(&mut room, &format!("<message from='{ALICE}' to='{ROOM}/nobody' type='chat'><body>?</body></message>"));
    assert_eq!(error_of(&out).as_deref(), Some("item-not-found"));
    // Non-occupants may not.
    let out =
        feed(&mut room, &format!("<message from='{CAROL}' to='{ROOM}/bob' type='chat'><body>hi</body></message>"));
    assert_eq!(error_of(&out).as_deref(), Some("not-acceptable"));
}

fn invite(from: &str, to_jid: &str) -> String {
    format!(
        "<message from='{from}' to='{ROOM}' id='i1'><x xmlns='http://jabber.org/protocol/muc#user'>\
         <invite to='{to_jid}'><reason>join us</reason></invite></x></message>"
    )
}

#[test]
fn mediated_invitations() {
    let mut room = room3();
    // Invitations are off by default for participants.
    assert_eq!(error_of(&feed(&mut room, &invite(ALICE, "carol@example.org"))).as_deref(), Some("forbidden"));
    // Owners always may.
    let out = feed(&mut room, &invite(OWNER, "carol@example.org"));
    let s = stanzas(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(to(s[0]), "carol@example.org");
    assert_eq!(from(s[0]), ROOM);
    let inv = muc_x(s[0]).get_child("invite", ns::MUC_USER).unwrap_or_else(|| panic!("no invite"));
    assert_eq!(inv.attr("from"), Some("owner@example.org"));
    assert_eq!(inv.get_child("reason", ns::MUC_USER).map(Element::text).as_deref(), Some("join us"));
    assert_eq!(persists(&out), 0, "open room: no membership change");
    // Non-occupants may not.
    assert_eq!(error_of(&feed(&mut room, &invite(CAROL, "dave@example.org"))).as_deref(), Some("not-acceptable"));

    // allow_invites lets participants invite; password-protected rooms pass the password.
    let mut room = room_with(RoomConfig { allow_invites: true, password: Some("pw".into()), ..RoomConfig::default() });
    feed(&mut room, &join_xml(ALICE, "alice", "<password>pw</password>"));
    let out = feed(&mut room, &invite(ALICE, "carol@example.org"));
    let s = stanzas(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(muc_x(s[0]).get_child("password", ns::MUC_USER).map(Element::text).as_deref(), Some("pw"));

    // An admin's invitation to a members-only room makes the invitee a member.
    let mut room = room_with(RoomConfig { members_only: true, ..RoomConfig::default() });
    assert_eq!(error_of(&join(&mut room, CAROL, "carol")).as_deref(), Some("registration-required"));
    let out = feed(&mut room, &invite(OWNER, "carol@example.org"));
    assert_eq!(persists(&out), 1);
    assert!(matches!(out.last(), Some(Outbound::Persist)));
    assert_eq!(room.affiliation("carol@example.org"), Affiliation::Member);
    assert!(error_of(&join(&mut room, CAROL, "carol")).is_none());
}

#[test]
fn declines_are_relayed() {
    let mut room = new_room();
    let out = feed(
        &mut room,
        &format!(
            "<message from='{CAROL}' to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <decline to='owner@example.org'><reason>busy</reason></decline></x></message>"
        ),
    );
    let s = stanzas(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(to(s[0]), "owner@example.org");
    let d = muc_x(s[0]).get_child("decline", ns::MUC_USER).unwrap_or_else(|| panic!("no decline"));
    assert_eq!(d.attr("from"), Some("carol@example.org"));
}

#[test]
fn unverifiable_retractions_need_a_moderator() {
    let mut room = room3();
    // Not in the in-memory history (too old, or never seen): the author can't be checked.
    let out = feed(&mut room, &retract(ALICE, "ancient"));
    assert_eq!(error_of(&out).as_deref(), Some("forbidden"));
    assert!(archives(&out).is_empty());
    let out = feed(&mut room, &retract(OWNER, "ancient"));
    assert!(error_of(&out).is_none());
    assert_eq!(archives(&out).len(), 1);
    // History restored from the archive carries bare JIDs; authorship still matches.
    let out = feed(&mut room, &groupchat(ALICE, "again"));
    let mut entry = archives(&out)[0].clone();
    entry.from_real = "alice@example.org".into();
    let id = entry.stanza_id.clone();
    room.set_history(vec![entry]);
    assert!(error_of(&feed(&mut room, &retract(ALICE, &id))).is_none());
}
