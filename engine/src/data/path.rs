//! Paths into the data tree: the XPath subset MPS requests use, parsed once, selected many times.
//!
//! A path is always relative to a scope element (the context node): `organization/users/user`
//! selects the `user` children of the `users` children of the scope's `organization` children.
//! The grammar is documented in `docs/data-model.md`; in short:
//!
//! ```text
//! path      := step ( '/' step )*
//! step      := name preds | '*' preds | '.' preds | '..' preds
//!            | '@' name | '@*' | 'text()'          (these three: last step only)
//! preds     := ( '[' pred ']' )*
//! pred      := N (1-based) | 'last()' | or-expr
//! or-expr   := and-expr ( 'or' and-expr )*
//! and-expr  := unary ( 'and' unary )*
//! unary     := 'not(' or-expr ')' | '(' or-expr ')' | operand [ ( '=' | '!=' ) literal ]
//! operand   := a relative path (`@a`, `.`, `child`, `a/b/@c`, `text()`, ...)
//! literal   := '…' | "…" | number
//! ```
//!
//! ```
//! use provisio_engine::data::{Element, Path};
//! let mut root = Element::new("data");
//! let users = root.push(Element::new("users"));
//! let mut ann = Element::with_text("user", "ann");
//! ann.set_attr("status", "new");
//! users.push(ann);
//! users.push(Element::with_text("user", "bob"));
//! let p = Path::parse("users/user[@status='new']").unwrap();
//! assert_eq!(p.select(&root).len(), 1);
//! ```

use std::fmt;
use std::str::FromStr;

use super::{Element, Node, Scalar};

/// Deepest nesting of predicates, parentheses and `not(...)` a path may use.
const MAX_NESTING: usize = 16;

/// Most `and`/`or` operators in one chain (they nest, so this bounds recursion).
const MAX_CHAIN: usize = 32;

/// Paths with more steps than this are walked without recursion.
const MAX_PLAIN_STEPS: usize = 64;

/// A parse error in a path, with the column (1-based, in characters) where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad path `{path}` at column {column}: {message}")]
pub struct PathError {
    /// The path as written.
    pub(crate) path: String,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// A parsed path such as `organization/users/user[@status='new']/@name`.
///
/// `Display` prints the canonical form (which parses back to the same path); `Path::as_str`
/// returns the text as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    steps: Vec<Step>,
    /// Only child steps without predicates (and `.`), then maybe `@a`/`text()`: no
    /// `..`, so selection is a plain depth-first walk without bookkeeping.
    plain: bool,
}

/// One node a path selected.
#[derive(Debug, Clone, PartialEq)]
pub enum Selected<'a> {
    /// An element.
    Element(&'a Element),
    /// An attribute of an element.
    Attr {
        /// Attribute name.
        name: &'a str,
        /// Attribute value.
        value: &'a str,
    },
    /// The text of an element (`text()`).
    Text(String),
}

impl Selected<'_> {
    #[cfg(test)]
    /// The XPath string value of the selected node.
    pub(crate) fn string_value(&self) -> String {
        match self {
            Selected::Element(e) => string_value(e),
            Selected::Attr { value, .. } => (*value).to_string(),
            Selected::Text(s) => s.clone(),
        }
    }
}

/// Where a selected node lives, as indices from the root: used to mutate the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Indices into `children` (text nodes count) from the root down to the element
    /// itself (for [`LocationKind::Element`]) or to the element that owns the attribute or text.
    /// Empty = the root.
    pub indices: Vec<usize>,
    /// What is selected at that element.
    pub(crate) kind: LocationKind,
}

/// The kind of node a [`Location`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocationKind {
    /// The element itself.
    Element,
    /// Attribute number `n` (index into `attrs`) of the element.
    Attr(usize),
    /// Child number `n` (index into `children`) of the element, a text node.
    Text(usize),
}

impl Location {
    /// The element at `indices` (the element itself or the owner of the attribute/text).
    pub(crate) fn element<'a>(&self, root: &'a Element) -> Option<&'a Element> {
        element_at(root, &self.indices)
    }

    /// The element at `indices`, mutable.
    pub(crate) fn element_mut<'a>(&self, root: &'a mut Element) -> Option<&'a mut Element> {
        element_at_mut(root, &self.indices)
    }
}

/// The element reached by following child `indices` from `root` (empty = root).
pub(crate) fn element_at<'a>(root: &'a Element, indices: &[usize]) -> Option<&'a Element> {
    let mut cur = root;
    for &i in indices {
        match cur.children.get(i) {
            Some(Node::Element(e)) => cur = e,
            _ => return None,
        }
    }
    Some(cur)
}

/// The element reached by following child `indices` from `root`, mutable.
pub(crate) fn element_at_mut<'a>(
    root: &'a mut Element,
    indices: &[usize],
) -> Option<&'a mut Element> {
    let mut cur = root;
    for &i in indices {
        match cur.children.get_mut(i) {
            Some(Node::Element(e)) => cur = e,
            _ => return None,
        }
    }
    Some(cur)
}

/// Whether `s` is a valid element or attribute name in a path (and so in the JSON view):
/// it starts with a letter, digit or `_` and continues with letters, digits, `_`, `-`, `.`, `:`,
/// and it does not contain `::` (that would be an XPath axis).
pub(crate) fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if is_name_start(c) => {}
        _ => return false,
    }
    chars.all(is_name_char) && !s.contains("::")
}

fn is_name_start(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

// ---------------------------------------------------------------------------------------------
// AST

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Child { test: NameTest, preds: Vec<Pred> },
    SelfNode { preds: Vec<Pred> },
    Parent { preds: Vec<Pred> },
    Attr(NameTest),
    Text,
}

#[derive(Debug, Clone, PartialEq)]
enum NameTest {
    Any,
    /// A name without a namespace: matches an element of no namespace with this name (a
    /// YAML/JSON name with a colon is matched as written), or an attribute as written.
    Name(String),
    /// `Q{uri}local` (XPath 3.0's URI-qualified name; what an XML request's `p:local`
    /// becomes once its prefix is resolved): an element of that namespace and local name.
    Ns {
        uri: String,
        local: String,
    },
}

impl NameTest {
    /// Whether an attribute name matches (attributes carry no namespace: as written).
    fn matches(&self, name: &str) -> bool {
        match self {
            NameTest::Any => true,
            NameTest::Name(n) => n == name,
            NameTest::Ns { .. } => false,
        }
    }

