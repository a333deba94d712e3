//! muc#owner (configuration, destruction), service discovery, pings, snapshots,
//! policy changes.

use super::*;
use crate::{MucError, Whois};

fn field<'a>(form: &'a Element, var: &str) -> Option<&'a Element> {
    form.children().find(|f| f.is("field", ns::DATA_FORMS) && f.attr("var") == Some(var))
}

fn value(form: &Element, var: &str) -> Option<String> {
    field(form, var).and_then(|f| f.get_child("value", ns::DATA_FORMS)).map(Element::text)
}

fn submit(fields: &[(&str, &str)]) -> String {
    let mut x = String::from(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>",
    );
    for (var, v) in fields {
        x.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    x.push_str("</x>");
    x
}

#[test]
fn config_form_get() {
    let mut room = room_with(RoomConfig { name: "Lobby".into(), max_users: 0, ..RoomConfig::default() });
    let out = feed(&mut room, &owner_iq(OWNER, "g", "get", ""));
    assert!(is_result(&out, "g"));
    let form = stanzas(&out)[0]
        .get_child("query", ns::MUC_OWNER)
        .and_then(|q| q.get_child("x", ns::DATA_FORMS))
        .unwrap_or_else(|| panic!("no form"));
    assert_eq!(form.attr("type"), Some("form"));
    assert_eq!(value(form, "FORM_TYPE").as_deref(), Some(ns::MUC_ROOMCONFIG));
    assert_eq!(value(form, "muc#roomconfig_roomname").as_deref(), Some("Lobby"));
    assert_eq!(value(form, "muc#roomconfig_persistentroom").as_deref(), Some("0"));
    assert_eq!(value(form, "muc#roomconfig_publicroom").as_deref(), Some("1"));
    assert_eq!(value(form, "muc#roomconfig_whois").as_deref(), Some("moderators"));
    assert_eq!(value(form, "muc#roomconfig_maxusers").as_deref(), Some("none"));
    assert_eq!(value(form, "muc#roomconfig_enablelogging").as_deref(), Some("1"));
    assert_eq!(value(form, "muc#roomconfig_historylength").as_deref(), Some("50"));
    for var in [
        "muc#roomconfig_roomdesc",
        "muc#roomconfig_membersonly",
        "muc#roomconfig_moderatedroom",
        "muc#roomconfig_passwordprotectedroom",
        "muc#roomconfig_roomsecret",
        "muc#roomconfig_allowinvites",
        "muc#roomconfig_changesubject",
    ] {
        assert!(field(form, var).is_some(), "{var}");
    }
    // Non-owners are refused.
    join(&mut room, ALICE, "alice");
    assert_eq!(error_of(&feed(&mut room, &owner_iq(ALICE, "g2", "get", ""))).as_deref(), Some("forbidden"));
    assert_eq!(error_of(&feed(&mut room, &owner_iq(ALICE, "s2", "set", &submit(&[])))).as_deref(), Some("forbidden"));
}

#[test]
fn config_form_submit() {
    let mut room = room3();
    let out = feed(
        &mut room,
        &owner_iq(
            OWNER,
            "s",
            "set",
            &submit(&[
                ("muc#roomconfig_roomname", "Cats"),
                ("muc#roomconfig_roomdesc", "All about cats"),
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_moderatedroom", "true"),
                ("muc#roomconfig_whois", "anyone"),
                ("muc#roomconfig_maxusers", "30"),
                ("muc#roomconfig_passwordprotectedroom", "1"),
                ("muc#roomconfig_roomsecret", "meow"),
                ("muc#roomconfig_publicroom", "0"),
                ("muc#roomconfig_allowinvites", "1"),
                ("muc#roomconfig_changesubject", "0"),
                ("muc#roomconfig_enablelogging", "0"),
                ("muc#roomconfig_historylength", "10"),
                ("muc#roomconfig_unknown", "whatever"),
            ]),
        ),
    );
    let expected = RoomConfig {
        name: "Cats".into(),
        description: "All about cats".into(),
        persistent: true,
        members_only: false,
        moderated: true,
        whois: Whois::Anyone,
        max_users: 30,
        password: Some("meow".into()),
        public: false,
        allow_invites: true,
        change_subject: false,
        history_max: 10,
        logged: false,
    };
    assert_eq!(room.config(), &expected);
    // Every occupant hears of it: 104, logging off (171), non-anonymous (172).
    let notices: Vec<_> = stanzas(&out).into_iter().filter(|e| e.name() == "message").collect();
    assert_eq!(notices.len(), 3);
    for n in &notices {
        assert_eq!(from(n), ROOM);
        assert_eq!(n.attr("type"), Some("groupchat"));
        assert_eq!(statuses(n), vec![104, 171, 172]);
    }
    assert!(is_result(&out, "s"));
    assert!(matches!(out.last(), Some(Outbound::Persist)));
    // Password protection without a password is refused; the config is unchanged.
    let mut room = new_room();
    let out = feed(&mut room, &owner_iq(OWNER, "p", "set", &submit(&[("muc#roomconfig_passwordprotectedroom", "1")])));
    assert_eq!(error_of(&out).as_deref(), Some("not-acceptable"));
    let out = feed(&mut room, &owner_iq(OWNER, "b", "set", &submit(&[("muc#roomconfig_maxusers", "many")])));
    assert_eq!(error_of(&out).as_deref(), Some("not-acceptable"));
    assert_eq!(room.config(), &RoomConfig::default());
    // Wrong FORM_TYPE.
    let out = feed(
        &mut room,
        &owner_iq(
            OWNER,
            "f",
            "set",
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x>",
        ),
    );
    assert_eq!(error_of(&out).as_deref(), Some("bad-request"));
}

#[test]
fn configuring_members_only_removes_non_members() {
    let mut room = room3();
    feed(&mut room, &admin_iq(OWNER, "m", "set", "<item affiliation='member' jid='alice@example.org'/>"));
    let out = feed(&mut room, &owner_iq(OWNER, "s", "set", &submit(&[("muc#roomconfig_membersonly", "1")])));
    assert_eq!(
        statuses(for_jid(&out, BOB).last().copied().unwrap_or_else(|| panic!("nothing for bob"))),
        vec![110, 322]
    );
    assert_eq!(room.occupant_count(), 2);
    assert_eq!(room.nick_of(BOB), None);
}

#[test]
fn configuration_unlocks_created_room() {
    let mut room = Room::new(ROOM, RoomConfig::default(), Some("owner@example.org"), false);
    join(&mut room, OWNER, "Owner");
    let out = feed(
        &mut room,
        &owner_iq(
            OWNER,
            "s",
            "set",
            &submit(&[("muc#roomconfig_roomname", "New"), ("muc#roomconfig_persistentroom", "1")]),
        ),
    );
    assert!(is_result(&out, "s"));
    // No 104 notification for the initial configuration.
    assert!(stanzas(&out).iter().all(|e| e.name() == "iq"));
    assert!(!room.is_locked());
    assert!(room.config().persistent);
    assert!(error_of(&join(&mut room, ALICE, "alice")).is_none());
}

#[test]
fn cancelling_initial_configuration_destroys_the_room() {
    let mut room = Room::new(ROOM, RoomConfig::default(), Some("owner@example.org"), false);
    join(&mut room, OWNER, "Owner");
    let out = feed(&mut room, &owner_iq(OWNER, "c", "set", "<x xmlns='jabber:x:data' type='cancel'/>"));
    assert!(is_result(&out, "c"));
    assert!(matches!(out.last(), Some(Outbound::Destroyed)));
    assert!(room.is_destroyed());
    // Cancelling on a configured room changes nothing.
    let mut room = new_room();
    let out = feed(&mut room, &owner_iq(OWNER, "c", "set", "<x xmlns='jabber:x:data' type='cancel'/>"));
    assert_eq!(out.len(), 1);
    assert!(is_result(&out, "c"));
}

#[test]
fn destroy_by_owner() {
    let mut room = room3();
    assert_eq!(
        error_of(&feed(&mut room, &owner_iq(ALICE, "d", "set", "<destroy><reason>no</reason></destroy>"))).as_deref(),
        Some("forbidden")
    );
    let out = feed(
        &mut room,
        &owner_iq(OWNER, "d", "set", "<destroy jid='new@muc.example.org'><reason>Moved</reason></destroy>"),
    );
    let s = stanzas(&out);
    assert_eq!(s.len(), 4);
    for p in &s[..3] {
        assert_eq!(p.attr("type"), Some("unavailable"));
        // Each occupant gets only its own presence.
        assert_eq!(p.attr("from").map(|f| f.rsplit('/').next()), Some(room_nick_for(to(p))));
        assert_eq!(item(p).attr("affiliation"), Some("none"));
        assert_eq!(item(p).attr("role"), Some("none"));
        let d = muc_x(p).get_child("destroy", ns::MUC_USER).unwrap_or_else(|| panic!("no destroy"));
        assert_eq!(d.attr("jid"), Some("new@muc.example.org"));
        assert_eq!(d.get_child("reason", ns::MUC_USER).map(Element::text).as_deref(), Some("Moved"));
    }
    assert!(is_result(&out, "d"));
    assert!(matches!(out.last(), Some(Outbound::Destroyed)));
    assert!(room.is_empty());
    // The room is gone.
    let out = join(&mut room, ALICE, "alice");
    assert_eq!(error_of(&out).as_deref(), Some("item-not-found"));
    assert!(room.destroy(None, None).is_empty());
}

fn room_nick_for(full: &str) -> Option<&'static str> {
    match full {
        OWNER => Some("Owner"),
        ALICE => Some("alice"),
        BOB => Some("bob"),
        _ => None,
    }
}

