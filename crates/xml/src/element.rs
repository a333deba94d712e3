//! The element tree and its serialization.

use std::fmt;

use crate::error::XmlError;
use crate::escape::{escape_attr, escape_text};
use crate::parser::StreamParser;
use crate::NS_XML;

/// Maximum nesting accepted by [`Element::from_bytes`].
const FRAGMENT_MAX_DEPTH: usize = 256;

/// An attribute. `name` is the qualified name as XMPP uses it (`"to"`, `"type"`,
/// `"xml:lang"`); attributes in any other namespace are named `"{uri}local"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub name: String,
    pub value: String,
}

impl Attr {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Attr {
        Attr { name: name.into(), value: value.into() }
    }
}

/// A child of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Node {
    pub fn as_element(&self) -> Option<&Element> {
        match self {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Node::Text(t) => Some(t),
            Node::Element(_) => None,
        }
    }
}

/// An XML element with a resolved namespace. Namespace declarations are not attributes:
/// they are implied by `ns` (and by `{uri}local` attribute names) and regenerated on
/// serialization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) attrs: Vec<Attr>,
    pub(crate) children: Vec<Node>,
}

impl Element {
    /// A new empty element `name` (local name) in namespace `ns`.
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Element {
        Element { name: name.into(), ns: ns.into(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Parse a single serialized element (surrounding white space allowed). `parent_ns` is
    /// the default namespace in scope, as passed to [`Element::write_to`], so
    /// `Element::from_bytes(&e.to_bytes(ns), ns) == Ok(e)`.
    pub fn from_bytes(bytes: &[u8], parent_ns: &str) -> Result<Element, XmlError> {
        StreamParser::parse_fragment(bytes, parent_ns, FRAGMENT_MAX_DEPTH)
    }

    /// Local name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace URI (`""` for no namespace).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    pub fn set_ns(&mut self, ns: impl Into<String>) {
        self.ns = ns.into();
    }

    /// Is this element `name` in namespace `ns`?
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.name == name).map(|a| a.value.as_str())
    }

    /// Set an attribute, replacing any existing value.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|a| a.name == name) {
            Some(a) => a.value = value,
            None => self.attrs.push(Attr { name, value }),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let idx = self.attrs.iter().position(|a| a.name == name)?;
        Some(self.attrs.remove(idx).value)
    }

    pub fn attrs(&self) -> &[Attr] {
        &self.attrs
    }

    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.append_text(text);
        self
    }

    /// Append a child element and return a reference to it.
    pub fn append_child(&mut self, child: Element) -> &mut Element {
        self.children.push(Node::Element(child));
        match self.children.last_mut() {
            Some(Node::Element(e)) => e,
            _ => unreachable!("an element was just pushed"),
        }
    }

    /// Append character data; merged into a preceding text node, ignored when empty.
    pub fn append_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(t)) => t.push_str(&text),
            _ => self.children.push(Node::Text(text)),
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    pub fn nodes_mut(&mut self) -> &mut Vec<Node> {
        &mut self.children
    }

    /// Element children only.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(Node::as_element)
    }

    /// Element children only, mutably.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// First child element `name` in `ns`.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children_mut().find(|e| e.is(name, ns))
    }

    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// Remove and return the first child element `name` in `ns`.
    pub fn remove_child(&mut self, name: &str, ns: &str) -> Option<Element> {
        let idx = self.children.iter().position(|n| matches!(n, Node::Element(e) if e.is(name, ns)))?;
        match self.children.remove(idx) {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        }
    }

    /// Concatenated direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialize into `out`. `parent_ns` is the default namespace in scope: an `xmlns`
    /// attribute is written only when this element's namespace differs from it, and
    /// children inherit. Attributes named `{uri}local` get a generated prefix (`nsN`)
    /// declared on the same element; attributes named `xmlns`/`xmlns:*` are skipped
    /// (declarations are derived from namespaces). Empty elements are written `<a/>`.
    /// An element in the XML namespace is written with the `xml:` prefix, which is bound
    /// without a declaration; that namespace may not be the default one (Namespaces in
    /// XML 1.0 §3), so its children inherit `parent_ns`.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        self.write_open(out, parent_ns);
        self.write_rest(out, parent_ns);
    }

    /// The start tag up to the end of its attributes (no `>`).
    fn write_open(&self, out: &mut Vec<u8>, parent_ns: &str) {
        out.push(b'<');
        self.write_qname(out);
        if self.ns != parent_ns && self.ns != NS_XML {
            out.extend_from_slice(b" xmlns='");
            escape_attr(&self.ns, out);
            out.push(b'\'');
        }
        self.write_attrs(out);
    }

    fn write_qname(&self, out: &mut Vec<u8>) {
        if self.ns == NS_XML {
            out.extend_from_slice(b"xml:");
        }
        out.extend_from_slice(self.name.as_bytes());
    }

    /// What follows [`Element::write_open`]: `/>`, or `>`, the children and the end tag.
    fn write_rest(&self, out: &mut Vec<u8>, parent_ns: &str) {
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        let default_ns = if self.ns == NS_XML { parent_ns } else { &self.ns };
        for node in &self.children {
            match node {
                Node::Element(e) => e.write_to(out, default_ns),
                Node::Text(t) => escape_text(t, out),
            }
        }
        out.extend_from_slice(b"</");
        self.write_qname(out);
        out.push(b'>');
    }

    fn write_attrs(&self, out: &mut Vec<u8>) {
        for (i, a) in self.attrs.iter().enumerate() {
            match split_clark(&a.name) {
                Some((uri, local)) if uri == NS_XML => {
                    out.extend_from_slice(b" xml:");
                    out.extend_from_slice(local.as_bytes());
                }
                Some((uri, local)) if !uri.is_empty() => {
                    // The prefix number is the index of the first attribute in this
                    // namespace, which is where the declaration is written.
                    let first = self
                        .attrs
                        .iter()
                        .position(|b| split_clark(&b.name).is_some_and(|(u, _)| u == uri))
                        .unwrap_or(i);
                    if first == i {
                        out.extend_from_slice(b" xmlns:ns");
                        push_usize(first, out);
                        out.extend_from_slice(b"='");
                        escape_attr(uri, out);
                        out.push(b'\'');
                    }
                    out.extend_from_slice(b" ns");
                    push_usize(first, out);
                    out.push(b':');
                    out.extend_from_slice(local.as_bytes());
                }
                Some((_, local)) => {
                    out.push(b' ');
                    out.extend_from_slice(local.as_bytes());
                }
                None => {
                    if a.name == "xmlns" || a.name.starts_with("xmlns:") {
                        continue;
                    }
                    out.push(b' ');
                    out.extend_from_slice(a.name.as_bytes());
                }
            }
            out.extend_from_slice(b"='");
            escape_attr(&a.value, out);
            out.push(b'\'');
        }
    }

    /// Serialize into a new buffer (see [`Element::write_to`]).
    pub fn to_bytes(&self, parent_ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, parent_ns);
        out
    }
}

