//! MPS XML <-> data tree, with positions for error messages and limits against hostile input.
//!
//! [`parse`] turns a document into an [`Element`] tree (document order kept, entities
//! unescaped, CDATA as text, whitespace-only text between elements dropped, comments and
//! processing instructions dropped, DOCTYPE refused). [`parse_located`] does the same but
//! keeps the line and column of every element, for the definitions parser. [`to_string`]
//! and [`to_string_pretty`] write a tree back so that it parses to the same tree.
//!
//! The parser and the writers are iterative: no input, however deep, can overflow the stack.

use super::{Element, Name, Node, NsUri, Scalar};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;
use std::borrow::Cow;
use std::sync::Arc;

/// The namespace of `xml:` names, bound without a declaration.
pub const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// The namespace declarations in scope at an element, outermost first: (prefix, URI),
/// prefix `""` for the default namespace, URI `""` for an undeclared default (`xmlns=""`).
pub type NsScope = Arc<Vec<(Name, Name)>>;

/// The URI a prefix (`""`: the default namespace) is bound to in `scope`. The default
/// namespace may be undeclared (`None`); `xml` is always bound.
pub fn lookup_prefix<'s>(scope: &'s [(Name, Name)], prefix: &str) -> Option<&'s str> {
    if prefix == "xml" {
        return Some(XML_NAMESPACE);
    }
    scope
        .iter()
        .rev()
        .find(|(p, _)| p == prefix)
        .map(|(_, uri)| uri.as_str())
        .filter(|uri| !uri.is_empty())
}

/// The prefix of a declaration attribute: `xmlns` → `""`, `xmlns:p` → `p`.
fn declared_prefix(attr: &str) -> Option<&str> {
    if attr == "xmlns" {
        Some("")
    } else {
        attr.strip_prefix("xmlns:")
    }
}

/// Limits on untrusted XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum document size in bytes.
    pub max_bytes: usize,
    /// Maximum element nesting depth.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 * 1024 * 1024,
            max_depth: 128,
        }
    }
}

/// A syntax or limit error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct XmlError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

/// An element with the position (1-based line and column of its `<`) where it starts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Located {
    /// Name as written (prefix kept).
    pub(crate) name: Name,
    /// Attributes in document order, values unescaped.
    pub(crate) attrs: Vec<(Name, Name)>,
    /// Children in document order.
    pub(crate) children: Vec<LocatedNode>,
    /// 1-based line of the start tag.
    pub(crate) line: u32,
    /// 1-based column (in characters) of the start tag's `<`.
    pub(crate) column: u32,
    /// The element's namespace URI (as [`Element::ns`]).
    pub(crate) ns: Option<NsUri>,
    /// The namespace declarations in scope here (this element's own included).
    pub(crate) ns_scope: NsScope,
}

/// A child of a [`Located`] element.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LocatedNode {
    /// A child element.
    Element(Located),
    /// A run of text (entities resolved, CDATA included).
    Text(String),
    /// A child element without positions (only from [`parse_located_plain`]); not listed by
    /// [`Located::elements`].
    Plain(Element),
}

impl Located {
    /// The value of an attribute.
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Child elements in document order.
    pub(crate) fn elements(&self) -> impl Iterator<Item = &Located> {
        self.children.iter().filter_map(|c| match c {
            LocatedNode::Element(e) => Some(e),
            LocatedNode::Text(_) | LocatedNode::Plain(_) => None,
        })
    }

    /// The text children in document order.
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        self.children.iter().filter_map(|c| match c {
            LocatedNode::Text(t) => Some(t.as_str()),
            LocatedNode::Element(_) | LocatedNode::Plain(_) => None,
        })
    }

    /// The plain data tree (positions dropped).
    pub fn to_element(&self) -> Element {
        self.clone().into_element()
    }

    /// The plain data tree, consuming `self` (no copies of names and text).
    pub(crate) fn into_element(self) -> Element {
        // Iterative, so a deep tree cannot overflow the stack.
        struct Frame {
            out: Element,
            rest: std::vec::IntoIter<LocatedNode>,
        }
        let mut stack = vec![Frame {
            out: Element {
                name: self.name,
                ns: self.ns,
                attrs: self.attrs,
                children: Vec::with_capacity(self.children.len()),
                list_item: false,
            },
            rest: self.children.into_iter(),
        }];
        loop {
            let next = match stack.last_mut() {
                Some(top) => top.rest.next(),
                None => return Element::default(),
            };
            match next {
                Some(LocatedNode::Text(t)) => {
                    if let Some(top) = stack.last_mut() {
                        top.out.children.push(Node::Text(Scalar::Str(t.into())));
                    }
                }
                Some(LocatedNode::Plain(e)) => {
                    if let Some(top) = stack.last_mut() {
                        top.out.children.push(Node::Element(e));
                    }
                }
                Some(LocatedNode::Element(l)) => stack.push(Frame {
                    out: Element {
                        name: l.name,
                        ns: l.ns,
                        attrs: l.attrs,
                        children: Vec::with_capacity(l.children.len()),
                        list_item: false,
                    },
                    rest: l.children.into_iter(),
                }),
                None => {
                    let done = match stack.pop() {
                        Some(f) => f.out,
                        None => return Element::default(),
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.out.children.push(Node::Element(done)),
                        None => return done,
                    }
                }
            }
        }
    }
}

/// Parses a document and returns its root element.
pub fn parse(src: &str, limits: &Limits) -> Result<Element, XmlError> {
    parse_core::<Element>(src, limits, &[])
}

/// Parses a document and returns its root element with the position of every element.
pub fn parse_located(src: &str, limits: &Limits) -> Result<Located, XmlError> {
    parse_core::<Located>(src, limits, &[])
}

/// Like [`parse_located`], but the content of the root's children named in `plain` is
/// built as plain elements ([`LocatedNode::Plain`]) without positions: for a request, whose
/// `<data>` is most of the document and needs no positions, this saves building a located
/// tree and converting it.
pub(crate) fn parse_located_plain(
    src: &str,
    limits: &Limits,
    plain: &[&str],
) -> Result<Located, XmlError> {
    match parse_core::<Mixed>(src, limits, plain)? {
        Mixed::Loc(l) => Ok(l),
        // The root is always located; converting keeps this total anyway.
        Mixed::Plain(e) => Ok(Located {
            name: e.name,
            ns: e.ns,
            ns_scope: NsScope::default(),
            attrs: e.attrs,
            children: e
                .children
                .into_iter()
                .map(|c| match c {
                    Node::Element(e) => LocatedNode::Plain(e),
                    Node::Text(s) => LocatedNode::Text(s.to_text()),
                })
                .collect(),
            line: 1,
            column: 1,
        }),
    }
}

