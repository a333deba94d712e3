//! The I/O-free half of XEP-0313: parsing archive queries and building the stanzas that
//! answer them (the query form, result messages, the final `<fin/>`, archive metadata).
//!
//! Nothing here touches the store or the clock: [`parse_query`] turns the IQ into a
//! [`MamQuery`] for [`crate::Archive::query`], and the builders format what it returns.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use waddle_c2s::stanza::{iq_payload, iq_result_with};
use waddle_xml::{Element, NS_CLIENT};

use crate::{ArchiveMetadata, ArchivedRow, MamError, Page};

/// XEP-0313 namespace (queries, results, `<fin/>`, metadata).
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// XEP-0313 extended feature (before-id/after-id/ids, flipped pages, metadata).
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0059 Result Set Management.
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0004 data forms.
pub const NS_DATA: &str = "jabber:x:data";
/// XEP-0122 data form validation.
pub const NS_DATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";
/// XEP-0297 stanza forwarding.
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0203 delayed delivery.
pub const NS_DELAY: &str = "urn:xmpp:delay";
/// XEP-0431 full-text search (also the disco feature).
pub const NS_FULLTEXT: &str = "urn:xmpp:fulltext:0";
/// The form field XEP-0431 defines.
pub const FULLTEXT_FIELD: &str = "{urn:xmpp:fulltext:0}fulltext";

/// Page size when the client does not send RSM `<max/>`.
pub const DEFAULT_MAX: usize = 50;
/// Largest page (and largest `ids` list) served; larger `<max/>` values are capped.
pub const MAX_PAGE: usize = 250;

/// A parsed archive query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MamQuery {
    /// The `queryid` attribute, echoed in every result.
    pub query_id: Option<String>,
    /// `with` field: a bare JID matches the peer (user archives) or the sender's real
    /// JID (rooms); `room@service/nick` on a room archive matches that nickname.
    pub with: Option<String>,
    /// `start` field, Unix microseconds, inclusive.
    pub start: Option<i64>,
    /// `end` field, Unix microseconds, inclusive.
    pub end: Option<i64>,
    /// RSM `<after>id</after>`: the page starts after this id.
    pub after: Option<String>,
    /// RSM `<before/>`: `Some(None)` for an empty `<before/>` (the last page),
    /// `Some(Some(id))` for the page ending before `id`. Pages backwards.
    pub before: Option<Option<String>>,
    /// RSM `<max/>`, defaulting to [`DEFAULT_MAX`], capped at [`MAX_PAGE`].
    pub max: usize,
    /// `<flip-page/>`: send the page newest first.
    pub flip: bool,
    /// XEP-0431 full-text search terms.
    pub fulltext: Option<String>,
    /// `ids` field (extended): only these ids.
    pub ids: Vec<String>,
    /// `after-id` field (extended): the result set starts after this id. Unlike RSM
    /// `after` it narrows the result set (and its count) and keeps forward paging.
    pub after_id: Option<String>,
    /// `before-id` field (extended): the result set ends before this id. Unlike RSM
    /// `before` it does not page backwards.
    pub before_id: Option<String>,
}

impl Default for MamQuery {
    fn default() -> Self {
        MamQuery {
            query_id: None,
            with: None,
            start: None,
            end: None,
            after: None,
            before: None,
            max: DEFAULT_MAX,
            flip: false,
            fulltext: None,
            ids: Vec::new(),
            after_id: None,
            before_id: None,
        }
    }
}

/// Parses a MAM query IQ (`<iq type='set'><query xmlns='urn:xmpp:mam:2'>`) with its
/// optional data form, RSM `<set/>` and `<flip-page/>`.
///
/// Errors: [`MamError::BadRequest`] for anything malformed (wrong IQ type or payload, a
/// bad date, a non-numeric `<max/>`, an empty `<after/>`, a form that is not a
/// submission or has another FORM_TYPE, repeated fields, more than [`MAX_PAGE`] ids);
/// [`MamError::FeatureNotImplemented`] for form fields this archive does not know
/// (XEP-0313 §4.1.7), RSM `<index/>` and pubsub `node` queries. Whether the ids it
/// names exist is for the store to decide.
pub fn parse_query(iq: &Element) -> Result<MamQuery, MamError> {
    if !iq.is("iq", NS_CLIENT) || iq.attr("type") != Some("set") {
        return Err(bad("an archive query is an IQ of type set"));
    }
    let query = iq_payload(iq).filter(|p| p.is("query", NS_MAM)).ok_or_else(|| bad("expected one <query/>"))?;
    if query.attr("node").is_some() {
        return Err(MamError::FeatureNotImplemented("pubsub archives".into()));
    }
    let mut q = MamQuery { query_id: query.attr("queryid").map(str::to_owned), ..MamQuery::default() };
    let mut seen_form = false;
    let mut seen_set = false;
    for child in query.children() {
        if child.is("x", NS_DATA) {
            if std::mem::replace(&mut seen_form, true) {
                return Err(bad("more than one form"));
            }
            parse_form(child, &mut q)?;
        } else if child.is("set", NS_RSM) {
            if std::mem::replace(&mut seen_set, true) {
                return Err(bad("more than one <set/>"));
            }
            parse_rsm(child, &mut q)?;
        } else if child.is("flip-page", NS_MAM) {
            q.flip = true;
        }
    }
    Ok(q)
}