#[test]
fn destroy_api_and_channel_refusal() {
    let mut room = room3();
    let out = room.destroy(Some("bye"), None);
    assert_eq!(stanzas(&out).len(), 3);
    assert!(stanzas(&out).iter().all(|p| statuses(p) == vec![110]));
    assert_eq!(out.last(), Some(&Outbound::Destroyed));
    // Channels are deleted through the REST API.
    let oracle = ChannelOracle::default().with("owner@example.org", Some("owner"), true, true);
    let mut room = Room::new(ROOM, RoomConfig::default(), None, true);
    join_with(&mut room, OWNER, "Owner", &oracle);
    let out = feed_with(&mut room, &owner_iq(OWNER, "d", "set", "<destroy/>"), &oracle);
    assert_eq!(error_of(&out).as_deref(), Some("not-allowed"));
    assert!(!room.is_destroyed());
}

#[test]
fn disco_info_and_items() {
    let mut room = room3();
    feed(
        &mut room,
        &format!("<message from='{OWNER}' to='{ROOM}' type='groupchat'><subject>Topic</subject></message>"),
    );
    let out = feed(
        &mut room,
        &format!("<iq from='{CAROL}' to='{ROOM}' id='i' type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    );
    assert!(is_result(&out, "i"));
    let q = stanzas(&out)[0].get_child("query", ns::DISCO_INFO).unwrap_or_else(|| panic!("no query"));
    let identity = q.get_child("identity", ns::DISCO_INFO).unwrap_or_else(|| panic!("no identity"));
    assert_eq!(identity.attr("category"), Some("conference"));
    assert_eq!(identity.attr("type"), Some("text"));
    assert_eq!(identity.attr("name"), Some("room"));
    let features: Vec<&str> =
        q.children().filter(|c| c.is("feature", ns::DISCO_INFO)).filter_map(|f| f.attr("var")).collect();
    for f in [
        ns::MUC,
        "muc_temporary",
        "muc_open",
        "muc_unmoderated",
        "muc_unsecured",
        "muc_public",
        "muc_semianonymous",
        ns::MAM,
        ns::SID,
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    let form = q.get_child("x", ns::DATA_FORMS).unwrap_or_else(|| panic!("no form"));
    assert_eq!(value(form, "FORM_TYPE").as_deref(), Some(ns::MUC_ROOMINFO));
    assert_eq!(value(form, "muc#roominfo_occupants").as_deref(), Some("3"));
    assert_eq!(value(form, "muc#roominfo_subject").as_deref(), Some("Topic"));

    let items = |room: &mut Room| {
        let out = feed(
            room,
            &format!(
                "<iq from='{CAROL}' to='{ROOM}' id='it' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
            ),
        );
        let q = stanzas(&out)[0].get_child("query", ns::DISCO_ITEMS).cloned().unwrap_or_else(|| panic!("no query"));
        q.children().filter_map(|i| i.attr("jid").map(str::to_owned)).collect::<Vec<_>>()
    };
    assert!(items(&mut room).is_empty(), "semi-anonymous rooms hide their occupants");
    let mut open = room_with(RoomConfig {
        whois: Whois::Anyone,
        persistent: true,
        members_only: true,
        password: Some("x".into()),
        ..RoomConfig::default()
    });
    assert_eq!(items(&mut open), vec![occ("Owner")]);
    let out = feed(
        &mut open,
        &format!("<iq from='{CAROL}' to='{ROOM}' id='i' type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
    );
    let q = stanzas(&out)[0].get_child("query", ns::DISCO_INFO).unwrap_or_else(|| panic!("no query"));
    let features: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
    for f in ["muc_persistent", "muc_membersonly", "muc_passwordprotected", "muc_nonanonymous"] {
        assert!(features.contains(&f), "{f}");
    }
}

#[test]
fn pings_and_unknown_iqs() {
    let mut room = room3();
    let ping = |from: &str, to: &str| {
        format!("<iq from='{from}' to='{to}' id='p' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
    };
    // XEP-0410 self-ping.
    assert!(is_result(&feed(&mut room, &ping(ALICE, &occ("alice"))), "p"));
    assert_eq!(error_of(&feed(&mut room, &ping(CAROL, &occ("carol")))).as_deref(), Some("not-acceptable"));
    assert_eq!(error_of(&feed(&mut room, &ping(ALICE, &occ("nobody")))).as_deref(), Some("item-not-found"));
    assert!(is_result(&feed(&mut room, &ping(CAROL, ROOM)), "p"));
    let out =
        feed(&mut room, &format!("<iq from='{ALICE}' to='{ROOM}' id='v' type='get'><vCard xmlns='vcard-temp'/></iq>"));
    assert_eq!(error_of(&out).as_deref(), Some("service-unavailable"));
    // Results and errors are never answered.
    assert!(feed(&mut room, &format!("<iq from='{ALICE}' to='{ROOM}' id='r' type='result'/>")).is_empty());
}

#[test]
fn snapshot_round_trip() {
    let mut room = room_with(RoomConfig {
        name: "Snap".into(),
        persistent: true,
        password: Some("pw".into()),
        ..RoomConfig::default()
    });
    feed(&mut room, &admin_iq(OWNER, "a", "set", "<item affiliation='admin' jid='alice@example.org'/>"));
    feed(
        &mut room,
        &admin_iq(OWNER, "b", "set", "<item affiliation='outcast' jid='bob@example.org'><reason>spam</reason></item>"),
    );
    feed(
        &mut room,
        &format!("<message from='{OWNER}' to='{ROOM}' type='groupchat'><subject>Hello</subject></message>"),
    );
    let snap = room.snapshot();
    let restored = Room::restore(ROOM, &snap).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(restored.jid(), ROOM);
    assert_eq!(restored.config(), room.config());
    assert_eq!(restored.subject(), "Hello");
    assert_eq!(restored.affiliation("owner@example.org"), Affiliation::Owner);
    assert_eq!(restored.affiliation("alice@example.org"), Affiliation::Admin);
    assert_eq!(restored.affiliation("bob@example.org"), Affiliation::Outcast);
    assert!(restored.is_empty());
    assert!(!restored.is_locked());
    assert_eq!(restored.snapshot(), snap);
    // The outcast reason survived.
    let mut restored = restored;
    join(&mut restored, OWNER, "Owner");
    let out = feed(&mut restored, &admin_iq(OWNER, "l", "get", "<item affiliation='outcast'/>"));
    assert!(format!("{}", stanzas(&out)[0]).contains("spam"));

    assert!(matches!(Room::restore(ROOM, "{"), Err(MucError::Snapshot(_))));
    assert!(matches!(
        Room::restore(ROOM, &snap.replace("\"version\":1", "\"version\":9")),
        Err(MucError::SnapshotVersion(9))
    ));
    assert!(matches!(Room::restore("not a jid@", &snap), Err(MucError::InvalidJid(_))));
    // Older snapshots without newer config fields still load.
    let minimal = r#"{"version":1,"config":{"name":"Old"}}"#;
    let old = Room::restore(ROOM, minimal).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(old.config().name, "Old");
    assert!(old.config().logged);
}

#[test]
fn policy_change_removes_and_updates() {
    let oracle = ChannelOracle::default()
        .with("owner@example.org", Some("owner"), true, true)
        .with("alice@example.org", Some("member"), true, true)
        .with("bob@example.org", Some("member"), true, true);
    let mut room = Room::new(ROOM, RoomConfig { persistent: true, ..RoomConfig::default() }, None, true);
    for (full, nick) in [(OWNER, "Owner"), (ALICE, "alice"), (BOB, "bob")] {
        join_with(&mut room, full, nick, &oracle);
    }
    // Nothing changed: nothing happens.
    assert!(room.apply_policy_change(&oracle).is_empty());
    // Bob loses access, alice becomes admin.
    let oracle =
        oracle.with("bob@example.org", None, false, false).with("alice@example.org", Some("admin"), true, true);
    let out = room.apply_policy_change(&oracle);
    let to_bob = for_jid(&out, BOB);
    assert_eq!(to_bob.len(), 1);
    assert_eq!(to_bob[0].attr("type"), Some("unavailable"));
    assert_eq!(statuses(to_bob[0]), vec![110, 321]);
    let bob_gone_for_owner =
        for_jid(&out, OWNER).into_iter().find(|e| from(e) == occ("bob")).unwrap_or_else(|| panic!());
    assert_eq!(statuses(bob_gone_for_owner), vec![321]);
    let alice_for_owner =
        for_jid(&out, OWNER).into_iter().find(|e| from(e) == occ("alice")).unwrap_or_else(|| panic!());
    assert_eq!(item(alice_for_owner).attr("affiliation"), Some("admin"));
    assert_eq!(item(alice_for_owner).attr("role"), Some("moderator"));
    assert_eq!(room.occupant_count(), 2);
    // Write access revoked: participant → visitor.
    let oracle = oracle.with("alice@example.org", Some("member"), true, false);
    let out = room.apply_policy_change(&oracle);
    let alice_for_owner =
        for_jid(&out, OWNER).into_iter().find(|e| from(e) == occ("alice")).unwrap_or_else(|| panic!());
    assert_eq!(item(alice_for_owner).attr("role"), Some("visitor"));
}

#[test]
fn archive_access() {
    let room = room_with(RoomConfig { members_only: true, ..RoomConfig::default() });
    assert!(room.may_read_archive("owner@example.org", &StandardOracle));
    assert!(!room.may_read_archive("alice@example.org", &StandardOracle));
    let oracle = ChannelOracle::default().with("alice@example.org", Some("member"), true, false);
    assert!(room.may_read_archive("alice@example.org", &oracle));
    assert!(!room.may_read_archive("bob@example.org", &oracle));
}

#[test]
fn channel_settings_rename_and_turn_members_into_visitors() {
    let text = ChannelOracle::default().with("owner@example.org", Some("owner"), true, true).with(
        "alice@example.org",
        Some("member"),
        true,
        true,
    );
    let mut room = Room::new(ROOM, RoomConfig { name: "general".into(), ..RoomConfig::default() }, None, true);
    join_with(&mut room, OWNER, "Owner", &text);
    join_with(&mut room, ALICE, "alice", &text);
    let same = crate::ChannelSettings { name: "general".into(), description: String::new(), moderated: false };
    assert!(room.apply_channel_settings(&same, &text).is_empty(), "nothing changed, nothing said");

    // The channel becomes an announcement channel: alice may no longer post.
    let announcement = text.clone().with("alice@example.org", Some("member"), true, false);
    let settings = crate::ChannelSettings { name: "news".into(), description: "Read me".into(), moderated: true };
    let out = room.apply_channel_settings(&settings, &announcement);
    assert_eq!(room.config().name, "news");
    assert_eq!(room.config().description, "Read me");
    assert!(room.config().moderated);
    assert_eq!(persists(&out), 1);
    let notices: Vec<_> = stanzas(&out).into_iter().filter(|e| e.name() == "message").collect();
    assert_eq!(notices.len(), 2, "both occupants hear of the change: {out:?}");
    assert!(notices.iter().all(|m| statuses(m) == [104]));
    let alice_now = stanzas(&out)
        .into_iter()
        .find(|e| e.name() == "presence" && from(e) == occ("alice") && to(e) == OWNER)
        .unwrap_or_else(|| panic!("no role change broadcast: {out:?}"));
    assert_eq!(item(alice_now).attr("role"), Some("visitor"));
    assert_eq!(error_of(&feed_with(&mut room, &groupchat(ALICE, "hi"), &announcement)).as_deref(), Some("forbidden"));
    assert!(error_of(&feed_with(&mut room, &groupchat(OWNER, "hi"), &announcement)).is_none());

    // Back to a text channel: alice gets her voice back.
    let out = room.apply_channel_settings(&same, &text);
    assert!(stanzas(&out).iter().any(|e| e.name() == "presence" && item(e).attr("role") == Some("participant")));
    assert!(error_of(&feed_with(&mut room, &groupchat(ALICE, "hi"), &text)).is_none());
}