    /// Whether an element matches: its namespace and (local) name.
    fn matches_elem(&self, e: &Element) -> bool {
        match self {
            NameTest::Any => true,
            NameTest::Name(n) => e.ns.is_none() && e.name == n.as_str(),
            NameTest::Ns { uri, local } => {
                e.ns.as_deref() == Some(uri.as_str()) && e.local_name() == local
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Pred {
    Position(usize),
    Last,
    Test(Expr),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Exists(Operand),
    Cmp {
        lhs: Operand,
        ne: bool,
        rhs: Literal,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// `.`
    Dot,
    /// `@a` / `@*`
    Attr(NameTest),
    /// `text()`
    Text,
    /// `child`
    Child(String),
    /// Anything longer: `a/b/@c`, `*[1]`, `..`.
    Steps(Vec<Step>),
}

impl Operand {
    fn from_steps(mut steps: Vec<Step>) -> Operand {
        if steps.len() == 1 {
            match steps.pop() {
                Some(Step::SelfNode { preds }) if preds.is_empty() => return Operand::Dot,
                Some(Step::Attr(t)) => return Operand::Attr(t),
                Some(Step::Text) => return Operand::Text,
                Some(Step::Child {
                    test: NameTest::Name(n),
                    preds,
                }) if preds.is_empty() => return Operand::Child(n),
                Some(other) => steps.push(other),
                None => {}
            }
        }
        Operand::Steps(steps)
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

/// Resolves a prefix to its namespace URI (`None`: not bound).
pub type PrefixResolver<'r> = &'r dyn Fn(&str) -> Option<String>;

struct Parser<'s> {
    text: &'s str,
    chars: Vec<char>,
    pos: usize,
    depth: usize,
    /// Prefixes of element names are resolved through this (XML requests); without it a
    /// prefixed name is matched as written (YAML, JSON).
    resolve: Option<PrefixResolver<'s>>,
}

impl Parser<'_> {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, PathError> {
        Err(PathError {
            path: self.text.to_string(),
            column: at + 1,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<char> {
        self.chars.get(self.pos + off).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn describe(&self) -> String {
        match self.peek() {
            Some(c) => format!("`{c}`"),
            None => "the end of the path".to_string(),
        }
    }

    /// A name: starts with a letter, digit or `_`.
    fn name(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// A whole path, or a path used as an operand inside a predicate (`nested`).
    fn steps(&mut self, nested: bool) -> Result<Vec<Step>, PathError> {
        let mut steps = Vec::new();
        if !nested {
            self.skip_ws();
        }
        if self.peek() == Some('/') {
            let at = self.pos;
            let msg = if self.peek_at(1) == Some('/') {
                "paths are relative to their scope and `//` (search anywhere) is not supported; \
                 write the steps from the scope down, e.g. `users/user`"
            } else {
                "paths are relative to their scope (data, executeData, a forEach name, …); \
                 remove the leading `/`, e.g. `users/user`"
            };
            return self.err(at, msg);
        }
        loop {
            let step_at = self.pos;
            let step = self.step()?;
            let terminal = matches!(step, Step::Attr(_) | Step::Text);
            steps.push(step);
            if !nested {
                self.skip_ws();
            }
            if self.peek() != Some('/') {
                break;
            }
            let slash = self.pos;
            if terminal {
                return self.err(
                    slash,
                    format!(
                        "`{}` selects a value and must be the last step; \
                         put conditions on the element instead, e.g. `user[@id='1']/@name`",
                        self.chars[step_at..slash].iter().collect::<String>()
                    ),
                );
            }
            self.pos += 1;
            if self.peek() == Some('/') {
                return self.err(
                    slash,
                    "`//` (search at any depth) is not supported; spell out each step, e.g. `a/b/c`",
                );
            }
            if !nested {
                self.skip_ws();
            }
            if self.peek().is_none() {
                return self.err(slash, "a path cannot end with `/`; remove it or add a step");
            }
        }
        Ok(steps)
    }

    fn step(&mut self) -> Result<Step, PathError> {
        let at = self.pos;
        match self.peek() {
            Some('@') => {
                self.pos += 1;
                if self.eat('*') {
                    return Ok(Step::Attr(NameTest::Any));
                }
                if !self.peek().is_some_and(is_name_start) {
                    return self.err(
                        self.pos,
                        format!(
                            "expected an attribute name after `@`, found {}",
                            self.describe()
                        ),
                    );
                }
                let name = self.name();
                self.check_name(at + 1, &name)?;
                if self.peek() == Some('[') {
                    return self.err(
                        self.pos,
                        "predicates on attributes are not supported; test the attribute on its \
                         element instead, e.g. `user[@type='x']/@type`",
                    );
                }
                Ok(Step::Attr(NameTest::Name(name)))
            }
            Some('*') => {
                self.pos += 1;
                let preds = self.preds()?;
                Ok(Step::Child {
                    test: NameTest::Any,
                    preds,
                })
            }
            Some('.') => {
                self.pos += 1;
                if self.eat('.') {
                    if self.peek() == Some('.') {
                        return self.err(
                            at,
                            "`...` is not a step; use `.` (this element) or `..` (its parent)",
                        );
                    }
                    let preds = self.preds()?;
                    Ok(Step::Parent { preds })
                } else {
                    let preds = self.preds()?;
                    Ok(Step::SelfNode { preds })
                }
            }
            Some('Q') if self.peek_at(1) == Some('{') => {
                self.pos += 2;
                let start = self.pos;
                while self.peek().is_some_and(|c| c != '}' && c != '{') {
                    self.pos += 1;
                }
                if !self.eat('}') {
                    return self.err(
                        at,
                        "`Q{` starts a namespace URI that is not closed with `}`",
                    );
                }
                let uri: String = self.chars[start..self.pos - 1].iter().collect();
                let local_at = self.pos;
                let local = self.name();
                if local.is_empty() || local.contains(':') || !local.starts_with(is_name_start) {
                    return self.err(
                        local_at,
                        "expected a local name (without a prefix) after `Q{…}`",
                    );
                }
                let preds = self.preds()?;
                let test = if uri.is_empty() {
                    NameTest::Name(local)
                } else {
                    NameTest::Ns { uri, local }
                };
                Ok(Step::Child { test, preds })
            }
            Some(c) if is_name_start(c) => {
                let name = self.name();
                if self.peek() == Some('(') {
                    if name == "text" && self.peek_at(1) == Some(')') {
                        self.pos += 2;
                        if self.peek() == Some('[') {
                            return self.err(
                                self.pos,
                                "predicates on `text()` are not supported; test the element \
                                 instead, e.g. `name[.='x']/text()`",
                            );
                        }
                        return Ok(Step::Text);
                    }
                    return self.err(
                        at,
                        format!(
                            "`{name}(` is not supported here; the functions are `text()` \
                             (last step), and `last()` and `not(...)` inside `[...]`"
                        ),
                    );
                }
                self.check_name(at, &name)?;
                let test = self.element_test(at, name)?;
                let preds = self.preds()?;
                Ok(Step::Child { test, preds })
            }
            _ => self.err(
                at,
                format!(
                    "expected a step (a name, `*`, `.`, `..`, `@name` or `text()`), found {}",
                    self.describe()
                ),
            ),
        }
    }

    /// The test for an element name: with a resolver, `p:local` becomes the namespace of
    /// `p` (an unbound prefix is an error); an unprefixed name is of no namespace.
    fn element_test(&self, at: usize, name: String) -> Result<NameTest, PathError> {
        let Some(resolve) = self.resolve else {
            return Ok(NameTest::Name(name));
        };
        let Some((prefix, local)) = name.split_once(':') else {
            return Ok(NameTest::Name(name));
        };
        if prefix.is_empty() || local.is_empty() || local.contains(':') {
            return self.err(at, format!("`{name}` is not a valid name: at most one `:`, between a prefix and a local name"));
        }
        match resolve(prefix) {
            Some(uri) => Ok(NameTest::Ns {
                uri,
                local: local.to_string(),
            }),
            None => self.err(
                at,
                format!(
                    "the prefix `{prefix}` is not bound; declare it with xmlns:{prefix}=\"…\" \
                     on the request (or namespace file) or an enclosing element"
                ),
            ),
        }
    }

    fn check_name(&self, at: usize, name: &str) -> Result<(), PathError> {
        if let Some(i) = name.find("::") {
            let col = at + name[..i].chars().count();
            return self.err(
                col,
                "XPath axes (`child::`, `attribute::`, …) are not supported; use `name`, \
                 `@name`, `.` or `..`",
            );
        }
        Ok(())
    }

    fn preds(&mut self) -> Result<Vec<Pred>, PathError> {
        let mut preds = Vec::new();
        while self.peek() == Some('[') {
            let open = self.pos;
            self.pos += 1;
            self.enter(open)?;
            self.skip_ws();
            let pred = self.pred()?;
            self.skip_ws();
            if !self.eat(']') {
                return self.err(
                    self.pos,
                    format!(
                        "expected `]` to close the `[` at column {}, found {}",
                        open + 1,
                        self.describe()
                    ),
                );
            }
            self.depth -= 1;
            preds.push(pred);
        }
        Ok(preds)
    }

    fn enter(&mut self, at: usize) -> Result<(), PathError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err(
                at,
                format!("predicates nest too deeply (more than {MAX_NESTING} levels)"),
            );
        }
        Ok(())
    }

    fn pred(&mut self) -> Result<Pred, PathError> {
        let at = self.pos;
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                let mut n: usize = 0;
                while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
                    n = match n.checked_mul(10).and_then(|n| n.checked_add(d as usize)) {
                        Some(n) => n,
                        None => return self.err(at, "position is too large"),
                    };
                    self.pos += 1;
                }
                if self.peek().is_some_and(|c| c == '.' || is_name_char(c)) {
                    return self.err(
                        at,
                        "a position must be a whole number, e.g. `[2]`; names cannot start a \
                         predicate with a digit",
                    );
                }
                if n == 0 {
                    return self.err(at, "positions are 1-based: the first match is `[1]`");
                }
                Ok(Pred::Position(n))
            }
            Some('-') => self.err(
                at,
                "positions are 1-based and cannot be negative; use `[last()]` for the last match",
            ),
            Some(']') => self.err(at, "empty predicate `[]`; write a position or a condition"),
            _ => {
                if self.looking_at_call("last") {
                    self.pos += "last".len();
                    self.skip_ws();
                    self.pos += 1; // '('
                    self.skip_ws();
                    if !self.eat(')') {
                        return self.err(self.pos, "expected `)` after `last(`");
                    }
                    self.skip_ws();
                    if self.peek() != Some(']') {
                        return self.err(
                            self.pos,
                            "only `[last()]` is supported (no arithmetic such as `last()-1`)",
                        );
                    }
                    return Ok(Pred::Last);
                }
                Ok(Pred::Test(self.or_expr()?))
            }
        }
    }

    /// Whether the input at `pos` is `word` followed by optional spaces and `(`.
    fn looking_at_call(&self, word: &str) -> bool {
        let mut i = self.pos;
        for w in word.chars() {
            if self.chars.get(i) != Some(&w) {
                return false;
            }
            i += 1;
        }
        while self.chars.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        self.chars.get(i) == Some(&'(')
    }

    /// Whether the input at `pos` is the keyword `word` (followed by a non-name character).
    fn looking_at_keyword(&self, word: &str) -> bool {
        let mut i = self.pos;
        for w in word.chars() {
            if self.chars.get(i) != Some(&w) {
                return false;
            }
            i += 1;
        }
        !self.chars.get(i).is_some_and(|&c| is_name_char(c))
    }

    fn or_expr(&mut self) -> Result<Expr, PathError> {
        let mut lhs = self.and_expr()?;
        let mut chain = 0;
        loop {
            self.skip_ws();
            if self.looking_at_keyword("or") {
                chain += 1;
                if chain > MAX_CHAIN {
                    return self.err(
                        self.pos,
                        format!("more than {MAX_CHAIN} `or` in a row; split the test"),
                    );
                }
                self.pos += 2;
                self.skip_ws();
                let rhs = self.and_expr()?;
                lhs = Expr::Or(Box::new(lhs), Box::new(rhs));
            } else {
                return Ok(lhs);
            }
        }
    }

    fn and_expr(&mut self) -> Result<Expr, PathError> {
        let mut lhs = self.unary()?;
        let mut chain = 0;
        loop {
            self.skip_ws();
            if self.looking_at_keyword("and") {
                chain += 1;
                if chain > MAX_CHAIN {
                    return self.err(
                        self.pos,
                        format!("more than {MAX_CHAIN} `and` in a row; split the test"),
                    );
                }
                self.pos += 3;
                self.skip_ws();
                let rhs = self.unary()?;
                lhs = Expr::And(Box::new(lhs), Box::new(rhs));
            } else {
                return Ok(lhs);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, PathError> {
        let at = self.pos;
        if self.looking_at_call("not") {
            self.pos += 3;
            self.skip_ws();
            self.pos += 1; // '('
            self.enter(at)?;
            self.skip_ws();
            let inner = self.or_expr()?;
            self.skip_ws();
            if !self.eat(')') {
                return self.err(
                    self.pos,
                    format!(
                        "expected `)` to close `not(` at column {}, found {}",
                        at + 1,
                        self.describe()
                    ),
                );
            }
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek() == Some('(') {
            self.pos += 1;
            self.enter(at)?;
            self.skip_ws();
            let inner = self.or_expr()?;
            self.skip_ws();
            if !self.eat(')') {
                return self.err(
                    self.pos,
                    format!(
                        "expected `)` to close the `(` at column {}, found {}",
                        at + 1,
                        self.describe()
                    ),
                );
            }
            self.depth -= 1;
            return Ok(inner);
        }
        if matches!(self.peek(), Some('\'' | '"')) {
            return self.err(
                at,
                "put the path on the left of the comparison, e.g. `[@status='new']`",
            );
        }
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return self.err(
                at,
                "a number here must be a position on its own, e.g. `[2]`; \
                 to compare, put the path first: `[count=2]`",
            );
        }
        let lhs = Operand::from_steps(self.steps(true)?);
        self.skip_ws();
        let ne = match (self.peek(), self.peek_at(1)) {
            (Some('='), _) => {
                self.pos += 1;
                false
            }
            (Some('!'), Some('=')) => {
                self.pos += 2;
                true
            }
            (Some('<' | '>'), _) | (Some('!'), _) => {
                return self.err(self.pos, "only `=` and `!=` comparisons are supported");
            }
            _ => return Ok(Expr::Exists(lhs)),
        };
        self.skip_ws();
        let rhs = self.literal()?;
        Ok(Expr::Cmp { lhs, ne, rhs })
    }

    fn literal(&mut self) -> Result<Literal, PathError> {
        let at = self.pos;
        match self.peek() {
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if c == q {
                        let s: String = self.chars[start..self.pos].iter().collect();
                        self.pos += 1;
                        return Ok(Literal::Str(s));
                    }
                    self.pos += 1;
                }
                self.err(
                    at,
                    format!("unterminated string: add the closing {q} quote"),
                )
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '.' => {
                let start = self.pos;
                self.pos += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                    self.pos += 1;
                }
                let s: String = self.chars[start..self.pos].iter().collect();
                match s.parse::<f64>() {
                    Ok(n) if n.is_finite() => Ok(Literal::Num(n)),
                    _ => self.err(at, format!("`{s}` is not a number")),
                }
            }
            _ => self.err(
                at,
                format!(
                    "expected a quoted value such as 'x' or a number, found {}",
                    self.describe()
                ),
            ),
        }
    }
}

impl Path {
    fn from_steps(text: String, steps: Vec<Step>) -> Path {
        let plain = steps.iter().all(|s| match s {
            Step::Child { preds, .. } | Step::SelfNode { preds } => preds.is_empty(),
            Step::Attr(_) | Step::Text => true,
            Step::Parent { .. } => false,
        }) && steps.len() <= MAX_PLAIN_STEPS;
        Path { text, steps, plain }
    }

    /// Parses a path. A prefixed element name (`p:user`) is matched as written, against
    /// names without a namespace (YAML and JSON names); `Q{uri}user` names an element of a
    /// namespace.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        Self::parse_inner(text, None)
    }

    /// Parses a path of an XML document: the prefix of each element name is resolved
    /// through `resolve` (the declarations in scope where the path is written), and an
    /// unbound prefix is an error at its column. Unprefixed names are of no namespace
    /// (XPath 1.0: a default `xmlns` does not apply to paths). Attribute names are matched
    /// as written.
    pub fn parse_with_prefixes(text: &str, resolve: PrefixResolver<'_>) -> Result<Path, PathError> {
        Self::parse_inner(text, Some(resolve))
    }

    fn parse_inner(text: &str, resolve: Option<PrefixResolver<'_>>) -> Result<Path, PathError> {
        let mut p = Parser {
            text,
            chars: text.chars().collect(),
            pos: 0,
            depth: 0,
            resolve,
        };
        p.skip_ws();
        if p.peek().is_none() {
            return p.err(
                0,
                "empty path; leave the path out to mean the scope itself, or write `.`",
            );
        }
        let steps = p.steps(false)?;
        p.skip_ws();
        if p.pos < p.chars.len() {
            let msg = match p.peek() {
                Some(']') => "unexpected `]` without a matching `[`".to_string(),
                Some('|') => "unions (`|`) are not supported; use two paths".to_string(),
                Some(c) if c.is_whitespace() || is_name_char(c) => {
                    "unexpected text; separate steps with `/`".to_string()
                }
                _ => format!(
                    "unexpected {}; a step is a name, `*`, `.`, `..`, `@name` or `text()`, \
                     and steps are separated by `/`",
                    p.describe()
                ),
            };
            return p.err(p.pos, msg);
        }
        Ok(Path::from_steps(text.to_string(), steps))
    }

    /// The path as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The nodes the path selects below `root`, in document order.
    pub fn select<'a>(&self, root: &'a Element) -> Vec<Selected<'a>> {
        if self.plain {
            let mut out = Vec::new();
            select_plain(&self.steps, root, &mut out);
            return out;
        }
        let mut arena = Vec::new();
        let hits = run(&self.steps, root, &mut arena);
        hits.into_iter()
            .filter_map(|h| match h {
                Hit::Elem(id) => arena.get(id as usize).map(|c| Selected::Element(c.elem)),
                Hit::Attr(id, i) => arena
                    .get(id as usize)
                    .and_then(|c| c.elem.attrs.get(i))
                    .map(|(k, v)| Selected::Attr {
                        name: k.as_str(),
                        value: v.as_str(),
                    }),
                Hit::Text(id, i) => {
                    match arena.get(id as usize).and_then(|c| c.elem.children.get(i)) {
                        Some(Node::Text(s)) => Some(Selected::Text(s.to_text())),
                        _ => None,
                    }
                }
            })
            .collect()
    }

    /// Where the selected nodes live, in document order: index paths for mutation.
    pub fn locate(&self, root: &Element) -> Vec<Location> {
        let mut arena = Vec::new();
        let hits = run(&self.steps, root, &mut arena);
        hits.into_iter()
            .map(|h| {
                let (id, kind) = match h {
                    Hit::Elem(id) => (id, LocationKind::Element),
                    Hit::Attr(id, i) => (id, LocationKind::Attr(i)),
                    Hit::Text(id, i) => (id, LocationKind::Text(i)),
                };
                Location {
                    indices: indices_of(&arena, id),
                    kind,
                }
            })
            .collect()
    }

    #[cfg(test)]
    /// Whether the path is only plain element names (no predicates, `*`, `.`, `..`, `@`,
    /// `text()`), so a missing destination can be created.
    pub(crate) fn is_simple(&self) -> bool {
        self.simple_names().is_some()
    }

    /// The element names (and namespaces) of a simple path (only plain element names).
    pub(crate) fn simple_names(&self) -> Option<Vec<(&str, Option<&str>)>> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Child {
                    test: NameTest::Name(n),
                    preds,
                } if preds.is_empty() => Some((n.as_str(), None)),
                Step::Child {
                    test: NameTest::Ns { uri, local },
                    preds,
                } if preds.is_empty() => Some((local.as_str(), Some(uri.as_str()))),
                _ => None,
            })
            .collect()
    }

    /// Whether a step names an element by namespace (`Q{uri}local`).
    pub(crate) fn has_namespaces(&self) -> bool {
        fn in_steps(steps: &[Step]) -> bool {
            steps.iter().any(|s| match s {
                Step::Child { test, preds } => {
                    matches!(test, NameTest::Ns { .. }) || preds.iter().any(in_pred)
                }
                Step::SelfNode { preds } | Step::Parent { preds } => preds.iter().any(in_pred),
                Step::Attr(_) | Step::Text => false,
            })
        }
        fn in_pred(p: &Pred) -> bool {
            match p {
                Pred::Test(e) => in_expr(e),
                Pred::Position(_) | Pred::Last => false,
            }
        }
        fn in_expr(e: &Expr) -> bool {
            match e {
                Expr::Or(a, b) | Expr::And(a, b) => in_expr(a) || in_expr(b),
                Expr::Not(a) => in_expr(a),
                Expr::Exists(op) | Expr::Cmp { lhs: op, .. } => match op {
                    Operand::Steps(steps) => in_steps(steps),
                    _ => false,
                },
            }
        }
        in_steps(&self.steps)
    }

    /// The name the last step tests, without its namespace (`user` for `a/Q{urn:x}user`);
    /// `None` for `*`, `.`, `..`, `text()`.
    pub(crate) fn last_name(&self) -> Option<&str> {
        match self.steps.last() {
            Some(Step::Child { test, .. } | Step::Attr(test)) => match test {
                NameTest::Name(n) => Some(n),
                NameTest::Ns { local, .. } => Some(local),
                NameTest::Any => None,
            },
            _ => None,
        }
    }

    /// The attribute name if the last step is `@name`.
    pub(crate) fn last_attr_name(&self) -> Option<&str> {
        match self.steps.last() {
            Some(Step::Attr(NameTest::Name(n))) => Some(n),
            _ => None,
        }
    }

    /// Whether the last step is `@name` or `@*`.
    pub(crate) fn selects_attribute(&self) -> bool {
        matches!(self.steps.last(), Some(Step::Attr(_)))
    }

    /// For a path ending in `@name`, `@*` or `text()`: the path of the owning element
    /// (`.` when the value step is the only one). `None` for element paths.
    pub(crate) fn owner(&self) -> Option<Path> {
        match self.steps.last() {
            Some(Step::Attr(_) | Step::Text) => {
                let mut steps = self.steps[..self.steps.len() - 1].to_vec();
                if steps.is_empty() {
                    steps.push(Step::SelfNode { preds: Vec::new() });
                }
                let mut p = Path::from_steps(String::new(), steps);
                p.text = p.to_string();
                Some(p)
            }
            _ => None,
        }
    }

    /// The plain element names of the leading steps, for data-race detection: two paths
    /// overlap if one's list is a prefix of the other's.
    ///
    /// Plain names are collected until the first step that is not one; a step with
    /// predicates still contributes its name (predicates only narrow) and then stops the
    /// list; `.` is skipped, `..` drops the last name (stops at the scope), `*` and `text()`
    /// stop, a final `@name` contributes `@name`.
    pub fn segments_for_overlap(&self) -> Vec<String> {
        let mut out = Vec::new();
        for step in &self.steps {
            match step {
                Step::Child {
                    test: NameTest::Name(n),
                    preds,
                } => {
                    out.push(n.clone());
                    if !preds.is_empty() {
                        break;
                    }
                }
                Step::Child {
                    test: NameTest::Ns { uri, local },
                    preds,
                } => {
                    out.push(format!("Q{{{uri}}}{local}"));
                    if !preds.is_empty() {
                        break;
                    }
                }
                Step::SelfNode { preds } => {
                    if !preds.is_empty() {
                        break;
                    }
                }
                Step::Parent { .. } => {
                    if out.pop().is_none() {
                        break;
                    }
                }
                Step::Attr(NameTest::Name(n)) => out.push(format!("@{n}")),
                Step::Attr(NameTest::Ns { .. }) => break,
                Step::Child {
                    test: NameTest::Any,
                    ..
                }
                | Step::Attr(NameTest::Any)
                | Step::Text => break,
            }
        }
        out
    }
}