/// Serializes an element (and its subtree) as compact XML.
pub fn to_string(element: &Element) -> String {
    let mut out = String::with_capacity(256);
    write_tree(element, &mut out, false);
    out
}

/// Serializes an element as indented XML (2 spaces a level). Leaves holding text stay on
/// one line; mixed content (text next to elements) is written as is, not re-indented.
/// No trailing newline.
pub fn to_string_pretty(element: &Element) -> String {
    let mut out = String::with_capacity(256);
    write_tree(element, &mut out, true);
    out
}

// ---------------------------------------------------------------------------------------
// Positions

/// 1-based line and column (in characters) of a byte offset. Only called on errors.
fn line_col(src: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(src.len());
    while offset > 0 && !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = src[line_start..offset].chars().count() + 1;
    (clamp_u32(line), clamp_u32(column))
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn error_at(src: &str, offset: usize, message: impl Into<String>) -> XmlError {
    let (line, column) = line_col(src, offset);
    XmlError {
        line,
        column,
        message: message.into(),
    }
}

/// Line/column of monotonically increasing offsets, in linear time overall.
struct Tracker {
    offset: usize,
    line: usize,
    column: usize,
}

impl Tracker {
    fn new() -> Self {
        Tracker {
            offset: 0,
            line: 1,
            column: 1,
        }
    }

    fn advance(&mut self, src: &str, to: usize) -> (u32, u32) {
        let to = to.min(src.len());
        if to > self.offset && src.is_char_boundary(to) && src.is_char_boundary(self.offset) {
            let seg = &src[self.offset..to];
            match seg.as_bytes().iter().rposition(|&b| b == b'\n') {
                Some(last) => {
                    self.line += seg.as_bytes().iter().filter(|&&b| b == b'\n').count();
                    self.column = seg[last + 1..].chars().count() + 1;
                }
                None => self.column += seg.chars().count(),
            }
            self.offset = to;
        }
        (clamp_u32(self.line), clamp_u32(self.column))
    }
}

// ---------------------------------------------------------------------------------------
// Parser

/// What the iterative parser builds: a plain tree, a located tree, or a located tree with
/// plain subtrees ([`parse_located_plain`]).
trait Build: Sized {
    type Child;
    /// A new element. `stack` holds the open ancestors (the parent last); `plain` are the
    /// names of the root's children whose content is built without positions; `position`
    /// computes the line and column of the `<` (linear overall, so called only when kept).
    #[allow(clippy::too_many_arguments)]
    fn start(
        name: Name,
        ns: Option<NsUri>,
        scope: &NsScope,
        attrs: Vec<(Name, Name)>,
        stack: &[Open<Self>],
        plain: &[&str],
        position: impl FnOnce() -> (u32, u32),
    ) -> Self;
    fn name(&self) -> &str;
    /// Moves `kids[from..]` (not empty) into the node's children.
    fn set_children(&mut self, kids: &mut Vec<Self::Child>, from: usize);
    fn wrap(self) -> Self::Child;
    /// A text child of the innermost open element (`stack` is never empty here). Short
    /// text borrowed from the source is kept inline in a plain tree, without allocating.
    fn text(text: Cow<'_, str>, stack: &[Open<Self>]) -> Self::Child;
}

impl Build for Element {
    type Child = Node;
    fn start(
        name: Name,
        ns: Option<NsUri>,
        _scope: &NsScope,
        attrs: Vec<(Name, Name)>,
        _stack: &[Open<Self>],
        _plain: &[&str],
        _position: impl FnOnce() -> (u32, u32),
    ) -> Self {
        Element {
            name,
            ns,
            attrs,
            children: Vec::new(),
            list_item: false,
        }
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn set_children(&mut self, kids: &mut Vec<Node>, from: usize) {
        self.children = take_from(kids, from);
    }
    fn wrap(self) -> Node {
        Node::Element(self)
    }
    fn text(text: Cow<'_, str>, _stack: &[Open<Self>]) -> Node {
        Node::Text(Scalar::Str(text.into()))
    }
}

impl Build for Located {
    type Child = LocatedNode;
    fn start(
        name: Name,
        ns: Option<NsUri>,
        scope: &NsScope,
        attrs: Vec<(Name, Name)>,
        _stack: &[Open<Self>],
        _plain: &[&str],
        position: impl FnOnce() -> (u32, u32),
    ) -> Self {
        let (line, column) = position();
        Located {
            name,
            ns,
            ns_scope: scope.clone(),
            attrs,
            children: Vec::new(),
            line,
            column,
        }
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn set_children(&mut self, kids: &mut Vec<LocatedNode>, from: usize) {
        self.children = take_from(kids, from);
    }
    fn wrap(self) -> LocatedNode {
        LocatedNode::Element(self)
    }
    fn text(text: Cow<'_, str>, _stack: &[Open<Self>]) -> LocatedNode {
        LocatedNode::Text(text.into_owned())
    }
}

/// `kids[from..]` in an exactly sized Vec, moved in one copy (`split_off`, except at 0 where
/// it would hand over the whole buffer of the shared stack).
// `mem::take` (clippy's suggestion) would hand over the shared buffer, not an exact copy.
#[allow(clippy::drain_collect)]
fn take_from<T>(kids: &mut Vec<T>, from: usize) -> Vec<T> {
    if from == 0 {
        kids.drain(..).collect()
    } else {
        kids.split_off(from)
    }
}

/// A node of [`parse_located_plain`]: located, or plain inside one of the `plain` children
/// of the root.
enum Mixed {
    Loc(Located),
    Plain(Element),
}

/// A child of a [`Mixed`] node: plain children are built as [`Node`]s directly (the text of
/// a plain element as an inline [`Name`] when short), located ones as [`LocatedNode`]s.
enum MixedChild {
    Loc(LocatedNode),
    Plain(Node),
}

impl Build for Mixed {
    type Child = MixedChild;
    fn start(
        name: Name,
        ns: Option<NsUri>,
        scope: &NsScope,
        attrs: Vec<(Name, Name)>,
        stack: &[Open<Self>],
        plain: &[&str],
        position: impl FnOnce() -> (u32, u32),
    ) -> Self {
        let in_plain = match stack {
            [_, .., Open {
                node: Mixed::Plain(_),
                ..
            }] => true,
            [_, Open {
                node: Mixed::Loc(parent),
                ..
            }] => plain.contains(&parent.name.as_str()),
            _ => false,
        };
        if in_plain {
            Mixed::Plain(Element::start(name, ns, scope, attrs, &[], plain, || {
                (0, 0)
            }))
        } else {
            Mixed::Loc(Located::start(name, ns, scope, attrs, &[], plain, position))
        }
    }
    fn name(&self) -> &str {
        match self {
            Mixed::Loc(l) => &l.name,
            Mixed::Plain(e) => &e.name,
        }
    }
    fn set_children(&mut self, kids: &mut Vec<MixedChild>, from: usize) {
        let children = kids.drain(from..);
        match self {
            Mixed::Loc(l) => {
                l.children = children
                    .map(|c| match c {
                        MixedChild::Loc(n) => n,
                        MixedChild::Plain(Node::Element(e)) => LocatedNode::Plain(e),
                        // Not built: text is located when its parent is.
                        MixedChild::Plain(Node::Text(s)) => LocatedNode::Text(s.to_text()),
                    })
                    .collect()
            }
            // Only plain elements and text occur below a plain element.
            Mixed::Plain(e) => {
                e.children = children
                    .map(|c| match c {
                        MixedChild::Plain(n) => n,
                        MixedChild::Loc(LocatedNode::Plain(e)) => Node::Element(e),
                        MixedChild::Loc(LocatedNode::Text(t)) => Node::Text(Scalar::Str(t.into())),
                        MixedChild::Loc(LocatedNode::Element(l)) => Node::Element(l.into_element()),
                    })
                    .collect()
            }
        }
    }
    fn wrap(self) -> MixedChild {
        match self {
            Mixed::Loc(l) => MixedChild::Loc(LocatedNode::Element(l)),
            Mixed::Plain(e) => MixedChild::Plain(Node::Element(e)),
        }
    }
    fn text(text: Cow<'_, str>, stack: &[Open<Self>]) -> MixedChild {
        match stack.last() {
            Some(Open {
                node: Mixed::Plain(_),
                ..
            }) => MixedChild::Plain(Node::Text(Scalar::Str(text.into()))),
            _ => MixedChild::Loc(LocatedNode::Text(text.into_owned())),
        }
    }
}

/// An open element: the node, the offset of its `<`, and where its children start in
/// the shared child stack (children are moved into an exactly sized Vec on close).
struct Open<B> {
    node: B,
    at: usize,
    first_child: usize,
    /// It declared namespaces: its scope is to be popped when it closes.
    declares: bool,
}

/// A run of text being collected (text, references and CDATA between two tags).
struct PendingText<'a> {
    text: Option<Cow<'a, str>>,
    /// Contains a reference or CDATA: kept even if it is only whitespace.
    significant: bool,
    /// Offset where the run started (for errors about text outside the root).
    start: usize,
}

impl<'a> PendingText<'a> {
    fn push(&mut self, piece: Cow<'a, str>, at: usize) {
        match &mut self.text {
            None => {
                self.text = Some(piece);
                self.start = at;
            }
            Some(t) => Self::owned(t, piece.len()).push_str(&piece),
        }
    }

    fn push_char(&mut self, c: char, at: usize) {
        match &mut self.text {
            None => {
                self.text = Some(Cow::Owned(c.to_string()));
                self.start = at;
            }
            Some(t) => Self::owned(t, c.len_utf8()).push(c),
        }
    }

    /// The run as an owned String with room for `more` bytes (and some slack, since text
    /// with references comes in several pieces).
    fn owned<'t>(t: &'t mut Cow<'a, str>, more: usize) -> &'t mut String {
        if let Cow::Borrowed(b) = t {
            let mut s = String::with_capacity(b.len() + more + 16);
            s.push_str(b);
            *t = Cow::Owned(s);
        }
        t.to_mut()
    }

    /// Takes the run if it is worth keeping.
    fn take(&mut self) -> Option<Cow<'a, str>> {
        let significant = std::mem::take(&mut self.significant);
        let text = self.text.take()?;
        if significant || !is_xml_whitespace(&text) {
            Some(text)
        } else {
            None
        }
    }
}

fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || !c.is_ascii()
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c.is_ascii_digit() || c == '-' || c == '.'
}

/// `is_name_start` for the first character and `is_name_char` for the rest, on bytes: every
/// non-ASCII character is allowed, so every byte of its UTF-8 form (all >= 0x80) is too.
fn valid_name(name: &str) -> bool {
    match name.as_bytes() {
        [first, rest @ ..] if NAME_BYTES[usize::from(*first)] & NAME_START != 0 => rest
            .iter()
            .all(|&b| NAME_BYTES[usize::from(b)] & NAME_CHAR != 0),
        _ => false,
    }
}

/// Like [`valid_name`] for an element name: `None` if invalid, else whether it holds a `:`
/// (a prefix to resolve), found in the same pass.
fn element_name_colon(name: &str) -> Option<bool> {
    let (first, rest) = name.as_bytes().split_first()?;
    let mut seen = NAME_BYTES[usize::from(*first)];
    if seen & NAME_START == 0 {
        return None;
    }
    for &b in rest {
        let t = NAME_BYTES[usize::from(b)];
        if t & NAME_CHAR == 0 {
            return None;
        }
        seen |= t;
    }
    Some(seen & COLON != 0)
}

const NAME_START: u8 = 1;
const NAME_CHAR: u8 = 2;
const COLON: u8 = 4;

/// For each byte: `NAME_START` if it may start a name, `NAME_CHAR` if it may follow.
static NAME_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c == b':' {
            t[b] = NAME_START | NAME_CHAR | COLON;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            t[b] = NAME_START | NAME_CHAR;
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            t[b] = NAME_CHAR;
        }
        b += 1;
    }
    t
};