/// A stanza serialized once for many recipients that differ only in its `to`
/// attribute: each copy is the shared bytes with the recipient's address spliced into
/// the start tag. Fan-out (a groupchat message reaching every occupant) writes this
/// instead of deep-copying and serializing the element once per recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unaddressed {
    bytes: Vec<u8>,
    /// Where the start tag's attributes end, which is where `to` goes.
    attrs_end: usize,
}

impl Unaddressed {
    /// Serializes `el` (as [`Element::write_to`] would, as a child of `parent_ns`)
    /// without any `to` attribute it has.
    pub fn new(el: &Element, parent_ns: &str) -> Unaddressed {
        let el = if el.attr("to").is_some() {
            let mut without_to = el.clone();
            without_to.remove_attr("to");
            std::borrow::Cow::Owned(without_to)
        } else {
            std::borrow::Cow::Borrowed(el)
        };
        let mut bytes = Vec::new();
        el.write_open(&mut bytes, parent_ns);
        let attrs_end = bytes.len();
        el.write_rest(&mut bytes, parent_ns);
        Unaddressed { bytes, attrs_end }
    }

    /// The shared serialization and where `to` is spliced in, to carry it to another
    /// node as it is.
    pub fn parts(&self) -> (&[u8], usize) {
        (&self.bytes, self.attrs_end)
    }

    /// Rebuilds what [`Unaddressed::parts`] gave (from a cluster peer); `None` when the
    /// splice point is not inside the start tag's bytes.
    pub fn from_parts(bytes: Vec<u8>, attrs_end: usize) -> Option<Unaddressed> {
        let open = bytes.get(..attrs_end)?;
        (open.first() == Some(&b'<') && !open.contains(&b'>')).then_some(Unaddressed { bytes, attrs_end })
    }

    /// Length of the shared serialization (a copy adds the address).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the serialization is empty (never, for an element).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends the copy addressed to `to`.
    pub fn write_to(&self, to: &str, out: &mut Vec<u8>) {
        let (open, rest) = self.bytes.split_at(self.attrs_end);
        out.reserve(self.bytes.len() + to.len() + 6);
        out.extend_from_slice(open);
        out.extend_from_slice(b" to='");
        escape_attr(to, out);
        out.push(b'\'');
        out.extend_from_slice(rest);
    }
}

/// Serializes with `parent_ns = ""`, so the root always carries its `xmlns`.
impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes("")))
    }
}

/// Split a `{uri}local` attribute name.
fn split_clark(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix('{')?;
    // The last '}': a namespace URI may contain one, a local name (an NCName) cannot.
    let close = rest.rfind('}')?;
    Some((&rest[..close], &rest[close + 1..]))
}

fn push_usize(mut n: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