impl FromStr for Path {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Path, PathError> {
        Path::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Display (canonical form)

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_steps(&self.steps, f)
    }
}

fn fmt_steps(steps: &[Step], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, s) in steps.iter().enumerate() {
        if i > 0 {
            f.write_str("/")?;
        }
        match s {
            Step::Child { test, preds } => {
                fmt_test(test, f)?;
                fmt_preds(preds, f)?;
            }
            Step::SelfNode { preds } => {
                f.write_str(".")?;
                fmt_preds(preds, f)?;
            }
            Step::Parent { preds } => {
                f.write_str("..")?;
                fmt_preds(preds, f)?;
            }
            Step::Attr(t) => {
                f.write_str("@")?;
                fmt_test(t, f)?;
            }
            Step::Text => f.write_str("text()")?,
        }
    }
    Ok(())
}

fn fmt_test(t: &NameTest, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match t {
        NameTest::Any => f.write_str("*"),
        NameTest::Name(n) => f.write_str(n),
        NameTest::Ns { uri, local } => write!(f, "Q{{{uri}}}{local}"),
    }
}

fn fmt_preds(preds: &[Pred], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for p in preds {
        match p {
            Pred::Position(n) => write!(f, "[{n}]")?,
            Pred::Last => f.write_str("[last()]")?,
            Pred::Test(e) => {
                f.write_str("[")?;
                fmt_expr(e, 0, f)?;
                f.write_str("]")?;
            }
        }
    }
    Ok(())
}