fn parse_core<B: Build>(src: &str, limits: &Limits, plain: &[&str]) -> Result<B, XmlError> {
    if src.len() > limits.max_bytes {
        return Err(error_at(
            src,
            limits.max_bytes,
            format!(
                "document is {} bytes; the limit is {} bytes",
                src.len(),
                limits.max_bytes
            ),
        ));
    }
    // XML 1.0 (Char production) forbids the C0 controls but tab, line feed and carriage
    // return, written or as a reference; quick-xml passes them through, so look once.
    if let Some(at) = src
        .bytes()
        .position(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Err(error_at(
            src,
            at,
            format!(
                "character U+{:04X} is not allowed in XML (only tab, line feed and carriage return among the control characters)",
                src.as_bytes()[at]
            ),
        ));
    }
    // A byte order mark is skipped here so that reader offsets are plain offsets + `bom`.
    let bom = if src.starts_with('\u{feff}') { 3 } else { 0 };
    let mut reader = Reader::from_str(&src[bom..]);
    {
        let cfg = reader.config_mut();
        cfg.trim_text(false);
        cfg.check_end_names = false; // checked below, with better messages
        cfg.expand_empty_elements = false;
    }
    let mut tracker = Tracker::new();
    // Text with a CR needs line-end normalization; one scan of the document spares a scan
    // of every text run in the common case of a document without any.
    let has_cr = src.as_bytes().contains(&b'\r');
    let mut tree = Tree::<B> {
        stack: Vec::new(),
        kids: Vec::new(),
        root: None,
    };
    let mut attrs_scratch: Vec<(Name, Name)> = Vec::new();
    // The namespace declarations in scope: the empty scope, then one entry per open
    // element that declares something (each holding all declarations in scope there).
    let no_scope = NsScope::default();
    let mut scopes: Vec<NsScope> = vec![no_scope.clone()];
    let mut pending = PendingText {
        text: None,
        significant: false,
        start: 0,
    };

    loop {
        let pos = offset(reader.buffer_position(), bom);
        let event = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => {
                let at = offset(reader.error_position(), bom);
                return Err(convert_error(src, e, at, pos, &tree.stack));
            }
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                tree.flush_text(src, &mut pending)?;
                if tree.stack.is_empty() {
                    if let Some(r) = &tree.root {
                        return Err(error_at(
                            src,
                            pos,
                            format!(
                                "a second root element <{}> after </{}>; a document has exactly one root element",
                                String::from_utf8_lossy(e.name().as_ref()),
                                r.name()
                            ),
                        ));
                    }
                }
                if tree.stack.len() + 1 > limits.max_depth {
                    return Err(error_at(
                        src,
                        pos,
                        format!(
                            "elements are nested more than {} deep (the limit)",
                            limits.max_depth
                        ),
                    ));
                }
                let (name, colon) = read_start(src, e, pos, &mut attrs_scratch)?;
                // Exactly sized: most elements have no or few attributes.
                let mut attrs = Vec::with_capacity(attrs_scratch.len());
                attrs.append(&mut attrs_scratch);
                let declared = if attrs.is_empty() {
                    None
                } else {
                    declare(src, pos, &name, &attrs, scopes.last())?
                };
                let declares = declared.is_some();
                if let Some(scope) = declared {
                    scopes.push(scope);
                }
                let node = {
                    let scope = scopes.last().unwrap_or(&no_scope);
                    let ns = if !colon && scope.is_empty() {
                        None // no namespaces anywhere: the common case
                    } else {
                        resolve_element(src, pos, &name, scope)?
                    };
                    B::start(name, ns, scope, attrs, &tree.stack, plain, || {
                        tracker.advance(src, pos)
                    })
                };
                if empty {
                    tree.attach(node);
                    if declares {
                        scopes.pop();
                    }
                } else {
                    let first_child = tree.kids.len();
                    tree.stack.push(Open {
                        node,
                        at: pos,
                        first_child,
                        declares,
                    });
                }
            }
            Event::End(ref e) => {
                tree.flush_text(src, &mut pending)?;
                let raw = e.name();
                let name = raw.as_ref();
                match tree.stack.pop() {
                    None => {
                        return Err(error_at(
                            src,
                            pos,
                            format!(
                                "unexpected </{}>: no element is open",
                                String::from_utf8_lossy(name)
                            ),
                        ))
                    }
                    Some(open) => {
                        if open.node.name().as_bytes() != name {
                            let (l, c) = line_col(src, open.at);
                            return Err(error_at(
                                src,
                                pos,
                                format!(
                                    "expected </{}>, found </{}> (<{}> was opened at line {l}, column {c})",
                                    open.node.name(),
                                    String::from_utf8_lossy(name),
                                    open.node.name()
                                ),
                            ));
                        }
                        if open.declares {
                            scopes.pop();
                        }
                        let mut node = open.node;
                        if tree.kids.len() > open.first_child {
                            node.set_children(&mut tree.kids, open.first_child);
                        }
                        tree.attach(node);
                    }
                }
            }
            Event::Text(t) => {
                // The event covers exactly src[pos..end]: slice it instead of re-validating.
                let end = offset(reader.buffer_position(), bom);
                let text: Cow<'_, str> = match src.get(pos..end) {
                    Some(s) if !has_cr || !s.contains('\r') => Cow::Borrowed(s),
                    _ => t
                        .xml10_content()
                        .map_err(|e| error_at(src, pos, format!("text is not valid UTF-8: {e}")))?,
                };
                if tree.stack.is_empty() {
                    if !is_xml_whitespace(&text) {
                        return Err(outside_root(src, pos, &tree.root));
                    }
                } else {
                    pending.push(text, pos);
                }
            }
            Event::CData(c) => {
                if tree.stack.is_empty() {
                    return Err(outside_root(src, pos, &tree.root));
                }
                let text = c
                    .xml10_content()
                    .map_err(|e| error_at(src, pos, format!("CDATA is not valid UTF-8: {e}")))?;
                pending.push(text, pos);
                pending.significant = true;
            }
            Event::GeneralRef(r) => {
                if tree.stack.is_empty() {
                    return Err(outside_root(src, pos, &tree.root));
                }
                match resolve_ref(src, &r, pos)? {
                    Resolved::Char(ch) => pending.push_char(ch, pos),
                    Resolved::Str(s) => pending.push(Cow::Borrowed(s), pos),
                }
                pending.significant = true;
            }
            Event::DocType(_) => {
                return Err(error_at(
                    src,
                    pos,
                    "DOCTYPE is not allowed (entity expansion is refused)",
                ))
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = tree.stack.last() {
        let (l, c) = line_col(src, open.at);
        return Err(error_at(
            src,
            src.len(),
            format!(
                "unexpected end of document: <{}> at line {l}, column {c} is not closed",
                open.node.name()
            ),
        ));
    }
    match tree.root {
        Some(r) => Ok(r),
        None => Err(error_at(
            src,
            src.len(),
            "empty document: expected a root element",
        )),
    }
}

