#![allow(clippy::unwrap_used, clippy::expect_used)]

use waddle_c2s::ns;
use waddle_xml::{Element, NS_CLIENT};

use super::*;

fn parse(xml: &str) -> Element {
    Element::from_bytes(xml.as_bytes(), NS_CLIENT).unwrap()
}

fn iq_with(query_inner: &str) -> Element {
    parse(&format!(
        "<iq type='set' id='q1' from='juliet@capulet.lit/balcony' to='juliet@capulet.lit'>\
         <query xmlns='urn:xmpp:mam:2' queryid='f27'>{query_inner}</query></iq>"
    ))
}

fn form(fields: &str) -> String {
    format!(
        "<x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>"
    )
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

fn row(id: &str, stamp: i64) -> ArchivedRow {
    ArchivedRow {
        stanza_id: id.into(),
        archive: "juliet@capulet.lit".into(),
        with_jid: "romeo@montague.lit".into(),
        from_nick: None,
        stamp_micros: stamp,
        payload: "<message from='romeo@montague.lit/orchard' to='juliet@capulet.lit' type='chat'>\
                  <body>Hail &amp; well met</body></message>"
            .into(),
        body: Some("Hail & well met".into()),
        retracted: false,
    }
}

#[test]
fn empty_query_gets_defaults() {
    let q = parse_query(&iq_with("")).unwrap();
    assert_eq!(q, MamQuery { query_id: Some("f27".into()), ..MamQuery::default() });
    assert_eq!(q.max, DEFAULT_MAX);
    assert!(!q.flip && q.before.is_none() && q.after.is_none() && q.ids.is_empty());
}

#[test]
fn parses_every_field() {
    let inner = format!(
        "{}<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>a1</after><before>b1</before></set>\
         <flip-page/>",
        form(
            &[
                field("with", " romeo@montague.lit "),
                field("start", "2010-06-07T00:00:00Z"),
                field("end", "2010-07-07T13:23:54.123456+02:00"),
                field("after-id", "x1"),
                field("before-id", "x9"),
                "<field var='ids'><value>i1</value><value>i2</value><value> </value></field>".into(),
                field("{urn:xmpp:fulltext:0}fulltext", "where art thou"),
            ]
            .concat()
        )
    );
    let q = parse_query(&iq_with(&inner)).unwrap();
    assert_eq!(q.query_id.as_deref(), Some("f27"));
    assert_eq!(q.with.as_deref(), Some("romeo@montague.lit"));
    assert_eq!(q.start, Some(1_275_868_800_000_000));
    assert_eq!(q.end, Some(1_278_509_034_123_456 - 2 * 3_600_000_000));
    assert_eq!(q.after_id.as_deref(), Some("x1"));
    assert_eq!(q.before_id.as_deref(), Some("x9"));
    assert_eq!(q.ids, vec!["i1".to_owned(), "i2".to_owned()]);
    assert_eq!(q.fulltext.as_deref(), Some("where art thou"));
    assert_eq!(q.max, 10);
    assert_eq!(q.after.as_deref(), Some("a1"));
    assert_eq!(q.before, Some(Some("b1".into())));
    assert!(q.flip);
}

#[test]
fn empty_before_means_last_page() {
    let q = parse_query(&iq_with("<set xmlns='http://jabber.org/protocol/rsm'><max>5</max><before/></set>")).unwrap();
    assert_eq!(q.before, Some(None));
    assert_eq!(q.max, 5);
}

#[test]
fn max_is_capped_and_zero_allowed() {
    let big = parse_query(&iq_with("<set xmlns='http://jabber.org/protocol/rsm'><max>100000</max></set>")).unwrap();
    assert_eq!(big.max, MAX_PAGE);
    let zero = parse_query(&iq_with("<set xmlns='http://jabber.org/protocol/rsm'><max>0</max></set>")).unwrap();
    assert_eq!(zero.max, 0);
}

#[test]
fn bad_dates_are_bad_requests() {
    for date in ["yesterday", "2010-06-07", "2010-06-07T00:00:00", "2010-13-07T00:00:00Z", "2010-06-07 00:00:00Z"] {
        let err = parse_query(&iq_with(&form(&field("start", date)))).unwrap_err();
        assert_eq!(err.condition(), "bad-request", "{date}");
        let err = parse_query(&iq_with(&form(&field("end", date)))).unwrap_err();
        assert!(matches!(err, MamError::BadRequest(_)), "{date}");
    }
}

#[test]
fn malformed_requests_are_rejected() {
    let cases = [
        // Not a set.
        "<iq type='get' id='1'><query xmlns='urn:xmpp:mam:2'/></iq>".to_owned(),
        // Wrong payload namespace.
        "<iq type='set' id='1'><query xmlns='urn:xmpp:mam:1'/></iq>".to_owned(),
        // Two payloads.
        "<iq type='set' id='1'><query xmlns='urn:xmpp:mam:2'/><query xmlns='urn:xmpp:mam:2'/></iq>".to_owned(),
    ];
    for xml in cases {
        assert_eq!(parse_query(&parse(&xml)).unwrap_err().condition(), "bad-request", "{xml}");
    }
    let inners = [
        "<set xmlns='http://jabber.org/protocol/rsm'><max>ten</max></set>".to_owned(),
        "<set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set>".to_owned(),
        "<set xmlns='http://jabber.org/protocol/rsm'><after/></set>".to_owned(),
        "<x xmlns='jabber:x:data' type='form'/>".to_owned(),
        format!("<x xmlns='jabber:x:data' type='submit'>{}</x>", field("FORM_TYPE", "urn:xmpp:mam:1")),
        form(&[field("with", "a@b"), field("with", "c@d")].concat()),
        form(&field("with", "not a jid")),
        form(&format!("<field var='ids'>{}</field>", "<value>x</value>".repeat(MAX_PAGE + 1))),
    ];
    for inner in inners {
        assert_eq!(parse_query(&iq_with(&inner)).unwrap_err().condition(), "bad-request", "{inner}");
    }
}

#[test]
fn unknown_fields_are_not_implemented() {
    let err = parse_query(&iq_with(&form(&field("include-groupchat", "true")))).unwrap_err();
    assert_eq!(err, MamError::FeatureNotImplemented("form field include-groupchat".into()));
    assert_eq!(err.condition(), "feature-not-implemented");
    let index = parse_query(&iq_with("<set xmlns='http://jabber.org/protocol/rsm'><index>3</index></set>"));
    assert_eq!(index.unwrap_err().condition(), "feature-not-implemented");
}

#[test]
fn blank_fields_are_absent() {
    let q = parse_query(&iq_with(&form(
        &["<field var='with'/>".to_owned(), field("start", ""), field("{urn:xmpp:fulltext:0}fulltext", "  ")].concat(),
    )))
    .unwrap();
    assert_eq!(q, MamQuery { query_id: Some("f27".into()), ..MamQuery::default() });
}

#[test]
fn datetimes_round_trip() {
    assert_eq!(parse_datetime("1970-01-01T00:00:00Z").unwrap(), 0);
    assert_eq!(format_datetime(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_datetime(1_278_717_305_000_000), "2010-07-09T23:15:05Z");
    assert_eq!(format_datetime(1_278_717_305_000_120), "2010-07-09T23:15:05.000120Z");
    for micros in [1_278_717_305_123_456, -1_500_000, 1_700_000_000_000_001] {
        assert_eq!(parse_datetime(&format_datetime(micros)).unwrap(), micros);
    }
    assert_eq!(parse_datetime("2010-07-09T23:15:05.1234567Z").unwrap(), 1_278_717_305_123_456);
}

#[test]
fn form_lists_supported_fields() {
    let iq = parse("<iq type='get' id='form1' from='juliet@capulet.lit/b'><query xmlns='urn:xmpp:mam:2'/></iq>");
    let reply = form_response(&iq);
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(reply.attr("id"), Some("form1"));
    assert_eq!(reply.attr("to"), Some("juliet@capulet.lit/b"));
    let x = reply.get_child("query", NS_MAM).and_then(|q| q.get_child("x", NS_DATA)).unwrap();
    assert_eq!(x.attr("type"), Some("form"));
    let vars: Vec<&str> = x.children().filter_map(|f| f.attr("var")).collect();
    assert_eq!(vars, ["FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids", FULLTEXT_FIELD]);
    let form_type = x.children().next().and_then(|f| f.get_child("value", NS_DATA)).map(Element::text);
    assert_eq!(form_type.as_deref(), Some(NS_MAM));
    let ids = x.children().find(|f| f.attr("var") == Some("ids")).unwrap();
    assert!(ids.get_child("validate", NS_DATA_VALIDATE).is_some_and(|v| v.has_child("open", NS_DATA_VALIDATE)));
}

#[test]
fn result_message_forwards_the_original() {
    let msg = result_message(
        "juliet@capulet.lit/chamber",
        "juliet@capulet.lit",
        Some("f27"),
        &row("s1", 1_278_717_305_000_000),
    );
    assert!(msg.is("message", NS_CLIENT));
    assert_eq!(msg.attr("to"), Some("juliet@capulet.lit/chamber"));
    assert_eq!(msg.attr("from"), Some("juliet@capulet.lit"));
    let result = msg.get_child("result", NS_MAM).unwrap();
    assert_eq!(result.attr("queryid"), Some("f27"));
    assert_eq!(result.attr("id"), Some("s1"));
    let fwd = result.get_child("forwarded", NS_FORWARD).unwrap();
    assert_eq!(fwd.get_child("delay", ns::DELAY).and_then(|d| d.attr("stamp")), Some("2010-07-09T23:15:05Z"));
    let original = fwd.get_child("message", NS_CLIENT).unwrap();
    assert_eq!(original.attr("from"), Some("romeo@montague.lit/orchard"));
    assert_eq!(original.get_child("body", NS_CLIENT).map(Element::text).as_deref(), Some("Hail & well met"));
    // Serialized inside <forwarded/>, the original declares jabber:client again.
    let xml = String::from_utf8(msg.to_bytes(NS_CLIENT)).unwrap();
    assert!(xml.contains("<message xmlns='jabber:client' from='romeo@montague.lit/orchard'"), "{xml}");
    assert!(xml.starts_with("<message to='juliet@capulet.lit/chamber' from='juliet@capulet.lit'>"), "{xml}");

    let no_qid = result_message("a@b/c", "a@b", None, &row("s2", 0));
    assert_eq!(no_qid.get_child("result", NS_MAM).unwrap().attr("queryid"), None);
    let mut broken = row("s3", 0);
    broken.payload = "<message".into();
    let forwarded = result_message("a@b/c", "a@b", None, &broken);
    let fwd = forwarded.get_child("result", NS_MAM).and_then(|r| r.get_child("forwarded", NS_FORWARD)).unwrap();
    assert!(fwd.has_child("message", NS_CLIENT));
}

#[test]
fn fin_summarizes_the_page() {
    let iq = iq_with("");
    let page = Page {
        rows: vec![row("a", 1), row("b", 2), row("c", 3)],
        complete: true,
        count: 12,
        first_index: Some(9),
        flipped: false,
    };
    let reply = fin(&iq, &page);
    assert_eq!(reply.attr("type"), Some("result"));
    assert_eq!(reply.attr("id"), Some("q1"));
    assert_eq!(reply.attr("to"), Some("juliet@capulet.lit/balcony"));
    let fin_el = reply.get_child("fin", NS_MAM).unwrap();
    assert_eq!(fin_el.attr("complete"), Some("true"));
    let set = fin_el.get_child("set", NS_RSM).unwrap();
    let first = set.get_child("first", NS_RSM).unwrap();
    assert_eq!((first.text().as_str(), first.attr("index")), ("a", Some("9")));
    assert_eq!(set.get_child("last", NS_RSM).map(Element::text).as_deref(), Some("c"));
    assert_eq!(set.get_child("count", NS_RSM).map(Element::text).as_deref(), Some("12"));

    // A flipped page still names its chronological bounds.
    let flipped = Page { rows: vec![row("c", 3), row("b", 2), row("a", 1)], flipped: true, complete: false, ..page };
    let fin_el = fin(&iq, &flipped).get_child("fin", NS_MAM).cloned().unwrap();
    assert_eq!(fin_el.attr("complete"), None);
    let set = fin_el.get_child("set", NS_RSM).unwrap();
    assert_eq!(set.get_child("first", NS_RSM).map(Element::text).as_deref(), Some("a"));
    assert_eq!(set.get_child("last", NS_RSM).map(Element::text).as_deref(), Some("c"));

    // An empty page: only the count.
    let empty = fin(&iq, &Page { complete: true, ..Page::default() });
    let set = empty.get_child("fin", NS_MAM).and_then(|f| f.get_child("set", NS_RSM)).unwrap();
    let names: Vec<&str> = set.children().map(Element::name).collect();
    assert_eq!(names, ["count"]);
    assert_eq!(set.get_child("count", NS_RSM).map(Element::text).as_deref(), Some("0"));
}

#[test]
fn metadata_response_names_both_ends() {
    let iq = parse("<iq type='get' id='m1'><metadata xmlns='urn:xmpp:mam:2'/></iq>");
    assert!(is_metadata_request(&iq));
    assert!(!is_metadata_request(&iq_with("")));
    let meta = ArchiveMetadata {
        start: Some(crate::ArchiveEdge { stanza_id: "first".into(), stamp_micros: 0 }),
        end: Some(crate::ArchiveEdge { stanza_id: "last".into(), stamp_micros: 1_000_000 }),
    };
    let reply = metadata_response(&iq, &meta);
    let md = reply.get_child("metadata", NS_MAM).unwrap();
    let start = md.get_child("start", NS_MAM).unwrap();
    assert_eq!((start.attr("id"), start.attr("timestamp")), (Some("first"), Some("1970-01-01T00:00:00Z")));
    let end = md.get_child("end", NS_MAM).unwrap();
    assert_eq!((end.attr("id"), end.attr("timestamp")), (Some("last"), Some("1970-01-01T00:00:01Z")));
    let empty = metadata_response(&iq, &ArchiveMetadata::default());
    assert_eq!(empty.get_child("metadata", NS_MAM).map(|m| m.children().count()), Some(0));
}