/// `prec`: 0 = top/or, 1 = inside and.
fn fmt_expr(e: &Expr, prec: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match e {
        Expr::Or(a, b) => {
            if prec > 0 {
                f.write_str("(")?;
            }
            fmt_expr(a, 0, f)?;
            f.write_str(" or ")?;
            fmt_expr(b, 0, f)?;
            if prec > 0 {
                f.write_str(")")?;
            }
            Ok(())
        }
        Expr::And(a, b) => {
            fmt_expr(a, 1, f)?;
            f.write_str(" and ")?;
            fmt_expr(b, 1, f)
        }
        Expr::Not(inner) => {
            f.write_str("not(")?;
            fmt_expr(inner, 0, f)?;
            f.write_str(")")
        }
        Expr::Exists(op) => fmt_operand(op, f),
        Expr::Cmp { lhs, ne, rhs } => {
            fmt_operand(lhs, f)?;
            f.write_str(if *ne { "!=" } else { "=" })?;
            match rhs {
                Literal::Str(s) if s.contains('\'') => write!(f, "\"{s}\""),
                Literal::Str(s) => write!(f, "'{s}'"),
                Literal::Num(n) => write!(f, "{n}"),
            }
        }
    }
}

fn fmt_operand(op: &Operand, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match op {
        Operand::Dot => f.write_str("."),
        Operand::Attr(t) => {
            f.write_str("@")?;
            fmt_test(t, f)
        }
        Operand::Text => f.write_str("text()"),
        Operand::Child(n) => f.write_str(n),
        Operand::Steps(steps) => fmt_steps(steps, f),
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

const NO_PARENT: u32 = u32::MAX;

/// A visited element: the element, the arena id of its parent and its index in the parent.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    elem: &'a Element,
    parent: u32,
    index: u32,
}

#[derive(Clone, Copy)]
enum Hit {
    Elem(u32),
    Attr(u32, usize),
    Text(u32, usize),
}

fn push_ctx<'a>(arena: &mut Vec<Ctx<'a>>, ctx: Ctx<'a>) -> u32 {
    arena.push(ctx);
    // Saturates instead of wrapping; more than 4 billion visited nodes is not a real tree.
    u32::try_from(arena.len() - 1).unwrap_or(NO_PARENT - 1)
}

