#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::schema::waddle_definition;
use crate::*;

fn t(text: &str) -> Tuple {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn o(text: &str) -> ObjectRef {
    text.parse().unwrap()
}

fn authz(tuples: &[&str]) -> Authz {
    let mut a = Authz::new(Schema::waddle(), DEFAULT_MAX_DEPTH);
    a.load(tuples.iter().map(|s| t(s))).unwrap();
    a
}

fn can(a: &Authz, object: &str, permission: &str, user: &str) -> bool {
    a.check(&o(object), permission, user).unwrap_or_else(|e| panic!("{object} {permission} {user}: {e}"))
}

/// A waddle w1 owned by `owner` with admin, moderator and member, channels c1 and c2.
fn product() -> Authz {
    authz(&[
        "waddle:w1#owner@user:owner",
        "waddle:w1#member@user:owner",
        "waddle:w1#admin@user:admin",
        "waddle:w1#member@user:admin",
        "waddle:w1#moderator@user:mod",
        "waddle:w1#member@user:mod",
        "waddle:w1#member@user:member",
        "channel:c1#parent@waddle:w1",
        "channel:c2#parent@waddle:w1",
        "waddle:w2#owner@user:stranger",
        "channel:x1#parent@waddle:w2",
    ])
}

const WADDLE_PERMS: [&str; 6] = ["administer", "moderate", "view", "delete", "manage_members", "manage_channels"];
const CHANNEL_PERMS: [&str; 6] = ["manage", "moderate", "send_message", "announce", "view", "delete"];

#[test]
fn product_schema_is_valid() {
    waddle_definition().build().unwrap();
    let s = Schema::waddle();
    for kind in ["waddle", "channel", "message", "dm"] {
        assert!(s.has_type(kind), "{kind}");
    }
    assert_eq!(s.relations("waddle"), ["owner", "admin", "moderator", "member"]);
    assert_eq!(s.permissions("waddle"), WADDLE_PERMS);
    assert_eq!(s.relations("channel"), ["parent", "manager", "moderator", "writer", "viewer"]);
    assert_eq!(s.permissions("channel"), CHANNEL_PERMS);
    assert!(s.is_relation("channel", "parent"));
    assert!(!s.is_relation("channel", "view"));
    assert!(s.has_permission("channel", "view") && s.has_permission("channel", "parent"));
    assert!(!s.has_type("user"));
}

#[test]
fn waddle_roles() {
    let a = product();
    let expect = |user: &str, allowed: &[&str]| {
        for perm in WADDLE_PERMS {
            assert_eq!(can(&a, "waddle:w1", perm, user), allowed.contains(&perm), "{user} {perm}");
        }
    };
    expect("owner", &WADDLE_PERMS);
    expect("admin", &["administer", "moderate", "view", "manage_members", "manage_channels"]);
    expect("mod", &["moderate", "view"]);
    expect("member", &["view"]);
    expect("stranger", &[]);
    expect("nobody", &[]);
    // Relations can be checked directly too.
    assert!(can(&a, "waddle:w1", "owner", "owner"));
    assert!(!can(&a, "waddle:w1", "owner", "admin"));
}

#[test]
fn channel_permissions_through_the_parent() {
    let a = product();
    for perm in CHANNEL_PERMS {
        // The owner (and an admin) can do everything on every channel of their waddle.
        assert!(can(&a, "channel:c1", perm, "owner"), "owner {perm}");
        assert!(can(&a, "channel:c2", perm, "admin"), "admin {perm}");
        // Not on another waddle's channel.
        assert!(!can(&a, "channel:x1", perm, "owner"), "owner x1 {perm}");
        // A non-member can do nothing.
        assert!(!can(&a, "channel:c1", perm, "stranger"), "stranger {perm}");
        assert!(!can(&a, "channel:c1", perm, "nobody"), "nobody {perm}");
    }
    // A plain member views and sends, nothing more.
    let member_perms =
        [("view", true), ("send_message", true), ("announce", false), ("moderate", false), ("manage", false)];
    for (perm, allowed) in member_perms {
        assert_eq!(can(&a, "channel:c1", perm, "member"), allowed, "member {perm}");
    }
    assert!(!can(&a, "channel:c1", "delete", "member"));
    // A waddle moderator moderates every channel but does not manage them.
    assert!(can(&a, "channel:c1", "moderate", "mod"));
    assert!(can(&a, "channel:c1", "send_message", "mod") && can(&a, "channel:c1", "announce", "mod"));
    assert!(!can(&a, "channel:c1", "manage", "mod"));
    assert!(!can(&a, "channel:c1", "delete", "mod"));
    // A channel without a parent grants nothing.
    assert!(!can(&a, "channel:orphan", "view", "owner"));
}

#[test]
fn channel_level_grants() {
    let mut a = product();
    a.write(t("channel:c1#viewer@user:guest")).unwrap();
    a.write(t("channel:c1#writer@user:poster")).unwrap();
    a.write(t("channel:c1#manager@user:keeper")).unwrap();
    a.write(t("channel:c1#moderator@user:cmod")).unwrap();

    assert!(can(&a, "channel:c1", "view", "guest"));
    assert!(!can(&a, "channel:c1", "send_message", "guest"));
    assert!(can(&a, "channel:c1", "send_message", "poster") && can(&a, "channel:c1", "view", "poster"));
    // An explicit writer may post announcements; a viewer may not.
    assert!(can(&a, "channel:c1", "announce", "poster") && !can(&a, "channel:c1", "announce", "guest"));
    assert!(!can(&a, "channel:c1", "moderate", "poster"));
    for perm in CHANNEL_PERMS {
        assert!(can(&a, "channel:c1", perm, "keeper"), "keeper {perm}");
    }
    assert!(can(&a, "channel:c1", "moderate", "cmod") && can(&a, "channel:c1", "send_message", "cmod"));
    assert!(!can(&a, "channel:c1", "manage", "cmod"));
    // Channel grants do not leak to the sibling channel or to the waddle.
    for user in ["guest", "poster", "keeper", "cmod"] {
        assert!(!can(&a, "channel:c2", "view", user), "{user}");
        assert!(!can(&a, "waddle:w1", "view", user), "{user}");
    }
}

#[test]
fn userset_grants() {
    let mut a = product();
    // Members of w2 may view channel c1 of w1, and members of w3 are members of w2.
    a.write(t("channel:c1#viewer@waddle:w2#member")).unwrap();
    a.write(t("waddle:w2#member@user:carol")).unwrap();
    a.write(t("waddle:w2#member@waddle:w3#member")).unwrap();
    a.write(t("waddle:w3#member@user:dave")).unwrap();
    assert!(can(&a, "channel:c1", "view", "carol"));
    assert!(!can(&a, "channel:c1", "send_message", "carol"));
    assert!(can(&a, "channel:c1", "view", "dave"));
    assert!(can(&a, "waddle:w2", "member", "dave") && can(&a, "waddle:w2", "view", "dave"));
    // w2's owner "stranger" is not a *member* of w2, so the userset does not include them.
    assert!(!can(&a, "channel:c1", "view", "stranger"));
    // Writers by userset.
    a.write(t("channel:x1#writer@waddle:w1#member")).unwrap();
    assert!(can(&a, "channel:x1", "send_message", "member"));
    assert!(!can(&a, "channel:x1", "moderate", "member"));
}

#[test]
fn messages_and_dms() {
    let a = authz(&[
        "waddle:w1#member@user:bob",
        "waddle:w1#moderator@user:mod",
        "channel:c1#parent@waddle:w1",
        "message:m1#channel@channel:c1",
        "message:m1#author@user:bob",
        "dm:d1#participant@user:bob",
        "dm:d1#participant@user:carol",
        "dm:d1#owner@user:olga",
    ]);
    assert!(can(&a, "message:m1", "delete", "bob") && can(&a, "message:m1", "edit", "bob"));
    assert!(can(&a, "message:m1", "delete", "mod") && !can(&a, "message:m1", "edit", "mod"));
    assert!(!can(&a, "message:m1", "delete", "carol"));
    assert!(can(&a, "dm:d1", "view", "carol") && can(&a, "dm:d1", "send", "carol"));
    assert!(can(&a, "dm:d1", "view", "olga") && !can(&a, "dm:d1", "send", "olga"));
    assert!(!can(&a, "dm:d1", "view", "mod"));
}

#[test]
fn revocation_is_immediate() {
    let mut a = product();
    assert!(can(&a, "channel:c1", "send_message", "member"));
    assert!(a.delete(&t("waddle:w1#member@user:member")));
    assert!(!can(&a, "channel:c1", "send_message", "member"));
    assert!(!can(&a, "waddle:w1", "view", "member"));
    assert!(!a.delete(&t("waddle:w1#member@user:member")));
    // Unlinking a channel from its waddle removes every inherited grant.
    assert!(a.delete(&t("channel:c1#parent@waddle:w1")));
    assert!(!can(&a, "channel:c1", "view", "owner"));
    assert!(can(&a, "channel:c2", "view", "owner"));
    // Re-adding works and is reported as new.
    assert!(a.write(t("waddle:w1#member@user:member")).unwrap());
    assert!(!a.write(t("waddle:w1#member@user:member")).unwrap());
    assert!(can(&a, "channel:c2", "view", "member"));
}

#[test]
fn cyclic_usersets_hit_the_depth_limit() {
    let mut a = authz(&[
        "waddle:w1#member@waddle:w2#member",
        "waddle:w2#member@waddle:w1#member",
        "channel:c1#parent@waddle:w1",
    ]);
    assert_eq!(a.check(&o("waddle:w1"), "member", "eve"), Err(AuthzError::DepthExceeded(DEFAULT_MAX_DEPTH)));
    assert_eq!(a.check(&o("channel:c1"), "view", "eve"), Err(AuthzError::DepthExceeded(DEFAULT_MAX_DEPTH)));
    // A user inside the cycle is still found: a true branch wins over a failing one.
    a.write(t("waddle:w2#member@user:eve")).unwrap();
    assert_eq!(a.check(&o("waddle:w1"), "member", "eve"), Ok(true));
    assert_eq!(a.check(&o("channel:c1"), "view", "eve"), Ok(true));
    // Self-reference.
    let a = authz(&["waddle:w9#member@waddle:w9#member"]);
    assert_eq!(a.check(&o("waddle:w9"), "view", "x"), Err(AuthzError::DepthExceeded(DEFAULT_MAX_DEPTH)));
    // Other objects are unaffected.
    assert_eq!(a.check(&o("waddle:w10"), "view", "x"), Ok(false));
}

#[test]
fn depth_limit_is_configurable() {
    let tuples = ["waddle:w1#member@waddle:w2#member", "waddle:w2#member@waddle:w3#member", "waddle:w3#member@user:u"];
    let mut deep = Authz::new(Schema::waddle(), DEFAULT_MAX_DEPTH);
    deep.load(tuples.iter().map(|s| t(s))).unwrap();
    assert_eq!(deep.check(&o("waddle:w1"), "member", "u"), Ok(true));
    let mut shallow = Authz::new(Schema::waddle(), 1);
    shallow.load(tuples.iter().map(|s| t(s))).unwrap();
    assert_eq!(shallow.check(&o("waddle:w1"), "member", "u"), Err(AuthzError::DepthExceeded(1)));
    assert_eq!(shallow.check(&o("waddle:w3"), "member", "u"), Ok(true));
}

#[test]
fn wide_cycles_are_bounded_by_the_step_budget() {
    // Every waddle's members include the members of every other: exponential without a budget.
    let mut a = Authz::new(Schema::waddle(), 64);
    for i in 0..6 {
        for j in 0..6 {
            if i != j {
                a.write(t(&format!("waddle:w{i}#member@waddle:w{j}#member"))).unwrap();
            }
        }
    }
    let started = std::time::Instant::now();
    assert_eq!(a.check(&o("waddle:w0"), "view", "nobody"), Err(AuthzError::DepthExceeded(64)));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn text_round_trips() {
    for text in [
        "waddle:w1#member@user:alice",
        "channel:c1#viewer@waddle:w1#member",
        "channel:abc-DEF_0.9#parent@waddle:w1",
        "message:m1#channel@channel:c1",
    ] {
        let tuple = t(text);
        assert_eq!(tuple.to_string(), text);
        assert_eq!(t(&tuple.to_string()), tuple);
    }
    assert_eq!(
        t("channel:c1#viewer@waddle:w1#member"),
        Tuple::new(o("channel:c1"), "viewer", Subject::userset(o("waddle:w1"), "member"))
    );
    assert_eq!("user:alice".parse::<Subject>().unwrap(), Subject::user("alice"));
    assert_eq!("waddle:w1".parse::<Subject>().unwrap(), Subject::Object(o("waddle:w1")));
    assert_eq!(Subject::userset(o("waddle:w1"), "member").to_string(), "waddle:w1#member");
    assert_eq!(o("waddle:w1"), ObjectRef::new("waddle", "w1"));
    assert_eq!(o("waddle:w1").to_string(), "waddle:w1");
    let long_id = "a".repeat(MAX_ID_LEN);
    assert_eq!(o(&format!("waddle:{long_id}")).id, long_id);

    for bad in [
        "",
        "waddle",
        "waddle:",
        ":w1",
        "Waddle:w1",
        "waddle:w 1",
        "waddle:w1:x",
        "waddle:w/1",
        "waddle:é",
        &format!("waddle:{}", "a".repeat(MAX_ID_LEN + 1)),
    ] {
        assert!(matches!(bad.parse::<ObjectRef>(), Err(AuthzError::Parse(_))), "{bad:?}");
    }
    for bad in ["user:alice#member", "user:", "waddle:w1#", "waddle:w1#Member", "waddle:w1#a#b"] {
        assert!(matches!(bad.parse::<Subject>(), Err(AuthzError::Parse(_))), "{bad:?}");
    }
    for bad in [
        "waddle:w1#member",
        "waddle:w1@user:alice",
        "waddle:w1#@user:alice",
        "waddle:w1#member@",
        "waddle:w1#member@user:a@user:b",
        "waddle:w1#member@user:alice#x",
        "waddle:w1#1member@user:alice",
    ] {
        assert!(matches!(bad.parse::<Tuple>(), Err(AuthzError::Parse(_))), "{bad:?}");
    }
}

#[test]
fn writes_are_validated_against_the_schema() {
    let mut a = authz(&[]);
    let err = |a: &mut Authz, text: &str| a.write(t(text)).unwrap_err();
    assert_eq!(err(&mut a, "folder:f1#owner@user:alice"), AuthzError::UnknownType("folder".into()));
    assert_eq!(
        err(&mut a, "waddle:w1#king@user:alice"),
        AuthzError::UnknownRelation { kind: "waddle".into(), relation: "king".into() }
    );
    // Computed permissions cannot be written.
    assert_eq!(
        err(&mut a, "waddle:w1#view@user:alice"),
        AuthzError::UnknownRelation { kind: "waddle".into(), relation: "view".into() }
    );
    assert_eq!(
        err(&mut a, "waddle:w1#owner@waddle:w2#member"),
        AuthzError::SubjectNotAllowed {
            kind: "waddle".into(),
            relation: "owner".into(),
            subject: "waddle:w2#member".into()
        }
    );
    assert!(matches!(err(&mut a, "channel:c1#parent@user:alice"), AuthzError::SubjectNotAllowed { .. }));
    assert!(matches!(err(&mut a, "channel:c1#parent@channel:c2"), AuthzError::SubjectNotAllowed { .. }));
    assert!(matches!(err(&mut a, "channel:c1#viewer@waddle:w1#view"), AuthzError::SubjectNotAllowed { .. }));
    assert!(matches!(err(&mut a, "channel:c1#viewer@waddle:w1"), AuthzError::SubjectNotAllowed { .. }));
    // Hand-built tuples are syntax-checked too.
    let bad = Tuple::new(ObjectRef::new("waddle", "w 1"), "member", Subject::user("alice"));
    assert!(matches!(a.write(bad), Err(AuthzError::Parse(_))));
    let bad = Tuple::new(o("waddle:w1"), "member", Subject::Object(o("user:alice")));
    assert!(matches!(a.write(bad), Err(AuthzError::Parse(_))));
    assert!(a.is_empty());
    // load stops at the first invalid tuple.
    assert!(a.load([t("waddle:w1#member@user:a"), t("waddle:w1#view@user:b"), t("waddle:w1#member@user:c")]).is_err());
    assert_eq!(a.len(), 1);
    // Checks of unknown names are errors, not denials.
    assert_eq!(a.check(&o("folder:f1"), "view", "a"), Err(AuthzError::UnknownType("folder".into())));
    assert_eq!(
        a.check(&o("waddle:w1"), "fly", "a"),
        Err(AuthzError::UnknownPermission { kind: "waddle".into(), permission: "fly".into() })
    );
    assert!(matches!(a.lookup_objects("waddle", "fly", "a"), Err(AuthzError::UnknownPermission { .. })));
    assert!(matches!(a.lookup_objects("folder", "view", "a"), Err(AuthzError::UnknownType(_))));
}

#[test]
fn schema_builder_validation() {
    let ok = Schema::builder()
        .relation("doc", "parent", &["folder"])
        .relation("doc", "reader", &["user", "group#member"])
        .permission("doc", "read", "reader | parent->read")
        .relation("folder", "reader", &["user"])
        .permission("folder", "read", "reader")
        .relation("group", "member", &["user"])
        .build()
        .unwrap();
    let mut a = Authz::new(ok, 8);
    a.load([t("doc:d1#parent@folder:f1"), t("folder:f1#reader@user:x"), t("doc:d1#reader@group:g#member")]).unwrap();
    a.write(t("group:g#member@user:y")).unwrap();
    assert!(a.check(&o("doc:d1"), "read", "x").unwrap() && a.check(&o("doc:d1"), "read", "y").unwrap());

    let b = || Schema::builder().relation("doc", "owner", &["user"]);
    assert!(matches!(b().relation("doc", "owner", &["user"]).build(), Err(AuthzError::Parse(_))));
    assert!(matches!(b().relation("Doc", "x", &["user"]).build(), Err(AuthzError::Parse(_))));
    assert!(matches!(b().relation("user", "x", &["user"]).build(), Err(AuthzError::Parse(_))));
    assert_eq!(b().relation("doc", "x", &["folder"]).build().unwrap_err(), AuthzError::UnknownType("folder".into()));
    assert_eq!(
        b().relation("doc", "x", &["doc#nope"]).build().unwrap_err(),
        AuthzError::UnknownPermission { kind: "doc".into(), permission: "nope".into() }
    );
    assert_eq!(
        b().permission("doc", "read", "owner | writer").build().unwrap_err(),
        AuthzError::UnknownPermission { kind: "doc".into(), permission: "writer".into() }
    );
    assert_eq!(
        b().permission("doc", "read", "parent->read").build().unwrap_err(),
        AuthzError::UnknownRelation { kind: "doc".into(), relation: "parent".into() }
    );
    // An arrow through a relation whose subjects are users only.
    assert!(matches!(b().permission("doc", "read", "owner->read").build(), Err(AuthzError::Parse(_))));
    // An arrow to a permission the target type lacks.
    assert_eq!(
        b().relation("doc", "parent", &["doc"]).permission("doc", "read", "parent->fly").build().unwrap_err(),
        AuthzError::UnknownPermission { kind: "doc".into(), permission: "fly".into() }
    );
    assert!(matches!(b().permission("doc", "read", "owner || x").build(), Err(AuthzError::Parse(_))));
}

#[test]
fn delete_object_removes_tuples_on_and_referencing_it() {
    let mut a = product();
    a.write(t("channel:x1#viewer@waddle:w1#member")).unwrap();
    a.write(t("waddle:w2#member@waddle:w1#member")).unwrap();
    let before = a.len();
    let removed = a.delete_object(&o("waddle:w1"));
    let mut expected: Vec<Tuple> = [
        "channel:c1#parent@waddle:w1",
        "channel:c2#parent@waddle:w1",
        "channel:x1#viewer@waddle:w1#member",
        "waddle:w1#owner@user:owner",
        "waddle:w1#admin@user:admin",
        "waddle:w1#moderator@user:mod",
        "waddle:w1#member@user:admin",
        "waddle:w1#member@user:member",
        "waddle:w1#member@user:mod",
        "waddle:w1#member@user:owner",
        "waddle:w2#member@waddle:w1#member",
    ]
    .iter()
    .map(|s| t(s))
    .collect();
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(a.len(), before - removed.len());
    assert!(a.list(&TupleFilter { object: Some(o("waddle:w1")), ..Default::default() }).is_empty());
    assert!(!can(&a, "channel:c1", "view", "owner"));
    assert!(can(&a, "channel:x1", "view", "stranger"));
    assert!(a.delete_object(&o("waddle:w1")).is_empty());
    assert_eq!(a.lookup_objects("waddle", "view", "owner").unwrap(), Vec::<String>::new());
}

#[test]
fn list_filters() {
    let a = product();
    let all = a.list(&TupleFilter::default());
    assert_eq!(all.len(), a.len());
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let members =
        a.list(&TupleFilter { object: Some(o("waddle:w1")), relation: Some("member".into()), ..Default::default() });
    let users: Vec<String> = members.iter().map(|t| t.subject.to_string()).collect();
    assert_eq!(users, ["user:admin", "user:member", "user:mod", "user:owner"]);
    let of_owner = a.list(&TupleFilter { subject: Some(Subject::user("owner")), ..Default::default() });
    assert_eq!(of_owner, [t("waddle:w1#member@user:owner"), t("waddle:w1#owner@user:owner")]);
    let children = a.list(&TupleFilter { subject: Some(Subject::Object(o("waddle:w1"))), ..Default::default() });
    assert_eq!(children, [t("channel:c1#parent@waddle:w1"), t("channel:c2#parent@waddle:w1")]);
    let one = a.list(&TupleFilter {
        object: Some(o("channel:c2")),
        relation: Some("parent".into()),
        subject: Some(Subject::Object(o("waddle:w1"))),
    });
    assert_eq!(one, [t("channel:c2#parent@waddle:w1")]);
    assert!(a.list(&TupleFilter { object: Some(o("waddle:none")), ..Default::default() }).is_empty());
}

#[test]
fn lookup_objects_follows_grants() {
    let mut a = product();
    assert_eq!(a.lookup_objects("waddle", "view", "member").unwrap(), ["w1"]);
    assert_eq!(a.lookup_objects("channel", "view", "member").unwrap(), ["c1", "c2"]);
    assert_eq!(a.lookup_objects("channel", "manage", "member").unwrap(), Vec::<String>::new());
    assert_eq!(a.lookup_objects("channel", "manage", "admin").unwrap(), ["c1", "c2"]);
    assert_eq!(a.lookup_objects("waddle", "view", "nobody").unwrap(), Vec::<String>::new());
    // Via a channel-level grant and via a userset.
    a.write(t("channel:x1#viewer@user:member")).unwrap();
    a.write(t("waddle:w3#member@waddle:w1#member")).unwrap();
    assert_eq!(a.lookup_objects("channel", "view", "member").unwrap(), ["c1", "c2", "x1"]);
    assert_eq!(a.lookup_objects("waddle", "view", "member").unwrap(), ["w1", "w3"]);
    assert_eq!(a.lookup_objects("waddle", "view", "stranger").unwrap(), ["w2"]);
    // Revocation is reflected at once.
    a.delete(&t("waddle:w1#member@user:member"));
    assert_eq!(a.lookup_objects("channel", "view", "member").unwrap(), ["x1"]);
    assert_eq!(a.lookup_objects("waddle", "view", "member").unwrap(), Vec::<String>::new());
    // Agrees with check() on every object, for every user.
    let a = product();
    for user in ["owner", "admin", "mod", "member", "stranger", "nobody"] {
        for (kind, ids) in [("waddle", &["w1", "w2"][..]), ("channel", &["c1", "c2", "x1"][..])] {
            let perms: &[&str] = if kind == "waddle" { &WADDLE_PERMS } else { &CHANNEL_PERMS };
            for perm in perms {
                let expected: Vec<String> = ids
                    .iter()
                    .filter(|id| can(&a, &format!("{kind}:{id}"), perm, user))
                    .map(|id| (*id).to_owned())
                    .collect();
                assert_eq!(a.lookup_objects(kind, perm, user).unwrap(), expected, "{user} {kind} {perm}");
            }
        }
    }
}

#[test]
fn many_members_check_fast() {
    let mut a = Authz::new(Schema::waddle(), DEFAULT_MAX_DEPTH);
    for w in 0..100 {
        a.write(t(&format!("waddle:w{w}#owner@user:o{w}"))).unwrap();
        for c in 0..10 {
            a.write(t(&format!("channel:c{w}x{c}#parent@waddle:w{w}"))).unwrap();
        }
        for m in 0..100 {
            a.write(t(&format!("waddle:w{w}#member@user:u{m}"))).unwrap();
        }
    }
    let started = std::time::Instant::now();
    for i in 0..10_000 {
        let w = i % 100;
        assert!(a.check(&o(&format!("channel:c{w}x3")), "send_message", &format!("u{}", i % 100)).unwrap());
        assert!(!a.check(&o(&format!("channel:c{w}x3")), "send_message", "outsider").unwrap());
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(a.lookup_objects("waddle", "view", "u7").unwrap().len(), 100);
}