fn bad(why: &str) -> MamError {
    MamError::BadRequest(why.to_owned())
}

fn parse_form(x: &Element, q: &mut MamQuery) -> Result<(), MamError> {
    if x.attr("type").is_some_and(|t| t != "submit") {
        return Err(bad("the query form must be of type submit"));
    }
    let mut seen: Vec<&str> = Vec::new();
    for field in x.children().filter(|f| f.is("field", NS_DATA)) {
        let var = field.attr("var").ok_or_else(|| bad("form field without var"))?;
        if seen.contains(&var) {
            return Err(MamError::BadRequest(format!("field {var} given twice")));
        }
        seen.push(var);
        let values: Vec<String> = field.children().filter(|v| v.is("value", NS_DATA)).map(Element::text).collect();
        // A single-valued field: its first non-blank value, trimmed.
        let single = || values.iter().map(|v| v.trim()).find(|v| !v.is_empty()).map(str::to_owned);
        match var {
            "FORM_TYPE" => {
                if single().is_some_and(|t| t != NS_MAM) {
                    return Err(bad("FORM_TYPE must be urn:xmpp:mam:2"));
                }
            }
            "with" => {
                q.with = single();
                if q.with.as_deref().is_some_and(|w| w.chars().any(char::is_whitespace)) {
                    return Err(bad("with: not a JID"));
                }
            }
            "start" => q.start = single().map(|v| parse_datetime(&v)).transpose()?,
            "end" => q.end = single().map(|v| parse_datetime(&v)).transpose()?,
            "after-id" => q.after_id = single(),
            "before-id" => q.before_id = single(),
            "ids" => {
                q.ids = values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned).collect();
                if q.ids.len() > MAX_PAGE {
                    return Err(MamError::BadRequest(format!("at most {MAX_PAGE} ids per query")));
                }
            }
            FULLTEXT_FIELD => q.fulltext = single(),
            other => return Err(MamError::FeatureNotImplemented(format!("form field {other}"))),
        }
    }
    Ok(())
}

fn parse_rsm(set: &Element, q: &mut MamQuery) -> Result<(), MamError> {
    for child in set.children().filter(|c| c.ns() == NS_RSM) {
        let text = child.text();
        let text = text.trim();
        match child.name() {
            "max" => {
                let max: usize = text.parse().map_err(|_| bad("RSM <max/> must be a non-negative integer"))?;
                q.max = max.min(MAX_PAGE);
            }
            "after" if text.is_empty() => return Err(bad("RSM <after/> needs an id")),
            "after" => q.after = Some(text.to_owned()),
            "before" => q.before = Some((!text.is_empty()).then(|| text.to_owned())),
            "index" => return Err(MamError::FeatureNotImplemented("RSM <index/>".into())),
            _ => {}
        }
    }
    Ok(())
}

/// Parses a XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`) into Unix microseconds
/// (sub-microsecond digits are truncated). [`MamError::BadRequest`] otherwise.
pub fn parse_datetime(s: &str) -> Result<i64, MamError> {
    let invalid = || MamError::BadRequest(format!("not a XEP-0082 DateTime: {s}"));
    let s = s.trim();
    // RFC 3339 also allows a space between date and time; XEP-0082 does not.
    if s.as_bytes().get(10) != Some(&b'T') {
        return Err(invalid());
    }
    let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| invalid())?;
    i64::try_from(dt.unix_timestamp_nanos().div_euclid(1000)).map_err(|_| invalid())
}