fn run<'a>(steps: &[Step], root: &'a Element, arena: &mut Vec<Ctx<'a>>) -> Vec<Hit> {
    let id = push_ctx(
        arena,
        Ctx {
            elem: root,
            parent: NO_PARENT,
            index: 0,
        },
    );
    eval_steps(steps, vec![id], arena)
}

/// Selection for predicate-free paths without `..`: a depth-first walk. Every match of one
/// step is at the same depth, so the walk yields them in document order.
fn select_plain<'a>(steps: &[Step], e: &'a Element, out: &mut Vec<Selected<'a>>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(Selected::Element(e));
        return;
    };
    match step {
        Step::Child { test, .. } => {
            for c in e.elements() {
                if test.matches_elem(c) {
                    select_plain(rest, c, out);
                }
            }
        }
        Step::SelfNode { .. } => select_plain(rest, e, out),
        Step::Parent { .. } => {} // never plain
        Step::Attr(test) => {
            for (k, v) in &e.attrs {
                if test.matches(k) {
                    out.push(Selected::Attr {
                        name: k.as_str(),
                        value: v.as_str(),
                    });
                }
            }
        }
        Step::Text => {
            for c in &e.children {
                if let Node::Text(s) = c {
                    out.push(Selected::Text(s.to_text()));
                }
            }
        }
    }
}