/// The scope inside an element when it declares namespaces: `outer` plus its own `xmlns`
/// declarations (`None` when it declares none).
#[inline]
fn declare(
    src: &str,
    pos: usize,
    name: &str,
    attrs: &[(Name, Name)],
    outer: Option<&NsScope>,
) -> Result<Option<NsScope>, XmlError> {
    if !attrs
        .iter()
        .any(|(k, _)| k.as_bytes().starts_with(b"xmlns"))
    {
        return Ok(None);
    }
    let mut own = attrs
        .iter()
        .filter_map(|(k, v)| declared_prefix(k).map(|p| (p, v)))
        .peekable();
    if own.peek().is_none() {
        return Ok(None);
    }
    let mut decls: Vec<(Name, Name)> = outer.map(|o| o.as_ref().clone()).unwrap_or_default();
    for (prefix, uri) in own {
        if !prefix.is_empty() && uri.is_empty() {
            return Err(error_at(
                src,
                pos,
                format!(
                    "xmlns:{prefix}=\"\" on <{name}>: a prefix cannot be undeclared in XML 1.0"
                ),
            ));
        }
        if prefix == "xmlns" || (prefix == "xml" && uri != XML_NAMESPACE) {
            return Err(error_at(
                src,
                pos,
                format!("xmlns:{prefix} on <{name}>: the prefix `{prefix}` is reserved"),
            ));
        }
        decls.push((Name::from(prefix), uri.clone()));
    }
    Ok(Some(Arc::new(decls)))
}