/// Formats Unix microseconds as a XEP-0082 DateTime in UTC: whole seconds as
/// `2024-05-01T12:00:00Z`, otherwise with six fractional digits, so that a stamp fed
/// back as `start`/`end` selects exactly the same instant.
pub fn format_datetime(micros: i64) -> String {
    let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let frac = micros.rem_euclid(1_000_000);
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if frac != 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out.push('Z');
    out
}

fn field(var: &str, kind: &str) -> Element {
    Element::new("field", NS_DATA).with_attr("type", kind).with_attr("var", var)
}

/// The answer to `<iq type='get'><query xmlns='urn:xmpp:mam:2'/></iq>`: the form of the
/// supported query fields (XEP-0313 §4.1.7 and XEP-0431).
pub fn form_response(iq: &Element) -> Element {
    let form = Element::new("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", "hidden").with_child(Element::new("value", NS_DATA).with_text(NS_MAM)))
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(
            field("ids", "list-multi").with_child(
                Element::new("validate", NS_DATA_VALIDATE)
                    .with_attr("datatype", "xs:string")
                    .with_child(Element::new("open", NS_DATA_VALIDATE)),
            ),
        )
        .with_child(field(FULLTEXT_FIELD, "text-single").with_attr("label", "Search"));
    iq_result_with(iq, Element::new("query", NS_MAM).with_child(form))
}

/// One result message: `<message to from=archive_jid><result queryid id><forwarded>`
/// with a `<delay/>` carrying the archive stamp and the original stanza.
///
/// A payload that does not parse (which the store never produces from well-formed
/// input) is logged and forwarded as an empty `<message/>` so that the client still
/// sees the id in sequence.
pub fn result_message(to: &str, archive_jid: &str, query_id: Option<&str>, row: &ArchivedRow) -> Element {
    let original = Element::from_bytes(row.payload.as_bytes(), NS_CLIENT).unwrap_or_else(|e| {
        tracing::warn!(archive = %row.archive, id = %row.stanza_id, error = %e, "mam: unparsable archived payload");
        Element::new("message", NS_CLIENT)
    });
    let forwarded = Element::new("forwarded", NS_FORWARD)
        .with_child(Element::new("delay", NS_DELAY).with_attr("stamp", format_datetime(row.stamp_micros)))
        .with_child(original);
    let mut result = Element::new("result", NS_MAM);
    if let Some(qid) = query_id {
        result.set_attr("queryid", qid);
    }
    result.set_attr("id", row.stanza_id.as_str());
    Element::new("message", NS_CLIENT)
        .with_attr("to", to)
        .with_attr("from", archive_jid)
        .with_child(result.with_child(forwarded))
}

/// The IQ result that ends a query: `<fin xmlns='urn:xmpp:mam:2' complete='true'?>`
/// with the RSM summary (`<first index/>` and `<last/>` name the chronologically first
/// and last rows of the page even when it was flipped, then `<count/>`).
pub fn fin(iq: &Element, page: &Page) -> Element {
    let mut set = Element::new("set", NS_RSM);
    if let Some((first, last)) = page.bounds() {
        let mut first_el = Element::new("first", NS_RSM).with_text(first.stanza_id.as_str());
        if let Some(index) = page.first_index {
            first_el.set_attr("index", index.to_string());
        }
        set.append_child(first_el);
        set.append_child(Element::new("last", NS_RSM).with_text(last.stanza_id.as_str()));
    }
    set.append_child(Element::new("count", NS_RSM).with_text(page.count.to_string()));
    let mut fin = Element::new("fin", NS_MAM);
    if page.complete {
        fin.set_attr("complete", "true");
    }
    iq_result_with(iq, fin.with_child(set))
}

/// Whether `iq` asks for archive metadata (`<iq type='get'><metadata xmlns='urn:xmpp:mam:2'/>`).
pub fn is_metadata_request(iq: &Element) -> bool {
    iq.attr("type") == Some("get") && iq_payload(iq).is_some_and(|p| p.is("metadata", NS_MAM))
}

/// The answer to a metadata request (XEP-0313 §5): `<metadata>` with `<start id
/// timestamp/>` and `<end id timestamp/>`, empty for an empty archive.
pub fn metadata_response(iq: &Element, meta: &ArchiveMetadata) -> Element {
    let mut md = Element::new("metadata", NS_MAM);
    for (name, edge) in [("start", &meta.start), ("end", &meta.end)] {
        if let Some(edge) = edge {
            md.append_child(
                Element::new(name, NS_MAM)
                    .with_attr("id", edge.stanza_id.as_str())
                    .with_attr("timestamp", format_datetime(edge.stamp_micros)),
            );
        }
    }
    iq_result_with(iq, md)
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