fn indices_of(arena: &[Ctx<'_>], mut id: u32) -> Vec<usize> {
    let mut out = Vec::new();
    while let Some(c) = arena.get(id as usize) {
        if c.parent == NO_PARENT {
            break;
        }
        out.push(c.index as usize);
        id = c.parent;
    }
    out.reverse();
    out
}

fn eval_steps<'a>(steps: &[Step], start: Vec<u32>, arena: &mut Vec<Ctx<'a>>) -> Vec<Hit> {
    let mut current = start;
    let mut cand: Vec<u32> = Vec::new();
    for step in steps {
        let mut next = Vec::new();
        match step {
            Step::Child { test, preds } => {
                for &c in &current {
                    let Some(&ctx) = arena.get(c as usize) else {
                        continue;
                    };
                    cand.clear();
                    for (i, child) in ctx.elem.children.iter().enumerate() {
                        if let Node::Element(e) = child {
                            if test.matches_elem(e) {
                                let id = push_ctx(
                                    arena,
                                    Ctx {
                                        elem: e,
                                        parent: c,
                                        index: u32::try_from(i).unwrap_or(u32::MAX),
                                    },
                                );
                                cand.push(id);
                            }
                        }
                    }
                    apply_preds(preds, &mut cand, arena);
                    next.extend_from_slice(&cand);
                }
            }
            Step::SelfNode { preds } => {
                if preds.is_empty() {
                    continue;
                }
                for &c in &current {
                    cand.clear();
                    cand.push(c);
                    apply_preds(preds, &mut cand, arena);
                    next.extend_from_slice(&cand);
                }
            }
            Step::Parent { preds } => {
                // All contexts of one step are at the same depth and in document order, so
                // their parents are in document order with duplicates adjacent.
                let mut last: Option<*const Element> = None;
                for &c in &current {
                    let Some(p) = arena.get(c as usize).map(|ctx| ctx.parent) else {
                        continue;
                    };
                    let Some(pctx) = arena.get(p as usize) else {
                        continue;
                    };
                    let ptr: *const Element = pctx.elem;
                    if last == Some(ptr) {
                        continue;
                    }
                    last = Some(ptr);
                    cand.clear();
                    cand.push(p);
                    apply_preds(preds, &mut cand, arena);
                    next.extend_from_slice(&cand);
                }
            }
            Step::Attr(test) => {
                let mut hits = Vec::new();
                for &c in &current {
                    if let Some(ctx) = arena.get(c as usize) {
                        for (i, (k, _)) in ctx.elem.attrs.iter().enumerate() {
                            if test.matches(k) {
                                hits.push(Hit::Attr(c, i));
                            }
                        }
                    }
                }
                return hits;
            }
            Step::Text => {
                let mut hits = Vec::new();
                for &c in &current {
                    if let Some(ctx) = arena.get(c as usize) {
                        for (i, n) in ctx.elem.children.iter().enumerate() {
                            if matches!(n, Node::Text(_)) {
                                hits.push(Hit::Text(c, i));
                            }
                        }
                    }
                }
                return hits;
            }
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    current.into_iter().map(Hit::Elem).collect()
}

fn apply_preds<'a>(preds: &[Pred], cand: &mut Vec<u32>, arena: &mut Vec<Ctx<'a>>) {
    for p in preds {
        match p {
            Pred::Position(n) => {
                if *n <= cand.len() {
                    let keep = cand[*n - 1];
                    cand.clear();
                    cand.push(keep);
                } else {
                    cand.clear();
                }
            }
            Pred::Last => {
                if let Some(&keep) = cand.last() {
                    cand.clear();
                    cand.push(keep);
                }
            }
            Pred::Test(e) => cand.retain(|&id| eval_expr(e, id, arena)),
        }
        if cand.is_empty() {
            return;
        }
    }
}

fn eval_expr<'a>(e: &Expr, id: u32, arena: &mut Vec<Ctx<'a>>) -> bool {
    match e {
        Expr::Or(a, b) => eval_expr(a, id, arena) || eval_expr(b, id, arena),
        Expr::And(a, b) => eval_expr(a, id, arena) && eval_expr(b, id, arena),
        Expr::Not(a) => !eval_expr(a, id, arena),
        Expr::Exists(op) => any_value(op, id, arena, &mut |_| true),
        Expr::Cmp { lhs, ne, rhs } => {
            let ne = *ne;
            any_value(lhs, id, arena, &mut |v: &str| {
                let eq = match rhs {
                    Literal::Str(s) => v == s,
                    Literal::Num(n) => v.trim().parse::<f64>().is_ok_and(|x| x == *n),
                };
                eq != ne
            })
        }
    }
}

/// Whether `f` holds for the string value of any node `op` selects from context `id`.
fn any_value<'a>(
    op: &Operand,
    id: u32,
    arena: &mut Vec<Ctx<'a>>,
    f: &mut dyn FnMut(&str) -> bool,
) -> bool {
    let Some(&ctx) = arena.get(id as usize) else {
        return false;
    };
    let elem = ctx.elem;
    match op {
        Operand::Dot => with_string_value(elem, f),
        Operand::Attr(t) => elem.attrs.iter().any(|(k, v)| t.matches(k) && f(v)),
        Operand::Text => elem.children.iter().any(|c| match c {
            Node::Text(s) => with_scalar_text(s, f),
            Node::Element(_) => false,
        }),
        Operand::Child(n) => elem
            .elements()
            .any(|c| c.ns.is_none() && c.name == *n && with_string_value(c, f)),
        Operand::Steps(steps) => {
            let hits = eval_steps(steps, vec![id], arena);
            hits.into_iter().any(|h| match h {
                Hit::Elem(i) => match arena.get(i as usize) {
                    Some(c) => with_string_value(c.elem, f),
                    None => false,
                },
                Hit::Attr(i, a) => match arena.get(i as usize).and_then(|c| c.elem.attrs.get(a)) {
                    Some((_, v)) => f(v),
                    None => false,
                },
                Hit::Text(i, t) => {
                    match arena.get(i as usize).and_then(|c| c.elem.children.get(t)) {
                        Some(Node::Text(s)) => with_scalar_text(s, f),
                        _ => false,
                    }
                }
            })
        }
    }
}

fn with_scalar_text(s: &Scalar, f: &mut dyn FnMut(&str) -> bool) -> bool {
    match s {
        Scalar::Str(s) => f(s),
        other => f(&other.to_text()),
    }
}

fn with_string_value(e: &Element, f: &mut dyn FnMut(&str) -> bool) -> bool {
    match e.children.as_slice() {
        [] => f(""),
        [Node::Text(s)] => with_scalar_text(s, f),
        _ => f(&string_value(e)),
    }
}