/// The namespace of an element name in `scope`; an undeclared prefix is an error.
#[inline]
fn resolve_element(
    src: &str,
    pos: usize,
    name: &str,
    scope: &[(Name, Name)],
) -> Result<Option<NsUri>, XmlError> {
    // The common case, no namespaces anywhere: one byte scan of the name.
    let colon = name.bytes().position(|b| b == b':');
    if colon.is_none() && scope.is_empty() {
        return Ok(None);
    }
    match colon.map(|at| (&name[..at], &name[at + 1..])) {
        None => Ok(lookup_prefix(scope, "").map(Into::into)),
        Some((prefix, local)) => {
            if prefix.is_empty() || local.is_empty() || local.contains(':') {
                return Err(error_at(
                    src,
                    pos,
                    format!("invalid element name `{name}`: a name has at most one `:`, between a prefix and a local name"),
                ));
            }
            match lookup_prefix(scope, prefix) {
                Some(uri) => Ok(Some(uri.into())),
                None => Err(error_at(
                    src,
                    pos,
                    format!(
                        "the prefix `{prefix}` of <{name}> is not declared; add xmlns:{prefix}=\"…\" \
                         (its namespace URI) on this element or an enclosing one"
                    ),
                )),
            }
        }
    }
}

fn offset(reader_pos: u64, bom: usize) -> usize {
    usize::try_from(reader_pos)
        .unwrap_or(usize::MAX)
        .saturating_add(bom)
}

/// The tree under construction: open elements, the children of all open elements
/// (each element's children are a suffix starting at its `first_child`), the root.
struct Tree<B: Build> {
    stack: Vec<Open<B>>,
    kids: Vec<B::Child>,
    root: Option<B>,
}

impl<B: Build> Tree<B> {
    fn attach(&mut self, node: B) {
        if self.stack.is_empty() {
            self.root = Some(node);
        } else {
            self.kids.push(node.wrap());
        }
    }

    fn flush_text(&mut self, src: &str, pending: &mut PendingText<'_>) -> Result<(), XmlError> {
        let start = pending.start;
        if let Some(text) = pending.take() {
            if self.stack.is_empty() {
                return Err(outside_root(src, start, &self.root));
            }
            self.kids.push(B::text(text, &self.stack));
        }
        Ok(())
    }
}

fn outside_root<B: Build>(src: &str, pos: usize, root: &Option<B>) -> XmlError {
    // Point at the first non-blank character of the text.
    let skip = src.get(pos..).map_or(0, |s| {
        s.len() - s.trim_start_matches([' ', '\t', '\r', '\n']).len()
    });
    match root {
        Some(r) => error_at(
            src,
            pos + skip,
            format!(
                "text after the root element </{}>; a document ends with its root element",
                r.name()
            ),
        ),
        None => error_at(
            src,
            pos + skip,
            "text before the root element; a document starts with `<`",
        ),
    }
}

enum Resolved {
    Char(char),
    Str(&'static str),
}

fn resolve_ref(src: &str, r: &BytesRef<'_>, pos: usize) -> Result<Resolved, XmlError> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(c)) => Ok(Resolved::Char(c)),
            Ok(None) | Err(_) => Err(error_at(
                src,
                pos,
                format!(
                    "invalid character reference `&{};`",
                    String::from_utf8_lossy(r.as_ref())
                ),
            )),
        };
    }
    let name = r.as_ref();
    Ok(Resolved::Str(match name {
        b"lt" => "<",
        b"gt" => ">",
        b"amp" => "&",
        b"apos" => "'",
        b"quot" => "\"",
        _ => {
            return Err(error_at(
                src,
                pos,
                format!(
                    "unknown entity `&{};`: only &lt; &gt; &amp; &apos; &quot; and character references (&#NN; &#xHH;) are allowed",
                    String::from_utf8_lossy(name)
                ),
            ))
        }
    }))
}

/// `bytes` as text. The reader borrows its events from `src`, which is UTF-8 already, so a
/// slice of `src` is found by its address instead of validating the bytes again.
fn src_str<'b>(src: &'b str, bytes: &'b [u8]) -> Option<&'b str> {
    let start = (bytes.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize);
    match start
        .checked_add(bytes.len())
        .and_then(|end| src.get(start..end))
    {
        Some(s) if s.as_ptr() == bytes.as_ptr() => Some(s),
        _ => std::str::from_utf8(bytes).ok(),
    }
}

/// Name and attributes of a start tag at byte `pos` (its `<`).
fn read_start(
    src: &str,
    e: &BytesStart<'_>,
    pos: usize,
    attrs: &mut Vec<(Name, Name)>,
) -> Result<(Name, bool), XmlError> {
    let qname = e.name();
    let name = src_str(src, qname.as_ref())
        .ok_or_else(|| error_at(src, pos, "element name is not valid UTF-8"))?;
    let Some(colon) = element_name_colon(name) else {
        return Err(error_at(
            src,
            pos,
            if name.is_empty() {
                "missing element name after `<`".to_string()
            } else {
                format!("invalid element name `{name}`")
            },
        ));
    };
    attrs.clear();
    // Duplicates are checked below against the names already read: quick-xml's own check
    // allocates a list of keys for every start tag.
    for a in e.attributes().with_checks(false) {
        let a = match a {
            Ok(a) => a,
            Err(err) => return Err(attr_error(src, e, pos, err)),
        };
        let key = src_str(src, a.key.as_ref())
            .ok_or_else(|| error_at(src, pos, "attribute name is not valid UTF-8"))?;
        if attrs.iter().any(|(k, _)| k == key) {
            let at = (key.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize);
            return Err(error_at(
                src,
                at.min(src.len()),
                format!("duplicate attribute `{key}` on <{name}>"),
            ));
        }
        if !valid_name(key) {
            return Err(error_at(
                src,
                pos,
                format!("invalid attribute name `{key}` on <{name}>"),
            ));
        }
        let raw = src_str(src, &a.value).ok_or_else(|| {
            error_at(
                src,
                pos,
                format!("value of `{key}` on <{name}> is not valid UTF-8"),
            )
        })?;
        let value = unescape_attr(raw).map_err(|msg| {
            error_at(
                src,
                pos,
                format!("in the value of attribute `{key}` on <{name}>: {msg}"),
            )
        })?;
        attrs.push((Name::from(key), value));
    }
    Ok((Name::from(name), colon))
}