/// XPath string value (all descendant text in document order), without recursion.
pub(crate) fn string_value(e: &Element) -> String {
    let mut out = String::new();
    let mut stack = vec![e.children.iter()];
    while let Some(it) = stack.last_mut() {
        match it.next() {
            Some(Node::Text(Scalar::Str(s))) => out.push_str(s),
            Some(Node::Text(s)) => out.push_str(&s.to_text()),
            Some(Node::Element(c)) => stack.push(c.children.iter()),
            None => {
                stack.pop();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Element {
        // <data>
        //   <organization name="contoso">
        //     <users>
        //       <user status="new" id="1"><name>ann</name><flag>on</flag></user>
        //       <user id="2"><name>bob</name></user>
        //       <user status="old" id="3"><name>cid</name><flag>off</flag></user>
        //     </users>
        //     <dc>AD01</dc>
        //   </organization>
        //   <count>3</count>
        // </data>
        let mut root = Element::new("data");
        let org = root.push(Element::new("organization"));
        org.set_attr("name", "contoso");
        let users = org.push(Element::new("users"));
        for (id, name, status, flag) in [
            ("1", "ann", Some("new"), Some("on")),
            ("2", "bob", None, None),
            ("3", "cid", Some("old"), Some("off")),
        ] {
            let u = users.push(Element::new("user"));
            if let Some(s) = status {
                u.set_attr("status", s);
            }
            u.set_attr("id", id);
            u.push(Element::with_text("name", name));
            if let Some(f) = flag {
                u.push(Element::with_text("flag", f));
            }
        }
        org.push(Element::with_text("dc", "AD01"));
        root.push(Element::with_scalar("count", Scalar::Int(3)));
        root
    }

    fn names(p: &str, root: &Element) -> Vec<String> {
        Path::parse(p)
            .unwrap()
            .select(root)
            .iter()
            .map(Selected::string_value)
            .collect()
    }

    #[test]
    fn prefixes_resolve_to_namespaces() {
        let root = crate::data::xml::parse(
            r#"<data xmlns:a="urn:one" xmlns:b="urn:two"><a:user n="1"/><b:user n="2"/><user n="3"/><x xmlns="urn:one"><user n="4"/></x></data>"#,
            &crate::data::xml::Limits::default(),
        )
        .unwrap();
        let resolve = |p: &str| match p {
            "p" => Some("urn:one".to_string()),
            "q" => Some("urn:two".to_string()),
            _ => None,
        };
        let ns = |s: &str| Path::parse_with_prefixes(s, &resolve).unwrap();
        let ids = |p: &Path| -> Vec<String> {
            p.select(&root)
                .iter()
                .map(|s| match s {
                    Selected::Element(e) => e.attr("n").unwrap_or("").to_string(),
                    other => other.string_value(),
                })
                .collect()
        };
        // The path's prefix need not be the data's: the namespace decides.
        assert_eq!(ids(&ns("p:user")), ["1"]);
        assert_eq!(ids(&ns("q:user")), ["2"]);
        // Unprefixed names are of no namespace (XPath 1.0), even under a default xmlns.
        assert_eq!(ids(&ns("user")), ["3"]);
        assert_eq!(ids(&ns("p:x/p:user")), ["4"]);
        assert!(ns("x/user").select(&root).is_empty());
        assert_eq!(ids(&ns("*[p:user or q:user]/@n")), Vec::<String>::new());
        assert_eq!(ns("p:user[@n='1']").to_string(), "Q{urn:one}user[@n='1']");
        // The canonical form parses back to the same path without a resolver.
        assert_eq!(
            Path::parse("Q{urn:one}user").unwrap().select(&root).len(),
            1
        );
        let e = Path::parse_with_prefixes("a/zz:user", &resolve).unwrap_err();
        assert_eq!(e.column, 3);
        assert!(e.message.contains("prefix `zz` is not bound"), "{e:?}");
        // Without a resolver (YAML, JSON) a prefixed name is matched as written.
        assert!(Path::parse("a:user").unwrap().select(&root).is_empty());
    }

    #[test]
    fn plain_steps() {
        let t = tree();
        assert_eq!(
            names("organization/users/user/name", &t),
            ["ann", "bob", "cid"]
        );
        assert_eq!(names("organization/dc", &t), ["AD01"]);
        assert_eq!(names("count", &t), ["3"]);
        assert!(names("nothing/here", &t).is_empty());
        assert_eq!(names(".", &t).len(), 1);
        assert_eq!(names("organization/*", &t).len(), 2);
    }

    #[test]
    fn attributes_and_text() {
        let t = tree();
        assert_eq!(names("organization/users/user/@id", &t), ["1", "2", "3"]);
        assert_eq!(names("organization/@*", &t), ["contoso"]);
        assert_eq!(names("organization/users/user[2]/@*", &t), ["2"]);
        assert_eq!(names("organization/dc/text()", &t), ["AD01"]);
        assert!(names("organization/text()", &t).is_empty());
        let sel = Path::parse("organization/@name").unwrap();
        assert_eq!(
            sel.select(&t),
            vec![Selected::Attr {
                name: "name",
                value: "contoso"
            }]
        );
    }

    #[test]
    fn predicates() {
        let t = tree();
        let u = "organization/users/user";
        assert_eq!(names(&format!("{u}[2]/name"), &t), ["bob"]);
        assert_eq!(names(&format!("{u}[last()]/name"), &t), ["cid"]);
        assert!(names(&format!("{u}[4]"), &t).is_empty());
        assert_eq!(names(&format!("{u}[@status='new']/name"), &t), ["ann"]);
        assert_eq!(names(&format!("{u}[@status!=\"new\"]/name"), &t), ["cid"]);
        assert_eq!(names(&format!("{u}[@status]/name"), &t), ["ann", "cid"]);
        assert_eq!(names(&format!("{u}[not(@status)]/name"), &t), ["bob"]);
        assert_eq!(names(&format!("{u}[flag]/name"), &t), ["ann", "cid"]);
        assert_eq!(names(&format!("{u}[not(flag)]/name"), &t), ["bob"]);
        assert_eq!(names(&format!("{u}[flag='on']/name"), &t), ["ann"]);
        assert_eq!(names(&format!("{u}/flag[.='off']"), &t), ["off"]);
        assert_eq!(names(&format!("{u}/name[text()='bob']"), &t), ["bob"]);
        assert_eq!(
            names(&format!("{u}[@status and flag = 'off']/name"), &t),
            ["cid"]
        );
        assert_eq!(
            names(&format!("{u}[@id='2' or flag='on']/name"), &t),
            ["ann", "bob"]
        );
        assert_eq!(
            names(
                &format!("{u}[(@id='2' or @id='3') and not(flag='off')]/name"),
                &t
            ),
            ["bob"]
        );
        // predicates apply in order: the second of those with a status
        assert_eq!(names(&format!("{u}[@status][2]/name"), &t), ["cid"]);
        // the second, if it has a status
        assert!(names(&format!("{u}[2][@status]"), &t).is_empty());
        // numbers compare numerically
        assert_eq!(names("count[.=3]", &t), ["3"]);
        assert_eq!(names("count[.=3.0]", &t), ["3"]);
        assert_eq!(names(".[count='3']/count", &t), ["3"]);
        // multi-step operands
        assert_eq!(names("organization[users/user/@id='3']/dc", &t), ["AD01"]);
        assert!(names("organization[users/user/@id='9']/dc", &t).is_empty());
    }

    #[test]
    fn position_is_per_parent() {
        let mut root = Element::new("r");
        for _ in 0..2 {
            let a = root.push(Element::new("a"));
            a.push(Element::with_text("b", "x"));
            a.push(Element::with_text("b", "y"));
        }
        assert_eq!(names("a/b[1]", &root), ["x", "x"]);
        assert_eq!(names("a/b[last()]", &root), ["y", "y"]);
    }

    #[test]
    fn parent_steps() {
        let t = tree();
        assert_eq!(
            names("organization/users/user/name/../@id", &t),
            ["1", "2", "3"]
        );
        // duplicates collapse
        assert_eq!(names("organization/users/user/..", &t).len(), 1);
        assert_eq!(
            names("organization/users/user/flag[.='on']/../name", &t),
            ["ann"]
        );
        // the scope has no parent
        assert!(names("..", &t).is_empty());
        assert_eq!(
            names("organization/users/user[../../dc='AD01'][1]/name", &t),
            ["ann"]
        );
    }

    #[test]
    fn locations() {
        let t = tree();
        let p = Path::parse("organization/users/user[2]/@id").unwrap();
        let locs = p.locate(&t);
        assert_eq!(
            locs,
            vec![Location {
                indices: vec![0, 0, 1],
                kind: LocationKind::Attr(0)
            }]
        );
        let e = locs[0].element(&t).unwrap();
        assert_eq!(e.attr("id"), Some("2"));
        let p = Path::parse(".").unwrap();
        assert_eq!(p.locate(&t)[0].indices, Vec::<usize>::new());
    }

    #[test]
    fn errors_have_columns_and_hints() {
        let e = Path::parse("/data/user").unwrap_err();
        assert_eq!(e.column, 1);
        assert!(e.message.contains("relative"), "{e}");
        let e = Path::parse("//user").unwrap_err();
        assert!(e.message.contains("//"), "{e}");
        let e = Path::parse("a//b").unwrap_err();
        assert_eq!(e.column, 2);
        let e = Path::parse("a/").unwrap_err();
        assert_eq!(e.column, 2);
        let e = Path::parse("user[0]").unwrap_err();
        assert_eq!(e.column, 6);
        assert!(e.message.contains("1-based"));
        let e = Path::parse("user[@a='x'").unwrap_err();
        assert_eq!(e.column, 12);
        assert!(e.message.contains("`]`"), "{e}");
        let e = Path::parse("user[@a='x]").unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
        let e = Path::parse("@id/x").unwrap_err();
        assert!(e.message.contains("last step"), "{e}");
        let e = Path::parse("text()/x").unwrap_err();
        assert!(e.message.contains("last step"), "{e}");
        let e = Path::parse("node()").unwrap_err();
        assert!(e.message.contains("not supported"), "{e}");
        let e = Path::parse("child::a").unwrap_err();
        assert!(e.message.contains("axes"), "{e}");
        let e = Path::parse("").unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
        let e = Path::parse("a b").unwrap_err();
        assert_eq!(e.column, 3);
        let e = Path::parse("a[@x<'3']").unwrap_err();
        assert!(e.message.contains("`=`"), "{e}");
        let deep = format!("a{}", "[b".repeat(40));
        assert!(Path::parse(&deep).is_err());
        let deep = format!("a[{}x{}]", "not(".repeat(40), ")".repeat(40));
        assert!(Path::parse(&deep).is_err());
        // hostile lengths: errors or work, never a stack overflow
        let long_and = format!("a[{}b]", "b and ".repeat(10_000));
        assert!(Path::parse(&long_and).is_err());
        let long = vec!["a"; 100_000].join("/");
        let p = Path::parse(&long).unwrap();
        assert!(p.select(&tree()).is_empty());
        let long_pred = format!("a[{}]", vec!["b"; 100_000].join("/"));
        assert!(Path::parse(&long_pred).unwrap().select(&tree()).is_empty());
        // display of the error
        let e = Path::parse("a[]").unwrap_err();
        assert!(
            e.to_string().starts_with("bad path `a[]` at column 3:"),
            "{e}"
        );
    }

    #[test]
    fn display_is_canonical_and_reparses() {
        for (src, canon) in [
            ("a/b", "a/b"),
            ("  a / b  ", "a/b"),
            ("user[ @status = \"new\" ]", "user[@status='new']"),
            ("user[flag=\"it's\"]", "user[flag=\"it's\"]"),
            ("u[a or b and c]", "u[a or b and c]"),
            ("u[(a or b) and c]", "u[(a or b) and c]"),
            ("u[not(@x)][last()][2]/../.", "u[not(@x)][last()][2]/../."),
            ("u[.=3]/text()", "u[.=3]/text()"),
            ("*/@*", "*/@*"),
        ] {
            let p = Path::parse(src).unwrap();
            assert_eq!(p.to_string(), canon);
            assert_eq!(p.as_str(), src);
            let q = Path::parse(&p.to_string()).unwrap();
            assert_eq!(q.to_string(), canon);
        }
    }

    #[test]
    fn simple_and_overlap() {
        let p = |s: &str| Path::parse(s).unwrap();
        assert!(p("a/b/c").is_simple());
        assert!(!p("a/b[1]").is_simple());
        assert!(!p("a/@x").is_simple());
        assert!(!p("*").is_simple());
        assert_eq!(p("a/b/c").segments_for_overlap(), ["a", "b", "c"]);
        assert_eq!(p("a/b[2]/c").segments_for_overlap(), ["a", "b"]);
        assert_eq!(p("a/*/c").segments_for_overlap(), ["a"]);
        assert_eq!(p("a/./b/../c").segments_for_overlap(), ["a", "c"]);
        assert_eq!(p("a/@x").segments_for_overlap(), ["a", "@x"]);
        assert_eq!(p("a/text()").segments_for_overlap(), ["a"]);
        assert_eq!(p("../a").segments_for_overlap(), Vec::<String>::new());
        assert_eq!(p("a/@x").owner().unwrap().to_string(), "a");
        assert_eq!(p("@x").owner().unwrap().to_string(), ".");
        assert_eq!(p("a/@x").last_attr_name(), Some("x"));
    }

    #[test]
    fn names_are_validated() {
        assert!(is_valid_name("user"));
        assert!(is_valid_name("ns:user-name.v2"));
        assert!(is_valid_name("_x"));
        assert!(is_valid_name("2024"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("-x"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("@a"));
        assert!(!is_valid_name("a::b"));
    }

    /// Selecting a simple path gives the same nodes every time (its speed is measured by
    /// `benches/engine.rs`, `path_select`).
    #[test]
    fn simple_select_repeats() {
        let t = tree();
        let p = Path::parse("organization/dc").unwrap();
        let first = p.select(&t).len();
        assert!(first > 0);
        for _ in 0..100 {
            assert_eq!(p.select(std::hint::black_box(&t)).len(), first);
        }
    }
}