/// Attribute value normalization (literal tab/CR/LF become spaces; CRLF one space),
/// then references are resolved.
fn unescape_attr(raw: &str) -> Result<Name, String> {
    if !raw
        .bytes()
        .any(|b| matches!(b, b'\t' | b'\r' | b'\n' | b'<' | b'&'))
    {
        return Ok(Name::from(raw));
    }
    let needs_norm = raw.bytes().any(|b| matches!(b, b'\t' | b'\r' | b'\n'));
    let normalized: Cow<'_, str> = if needs_norm {
        Cow::Owned(raw.replace("\r\n", " ").replace(['\t', '\r', '\n'], " "))
    } else {
        Cow::Borrowed(raw)
    };
    if normalized.contains('<') {
        return Err("`<` must be written as &lt;".into());
    }
    if !normalized.contains('&') {
        return Ok(Name::from(normalized));
    }
    let mut out = String::with_capacity(normalized.len());
    let mut rest: &str = &normalized;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after
            .find(';')
            .ok_or_else(|| "`&` must be written as &amp;".to_string())?;
        let name = &after[..semi];
        match name {
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "amp" => out.push('&'),
            "apos" => out.push('\''),
            "quot" => out.push('"'),
            _ => {
                let code = if let Some(hex) =
                    name.strip_prefix("#x").or_else(|| name.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = name.strip_prefix('#') {
                    dec.parse::<u32>().ok()
                } else {
                    return Err(format!(
                        "unknown entity `&{name};`: only &lt; &gt; &amp; &apos; &quot; and character references are allowed"
                    ));
                };
                match code.and_then(char::from_u32).filter(|c| *c != '\0') {
                    Some(c) => out.push(c),
                    None => return Err(format!("invalid character reference `&{name};`")),
                }
            }
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(Name::from(out))
}

fn attr_error(
    src: &str,
    e: &BytesStart<'_>,
    pos: usize,
    err: quick_xml::events::attributes::AttrError,
) -> XmlError {
    use quick_xml::events::attributes::AttrError as A;
    let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    // Positions are relative to the tag content, which starts after `<`.
    let (rel, msg) = match err {
        A::ExpectedEq(p) => (
            p,
            format!("bad attribute on <{tag}>: a name must be followed by `=` and a quoted value"),
        ),
        A::ExpectedValue(p) => (
            p,
            format!("bad attribute on <{tag}>: `=` must be followed by a quoted value"),
        ),
        A::UnquotedValue(p) => (
            p,
            format!("bad attribute on <{tag}>: values must be quoted (\"…\" or '…')"),
        ),
        A::ExpectedQuote(p, q) => (
            p,
            format!(
                "bad attribute on <{tag}>: the value is not closed with {}",
                q as char
            ),
        ),
        A::Duplicated(p, _) => {
            let key: String = src
                .get(pos + 1 + p..)
                .unwrap_or("")
                .chars()
                .take_while(|c| is_name_char(*c))
                .collect();
            (p, format!("duplicate attribute `{key}` on <{tag}>"))
        }
    };
    error_at(src, pos + 1 + rel, msg)
}

fn convert_error<B: Build>(
    src: &str,
    e: quick_xml::Error,
    at: usize,
    pos: usize,
    stack: &[Open<B>],
) -> XmlError {
    use quick_xml::errors::{IllFormedError as I, SyntaxError as S};
    use quick_xml::Error as E;
    let msg = match e {
        E::Syntax(S::UnclosedTag) => "unclosed tag: `<` without its closing `>`".to_string(),
        E::Syntax(S::UnclosedComment) => "comment not closed: `<!--` without `-->`".to_string(),
        E::Syntax(S::UnclosedCData) => {
            "CDATA section not closed: `<![CDATA[` without `]]>`".to_string()
        }
        E::Syntax(S::UnclosedDoctype) | E::IllFormed(I::MissingDoctypeName) => {
            "DOCTYPE is not allowed (entity expansion is refused)".to_string()
        }
        E::Syntax(S::UnclosedPIOrXmlDecl) => {
            "processing instruction or XML declaration not closed: `<?` without `?>`".to_string()
        }
        E::Syntax(S::InvalidBangMarkup) => {
            "unknown markup after `<!`: expected a comment `<!-- -->` or `<![CDATA[ ]]>`"
                .to_string()
        }
        E::IllFormed(I::MissingDeclVersion(_)) => {
            "the XML declaration needs version=\"1.0\"".to_string()
        }
        E::IllFormed(I::UnmatchedEndTag(name)) => {
            return error_at(
                src,
                pos,
                format!("unexpected </{name}>: no element is open"),
            )
        }
        E::IllFormed(I::MissingEndTag(name)) => match stack.last() {
            Some(open) => {
                let (l, c) = line_col(src, open.at);
                format!(
                    "unexpected end of document: <{}> at line {l}, column {c} is not closed",
                    open.node.name()
                )
            }
            None => format!("<{name}> is not closed"),
        },
        E::IllFormed(I::UnclosedReference) => {
            "`&` starts a reference that is not closed with `;` (write &amp; for a literal &)"
                .to_string()
        }
        E::IllFormed(I::DoubleHyphenInComment) => "`--` is not allowed inside a comment".into(),
        E::Encoding(err) => format!("invalid text encoding: {err}"),
        E::Escape(err) => format!("bad reference: {err}"),
        E::InvalidAttr(err) => format!("bad attribute: {err}"),
        other => other.to_string(),
    };
    error_at(src, at, msg)
}

// ---------------------------------------------------------------------------------------
// Writer

fn escape_text(s: &str, out: &mut String) {
    if is_xml_whitespace(s) && !s.is_empty() {
        // Whitespace-only text would be dropped on parsing: keep it as references.
        for b in s.bytes() {
            out.push_str(match b {
                b' ' => "&#32;",
                b'\t' => "&#9;",
                b'\n' => "&#10;",
                _ => "&#13;",
            });
        }
        return;
    }
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'\r' => "&#13;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

fn escape_attr(s: &str, out: &mut String) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\t' => "&#9;",
            b'\n' => "&#10;",
            b'\r' => "&#13;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// The namespace declarations in scope while writing: (prefix, URI), innermost last.
#[derive(Default)]
struct WriteScope {
    decls: Vec<(Name, Name)>,
}

/// Writes a start tag (without its closing `>`) and the declarations the element needs
/// where it is written: its own `xmlns` attributes, plus `xmlns`/`xmlns:p` when its
/// namespace is not the one its prefix (or the default) has here — so a namespace-less
/// element under a default-namespaced one gets `xmlns=""`, and an element moved out of
/// the element that declared its prefix declares it itself. Returns how many
/// declarations it pushed on `scope`.
fn write_open(e: &Element, out: &mut String, scope: &mut WriteScope) -> usize {
    out.push('<');
    out.push_str(&e.name);
    let before = scope.decls.len();
    for (k, v) in &e.attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("=\"");
        escape_attr(v, out);
        out.push('"');
        if let Some(p) = declared_prefix(k) {
            scope.decls.push((Name::from(p), v.clone()));
        }
    }
    if scope.decls.is_empty() && e.ns.is_none() {
        return 0; // the common case: no namespaces anywhere
    }
    let prefix = match e.name.split_once(':') {
        Some((p, _)) => p,
        None => "",
    };
    if e.ns.is_none() && !prefix.is_empty() {
        // A name with a colon but no namespace (from YAML or JSON): written as is.
        return scope.decls.len() - before;
    }
    let own = e
        .attrs
        .iter()
        .any(|(k, _)| declared_prefix(k) == Some(prefix));
    let want = e.ns.as_deref().unwrap_or("");
    if !own && lookup_prefix(&scope.decls, prefix).unwrap_or("") != want && prefix != "xml" {
        out.push_str(" xmlns");
        if !prefix.is_empty() {
            out.push(':');
            out.push_str(prefix);
        }
        out.push_str("=\"");
        escape_attr(want, out);
        out.push('"');
        scope.decls.push((Name::from(prefix), Name::from(want)));
    }
    scope.decls.len() - before
}

fn indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// Writes a tree without recursion. In pretty mode, an element whose children are all
/// elements puts each child on its own indented line; anything else is written compactly.
fn write_tree(root: &Element, out: &mut String, pretty: bool) {
    let mut scope = WriteScope::default();
    // (element, index of the next child, children are indented, declarations it pushed)
    let mut stack: Vec<(&Element, usize, bool, usize)> = Vec::new();
    let pushed = write_open(root, out, &mut scope);
    if root.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    let root_indented = pretty && root.children.iter().all(|c| matches!(c, Node::Element(_)));
    stack.push((root, 0, root_indented, pushed));
    while let Some(top) = stack.last_mut() {
        let (e, idx, indented, pushed) = (top.0, top.1, top.2, top.3);
        if idx < e.children.len() {
            top.1 += 1;
            let level = stack.len();
            match &e.children[idx] {
                Node::Text(s) => escape_text(&s.to_text(), out),
                Node::Element(child) => {
                    if indented {
                        indent(out, level);
                    }
                    let pushed = write_open(child, out, &mut scope);
                    if child.children.is_empty() {
                        out.push_str("/>");
                        scope.decls.truncate(scope.decls.len() - pushed);
                    } else {
                        out.push('>');
                        let child_indented = indented
                            && child.children.iter().all(|c| matches!(c, Node::Element(_)));
                        stack.push((child, 0, child_indented, pushed));
                    }
                }
            }
        } else {
            stack.pop();
            scope.decls.truncate(scope.decls.len() - pushed);
            if indented {
                indent(out, stack.len());
            }
            out.push_str("</");
            out.push_str(&e.name);
            out.push('>');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Element, XmlError> {
        parse(s, &Limits::default())
    }

    fn err(s: &str) -> XmlError {
        match p(s) {
            Ok(e) => panic!("expected an error for {s:?}, got {e:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_attributes_text_and_order() {
        let e = p(r#"<?xml version="1.0"?>
<!-- c -->
<data a="1" b='x &amp; y' xmlns:ns="urn:x">
  <user>ann</user>
  <group>g</group>
  <user> bob </user>
  <?pi stuff?>
  <ns:x>1 &lt; 2 <![CDATA[<raw>]]></ns:x>
</data>"#)
        .unwrap();
        assert_eq!(e.name, "data");
        assert_eq!(e.attr("b"), Some("x & y"));
        let names: Vec<_> = e.elements().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["user", "group", "user", "ns:x"]);
        assert_eq!(e.children.len(), 4);
        let bob = e.elements().nth(2).unwrap();
        assert_eq!(bob.text(), " bob ");
        assert_eq!(e.child("ns:x").unwrap().text(), "1 < 2 <raw>");
    }

    #[test]
    fn namespaces_are_resolved_and_declared_where_elements_end_up() {
        let e = p(r#"<data xmlns:p="urn:p"><p:user id="1"><name>ann</name></p:user><t xmlns="urn:t"><u/></t></data>"#).unwrap();
        let user = e.child("p:user").unwrap();
        assert_eq!(user.ns.as_deref(), Some("urn:p"));
        assert_eq!(user.local_name(), "user");
        assert_eq!(user.child("name").unwrap().ns, None);
        let t = e.child("t").unwrap();
        assert_eq!(t.ns.as_deref(), Some("urn:t"));
        assert_eq!(t.child("u").unwrap().ns.as_deref(), Some("urn:t"));
        // Written where it was, nothing is added.
        assert_eq!(p(&to_string(&e)).unwrap(), e);
        assert_eq!(
            to_string(&e),
            r#"<data xmlns:p="urn:p"><p:user id="1"><name>ann</name></p:user><t xmlns="urn:t"><u/></t></data>"#
        );
        // Moved out of the element that declared its prefix, it declares it itself.
        assert_eq!(
            to_string(user),
            r#"<p:user id="1" xmlns:p="urn:p"><name>ann</name></p:user>"#
        );
        // A namespace-less element under a default-namespaced one gets xmlns="" (MPS).
        let mut t2 = t.clone();
        t2.push(Element::with_text("plain", "x"));
        let written = to_string(&t2);
        assert_eq!(
            written,
            r#"<t xmlns="urn:t"><u/><plain xmlns="">x</plain></t>"#
        );
        let back = p(&written).unwrap();
        assert_eq!(back.child("plain").unwrap().ns, None);
        // xml: is always bound.
        assert_eq!(
            p(r#"<a><xml:b/></a>"#)
                .unwrap()
                .child("xml:b")
                .unwrap()
                .ns
                .as_deref(),
            Some(XML_NAMESPACE)
        );
    }

    #[test]
    fn undeclared_prefixes_are_refused() {
        let e = err("<data>\n  <p:user/>\n</data>");
        assert_eq!((e.line, e.column), (2, 3));
        assert!(e.message.contains("prefix `p`"), "{e:?}");
        let e = err(r#"<data xmlns:p=""/>"#);
        assert!(e.message.contains("cannot be undeclared"), "{e:?}");
        // A declaration ends with its element.
        assert!(p(r#"<d><a xmlns:p="urn:p"><p:x/></a><p:y/></d>"#).is_err());
    }

    #[test]
    fn mixed_content_kept() {
        let e = p("<a>x <b>y</b> z</a>").unwrap();
        assert_eq!(e.children.len(), 3);
        assert_eq!(to_string(&e), "<a>x <b>y</b> z</a>");
        assert_eq!(to_string_pretty(&e), "<a>x <b>y</b> z</a>");
    }

    #[test]
    fn round_trip_compact_and_pretty() {
        let src = r#"<data k="a&quot;b&lt;c&#10;d"><u n="1">t&amp;x</u><u/><g><h>1</h><h> </h></g>m<q/></data>"#;
        let e = p(src).unwrap();
        let s = to_string(&e);
        assert_eq!(p(&s).unwrap(), e);
        assert_eq!(p(&to_string_pretty(&e)).unwrap(), e);
        assert_eq!(e.attr("k"), Some("a\"b<c\nd"));
    }

    #[test]
    fn pretty_layout() {
        let e = p("<a><b><c>1</c><d/></b><e>x</e></a>").unwrap();
        assert_eq!(
            to_string_pretty(&e),
            "<a>\n  <b>\n    <c>1</c>\n    <d/>\n  </b>\n  <e>x</e>\n</a>"
        );
    }

    #[test]
    fn scalars_written_as_text() {
        let mut e = Element::new("a");
        e.push(Element::with_scalar("n", Scalar::Int(5)));
        e.push(Element::with_scalar("b", Scalar::Bool(true)));
        assert_eq!(to_string(&e), "<a><n>5</n><b>true</b></a>");
    }

    #[test]
    fn whitespace_only_text_round_trips() {
        let e = Element::with_text("a", "  ");
        let s = to_string(&e);
        assert_eq!(p(&s).unwrap(), e);
        assert_eq!(p("<a>  </a>").unwrap(), Element::new("a"));
    }

    #[test]
    fn bom_and_declaration_accepted() {
        assert_eq!(p("\u{feff}<a/>").unwrap(), Element::new("a"));
        assert_eq!(
            p("\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<a/>\n").unwrap(),
            Element::new("a")
        );
    }

    #[test]
    fn crlf_normalized() {
        let e = p("<a>x\r\ny</a>").unwrap();
        assert_eq!(e.text(), "x\ny");
    }

    #[test]
    fn error_positions() {
        let e = err("<data>\n  <user>\n</data>");
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("expected </user>, found </data>"), "{e}");

        let e = err("<data>\n  <user>x</user>\n");
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(
            e.message
                .contains("unexpected end of document: <data> at line 1"),
            "{e}"
        );

        let e = err("<a>\n <b c=d/></a>");
        assert_eq!((e.line, e.column), (2, 7), "{e}");
        assert!(e.message.contains("quoted"), "{e}");

        let e = err("<a/>\n  junk");
        assert_eq!((e.line, e.column), (2, 3), "{e}");
        assert!(e.message.contains("after the root"), "{e}");

        let e = err("<a/><b/>");
        assert_eq!((e.line, e.column), (1, 5), "{e}");

        let e = err("");
        assert_eq!((e.line, e.column), (1, 1), "{e}");
        assert!(e.message.contains("empty document"), "{e}");

        let e = err("<a>\n  <b\n");
        assert_eq!(e.line, 2, "{e}");

        let e = err("<a>&nbsp;</a>");
        assert!(e.message.contains("unknown entity"), "{e}");
        assert_eq!((e.line, e.column), (1, 4), "{e}");

        let e = err("<a x=\"1\" x=\"2\"/>");
        assert!(e.message.contains("duplicate attribute `x`"), "{e}");
        assert_eq!((e.line, e.column), (1, 10), "{e}");

        let e = err("</a>");
        assert!(e.message.contains("no element is open"), "{e}");

        let e = err("<é>\n<1x/></é>");
        assert_eq!((e.line, e.column), (2, 1), "{e}");
    }

    #[test]
    fn doctype_refused() {
        let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
]>
<lolz>&lol2;</lolz>"#;
        let e = err(bomb);
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("DOCTYPE is not allowed"), "{e}");
    }

    #[test]
    fn depth_limit_no_stack_overflow() {
        let n = 10_000;
        let doc = format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
        let e = err(&doc);
        assert!(e.message.contains("nested more than 128"), "{e}");
        assert_eq!((e.line, e.column), (1, 128 * 3 + 1));
        // A generous limit works too (the parser and writer are iterative; the depth is
        // kept moderate only because derived Drop/PartialEq of the tree are recursive).
        let m = 1_000;
        let doc = format!("{}x{}", "<a>".repeat(m), "</a>".repeat(m));
        let limits = Limits {
            max_bytes: usize::MAX,
            max_depth: m,
        };
        let tree = parse(&doc, &limits).unwrap();
        assert_eq!(tree.depth(), m);
        assert_eq!(to_string(&tree), doc);
        let back = parse_located(&doc, &limits).unwrap().into_element();
        assert_eq!(to_string(&back), doc);
        assert!(parse(
            &doc,
            &Limits {
                max_depth: m - 1,
                ..limits
            }
        )
        .is_err());
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_bytes: 10,
            max_depth: 10,
        };
        let e = parse("<a>\n0123456789</a>", &limits).unwrap_err();
        assert!(e.message.contains("the limit is 10 bytes"), "{e}");
        assert_eq!((e.line, e.column), (2, 7));
    }

    #[test]
    fn located_positions() {
        let l = parse_located(
            "<a>\n  <b x=\"1\"/>\n\t<c>é<d/></c></a>",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!((l.line, l.column), (1, 1));
        let kids: Vec<_> = l.elements().collect();
        assert_eq!((kids[0].line, kids[0].column), (2, 3));
        assert_eq!(kids[0].attr("x"), Some("1"));
        assert_eq!((kids[1].line, kids[1].column), (3, 2));
        let d = kids[1].elements().next().unwrap();
        assert_eq!((d.line, d.column), (3, 6));
        assert_eq!(
            l.to_element(),
            parse("<a><b x=\"1\"/><c>é<d/></c></a>", &Limits::default()).unwrap()
        );
    }
}
