//! Locating keys in the YAML/JSON source (best effort), for errors found after serde:
//! a field path (`procedures.P.steps.mx.call`) to the line and column of its deepest key.

use fxhash::FxHashMap as FxMap;
use std::cell::{OnceCell, RefCell};
use std::collections::hash_map::Entry;

// ---------------------------------------------------------------------------------------
//
// Every procedure, step and transform gets a `SourceRef`, so a lookup runs per step and
// must not scan the source: the first lookup builds an index in one pass over the lines
// (indentation, the block-style key each line starts with, the next line that closes a
// block) and each lookup then costs a hash probe and a binary search per path segment.
// Flow-style and JSON keys in large regions (a minified JSON file is one line) go through
// a second index, built only when such a region is searched. Both indexes answer exactly
// what a scan of the lines would (`child` documents the scan); keys the indexes cannot
// represent fall back to the scan.

/// A region of the source: lines `start..end`, whose keys sit at `indent` (when known).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Block {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) indent: Option<usize>,
    /// 1-based line and column of the key that opened this block (0 = file).
    pub(crate) line: u32,
    pub(crate) column: u32,
}

pub(super) struct Locator<'a> {
    pub(super) lines: Vec<&'a str>,
    /// Built on the first lookup.
    index: OnceCell<LineIndex<'a>>,
    /// Keys anywhere in a line (flow style, JSON), built when a large region is searched.
    flow: OnceCell<FxMap<&'a str, Vec<(u32, u32)>>>,
    /// Regions up to this many bytes are scanned for flow-style keys (`FLOW_SCAN_BYTES`).
    scan_bytes: usize,
    /// The previous lookup (see `find`).
    last: RefCell<LastFind>,
}

/// One pass over the lines.
struct LineIndex<'a> {
    /// Per line: content (see `is_content`), raw indent, effective indent.
    content: Vec<bool>,
    raw: Vec<usize>,
    eff: Vec<usize>,
    /// Byte offset where each line starts, plus the end (sizes of regions).
    offsets: Vec<usize>,
    /// `next_content[n]`: the first content line at or after `n` (`lines.len()` if none).
    next_content: Vec<usize>,
    /// For a content line: the next content line with a smaller raw indent.
    next_outdent: Vec<usize>,
    /// Block-style keys: (effective indent, key) → the content lines starting with it.
    keys: FxMap<(usize, &'a str), Lines>,
    /// The `namespace` keys: (line, column), in order.
    namespaces: Vec<(usize, usize)>,
}

/// The lines (ascending) a block key is on; most keys (step ids) are on one.
enum Lines {
    One(u32),
    Many(Vec<u32>),
}

impl Lines {
    fn push(&mut self, n: u32) {
        match self {
            Lines::One(first) => *self = Lines::Many(vec![*first, n]),
            Lines::Many(v) => v.push(n),
        }
    }
    fn as_slice(&self) -> &[u32] {
        match self {
            Lines::One(n) => std::slice::from_ref(n),
            Lines::Many(v) => v,
        }
    }
}

/// Below this many bytes a flow-style region is scanned rather than indexed.
const FLOW_SCAN_BYTES: usize = 4096;
/// Longest key the flow index holds.
const FLOW_KEY_MAX: usize = 128;
/// Most delimiters (see `is_key_delim`) inside a key the flow index holds.
const FLOW_KEY_DELIMS: usize = 16;

/// Leading spaces, then `- ` list markers counted as indentation.
fn effective_indent(line: &str) -> (usize, usize) {
    let raw = line.len() - line.trim_start_matches(' ').len();
    let mut eff = raw;
    let mut rest = &line[raw..];
    while let Some(r) = rest.strip_prefix("- ") {
        let sp = r.len() - r.trim_start_matches(' ').len();
        eff += 2 + sp;
        rest = &r[sp..];
    }
    (raw, eff)
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !(t.is_empty()
        || t.starts_with('#')
        || t.starts_with('}')
        || t.starts_with(']')
        || t.starts_with('{') && t.len() == 1
        || t.starts_with('[') && t.len() == 1
        || t == "---"
        || t == "...")
}

/// Whether `s` starts with `key` written as a mapping key (`key:`, `"key":`, `'key':`).
fn starts_with_key(s: &str, key: &str) -> bool {
    let rest = if let Some(r) = s.strip_prefix('"').and_then(|r| r.strip_prefix(key)) {
        r.strip_prefix('"')
    } else if let Some(r) = s.strip_prefix('\'').and_then(|r| r.strip_prefix(key)) {
        r.strip_prefix('\'')
    } else {
        s.strip_prefix(key)
    };
    match rest {
        Some(r) => {
            let quoted = s.starts_with(['"', '\'']);
            let r = r.trim_start_matches(' ');
            r == ":"
                || r.starts_with(": ")
                || r.starts_with(":\t")
                || (quoted && r.starts_with(':'))
        }
        None => false,
    }
}

/// The key a line body starts with, as `starts_with_key` sees it: for every key `k` that
/// `block_indexable` accepts, `starts_with_key(s, k)` ⇔ `block_key(s) == Some(k)`.
fn block_key(s: &str) -> Option<&str> {
    let q = match s.as_bytes().first() {
        Some(&q @ (b'"' | b'\'')) => q,
        _ => {
            let i = s.find(':')?;
            let after = &s.as_bytes()[i + 1..];
            if !(after.is_empty() || after[0] == b' ' || after[0] == b'\t') {
                return None;
            }
            return Some(s[..i].trim_end_matches(' ')).filter(|k| !k.is_empty());
        }
    };
    let close = 1 + s.as_bytes()[1..].iter().position(|&b| b == q)?;
    let rest = s[close + 1..].trim_start_matches(' ');
    (rest.starts_with(':') && close > 1).then(|| &s[1..close])
}

/// Keys `block_key` finds every occurrence of (others are looked up by scanning).
fn block_indexable(key: &str) -> bool {
    !key.is_empty() && !key.contains([':', '"', '\'']) && !key.ends_with(' ')
}

/// Characters that may precede a key found anywhere in a line.
fn is_key_delim(b: u8) -> bool {
    matches!(b, b' ' | b'{' | b',' | b'\t' | b'-')
}

/// Characters the flow index does not look past when collecting keys.
fn breaks_flow_key(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"' | b'\'')
}

/// Keys the flow index finds every `find_key_anywhere` match of: short, without the
/// characters it stops at, not starting or ending with blanks, with few delimiters, and
/// without a border (so occurrences never overlap, and the scan sees each of them).
fn flow_indexable(key: &str) -> bool {
    let b = key.as_bytes();
    if b.is_empty()
        || b.len() > FLOW_KEY_MAX
        || b.iter().any(|&c| breaks_flow_key(c))
        || matches!(b[0], b' ' | b'\t')
        || matches!(b[b.len() - 1], b' ' | b'\t')
        || b.iter().filter(|&&c| is_key_delim(c)).count() >= FLOW_KEY_DELIMS
    {
        return false;
    }
    // KMP failure function: the longest proper prefix that is also a suffix.
    let mut fail = vec![0usize; b.len()];
    let mut k = 0;
    for i in 1..b.len() {
        while k > 0 && b[i] != b[k] {
            k = fail[k - 1];
        }
        if b[i] == b[k] {
            k += 1;
        }
        fail[i] = k;
    }
    fail[b.len() - 1] == 0
}

/// Every `(key, column)` that `find_key_anywhere(line, key)` could match, for keys that
/// `flow_indexable` accepts (and some others, which are never looked up).
fn flow_keys<'l>(line: &'l str, mut emit: impl FnMut(&'l str, usize)) {
    let b = line.as_bytes();
    for (c, _) in b.iter().enumerate().filter(|(_, &x)| x == b':') {
        // the key ends before the blanks in front of the colon
        let mut e = c;
        while e > 0 && b[e - 1] == b' ' {
            e -= 1;
        }
        if e == 0 {
            continue;
        }
        // "key":
        let q = b[e - 1];
        if q == b'"' || q == b'\'' {
            let lo = (e - 1).saturating_sub(FLOW_KEY_MAX + 1);
            if let Some(p) = b[lo..e - 1].iter().rposition(|&x| x == q).map(|p| lo + p) {
                if p + 1 < e - 1 && (p == 0 || is_key_delim(b[p - 1])) {
                    emit(&line[p + 1..e - 1], p);
                }
            }
            continue;
        }
        // key: — every start after a delimiter, back to a character that ends keys
        let mut bounds = 0;
        let mut s = e;
        while s > 0 && e - s < FLOW_KEY_MAX {
            s -= 1;
            if s == 0 || is_key_delim(b[s - 1]) {
                if !matches!(b[s], b' ' | b'\t') {
                    emit(&line[s..e], s);
                }
                bounds += 1;
                if bounds > FLOW_KEY_DELIMS {
                    break;
                }
            }
            if s > 0 && breaks_flow_key(b[s - 1]) {
                break;
            }
        }
    }
}

impl<'a> LineIndex<'a> {
    pub(super) fn new(lines: &[&'a str]) -> Self {
        let len = lines.len();
        let mut ix = LineIndex {
            content: Vec::with_capacity(len),
            raw: Vec::with_capacity(len),
            eff: Vec::with_capacity(len),
            offsets: Vec::with_capacity(len + 1),
            next_content: vec![len; len + 1],
            next_outdent: vec![len; len],
            keys: FxMap::default(),
            namespaces: Vec::new(),
        };
        let mut offset = 0;
        for (n, line) in lines.iter().enumerate() {
            let content = is_content(line);
            let (raw, eff) = effective_indent(line);
            let body = line.get(eff..).unwrap_or("");
            if content {
                if let Some(k) = block_key(body) {
                    match ix.keys.entry((eff, k)) {
                        Entry::Vacant(e) => {
                            e.insert(Lines::One(n as u32));
                        }
                        Entry::Occupied(mut e) => e.get_mut().push(n as u32),
                    }
                }
            }
            let ns = if !line.contains("namespace") {
                None
            } else if starts_with_key(body, "namespace") {
                Some(eff)
            } else {
                // flow style / JSON on one line
                find_key_anywhere(line, "namespace")
            };
            if let Some(col) = ns {
                ix.namespaces.push((n, col));
            }
            ix.content.push(content);
            ix.raw.push(raw);
            ix.eff.push(eff);
            ix.offsets.push(offset);
            offset += line.len() + 1;
        }
        ix.offsets.push(offset);
        // next smaller raw indent, right to left over the content lines
        let mut stack: Vec<usize> = Vec::new();
        for n in (0..len).rev() {
            if ix.content[n] {
                while stack.last().is_some_and(|&t| ix.raw[t] >= ix.raw[n]) {
                    stack.pop();
                }
                ix.next_outdent[n] = stack.last().copied().unwrap_or(len);
                stack.push(n);
                ix.next_content[n] = n;
            } else {
                ix.next_content[n] = ix.next_content[n + 1];
            }
        }
        ix
    }
}

impl<'a> Locator<'a> {
    pub(super) fn new(src: &'a str) -> Self {
        Locator {
            lines: src.lines().collect(),
            index: OnceCell::new(),
            flow: OnceCell::new(),
            scan_bytes: FLOW_SCAN_BYTES,
            last: RefCell::default(),
        }
    }

    fn ix(&self) -> &LineIndex<'a> {
        self.index.get_or_init(|| LineIndex::new(&self.lines))
    }

    pub(super) fn root(&self) -> Block {
        Block {
            start: 0,
            end: self.lines.len(),
            indent: None,
            line: 0,
            column: 0,
        }
    }

    /// The block of the `i`-th namespace (the mapping holding its `namespace:` key).
    pub(super) fn namespace_root(&self, i: usize) -> Block {
        let Some(&(n, col)) = self.ix().namespaces.get(i) else {
            return self.root();
        };
        let end = match col {
            0 => self.lines.len(),
            c => self.block_end(n, c - 1),
        };
        Block {
            start: n,
            end,
            indent: Some(col),
            line: n as u32 + 1,
            column: col as u32 + 1,
        }
    }

    /// First content line after `from` whose raw indent is `<= indent`.
    fn block_end(&self, from: usize, indent: usize) -> usize {
        let ix = self.ix();
        let len = self.lines.len();
        let mut m = ix.next_content.get(from + 1).copied().unwrap_or(len);
        // the content lines skipped over have a raw indent >= `raw[m]` > `indent`
        while m < len && ix.raw[m] > indent {
            m = ix.next_outdent[m];
        }
        m
    }

    /// The child `key` of `block`: the first content line of the block whose key, at the
    /// block's indentation (given, or that of its first content line), is `key`; else
    /// (flow style, irregular layout) the first `key:` anywhere in the block's lines,
    /// including the line of the key that opened it (`with: { zone: … }`).
    pub(super) fn child(&self, block: Block, key: &str) -> Option<Block> {
        let ix = self.ix();
        let stop = block.end.min(self.lines.len());
        let indent = block.indent.or_else(|| {
            let n = ix.next_content[block.start.min(self.lines.len())];
            (n < stop).then(|| ix.eff[n])
        });
        if let Some(ind) = indent {
            if let Some(n) = self.key_line(block.start, stop, ind, key) {
                let end = self.block_end(n, ind);
                return Some(Block {
                    start: n + 1,
                    end,
                    indent: None,
                    line: n as u32 + 1,
                    column: ind as u32 + 1,
                });
            }
        }
        let from = if block.line > 0 {
            (block.line as usize - 1).min(block.start)
        } else {
            block.start
        };
        let (n, col) = self.key_anywhere(from, stop, key)?;
        Some(Block {
            start: n,
            end: block.end,
            indent: None,
            line: n as u32 + 1,
            column: col as u32 + 1,
        })
    }

    /// The first content line in `start..stop` with block key `key` at indent `ind`.
    fn key_line(&self, start: usize, stop: usize, ind: usize, key: &str) -> Option<usize> {
        let ix = self.ix();
        if block_indexable(key) {
            let lines = ix.keys.get(&(ind, key))?.as_slice();
            let i = lines.partition_point(|&l| (l as usize) < start);
            lines.get(i).map(|&l| l as usize).filter(|&l| l < stop)
        } else {
            (start..stop).find(|&n| {
                ix.content[n]
                    && ix.eff[n] == ind
                    && starts_with_key(self.lines[n].get(ind..).unwrap_or(""), key)
            })
        }
    }

    /// The first line in `from..stop` where `key:` appears anywhere, and its column.
    pub(super) fn key_anywhere(
        &self,
        from: usize,
        stop: usize,
        key: &str,
    ) -> Option<(usize, usize)> {
        if from >= stop {
            return None;
        }
        let ix = self.ix();
        if ix.offsets[stop] - ix.offsets[from] <= self.scan_bytes || !flow_indexable(key) {
            return (from..stop)
                .find_map(|n| find_key_anywhere(self.lines[n], key).map(|c| (n, c)));
        }
        let flow = self.flow.get_or_init(|| {
            let mut m: FxMap<&'a str, Vec<(u32, u32)>> = FxMap::default();
            for (n, line) in self.lines.iter().enumerate() {
                flow_keys(line, |k, col| {
                    m.entry(k).or_default().push((n as u32, col as u32));
                });
            }
            // by line, then column: a line's first hit is its leftmost
            for hits in m.values_mut() {
                hits.sort_unstable();
            }
            m
        });
        let hits = flow.get(key)?;
        let i = hits.partition_point(|&(l, _)| (l as usize) < from);
        let &(line, col) = hits.get(i)?;
        ((line as usize) < stop).then_some((line as usize, col as usize))
    }

    /// The location of a field path below `block`: the deepest key found.
    ///
    /// Lookups come in document order and share their prefixes
    /// (`procedures.P.steps.a`, `procedures.P.steps.a.with.x`, `procedures.P.steps.b`),
    /// so the blocks of the previous path are reused for the common prefix.
    pub(super) fn find<S: AsRef<str>>(&self, block: Block, path: &[S]) -> (u32, u32) {
        let Ok(mut last) = self.last.try_borrow_mut() else {
            let mut b = block;
            for k in path {
                match self.child(b, k.as_ref()) {
                    Some(c) => b = c,
                    None => break,
                }
            }
            return (b.line, b.column);
        };
        if last.root != Some(block) {
            last.root = Some(block);
            last.keys.clear();
            last.blocks.clear();
        }
        let common = last
            .keys
            .iter()
            .zip(path)
            .take_while(|(a, b)| a.as_str() == b.as_ref())
            .count();
        last.keys.truncate(common);
        last.blocks.truncate(common);
        // `None` once a key is not found: the walk stops there
        let mut b = match common {
            0 => Some(block),
            n => last.blocks[n - 1],
        };
        for k in &path[common..] {
            b = b.and_then(|cur| self.child(cur, k.as_ref()));
            last.keys.push(k.as_ref().to_string());
            last.blocks.push(b);
        }
        let b = last.blocks.iter().map_while(|x| *x).last().unwrap_or(block);
        (b.line, b.column)
    }
}

/// The previous `Locator::find`: where it started, its keys, and the block each resolved
/// to (`None` from the first key not found).
#[derive(Default)]
struct LastFind {
    root: Option<Block>,
    keys: Vec<String>,
    blocks: Vec<Option<Block>>,
}

/// Byte column of `key` used as a mapping key anywhere in the line.
fn find_key_anywhere(line: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let mut from = 0;
    while let Some(i) = line.get(from..).and_then(|s| s.find(key)) {
        let at = from + i;
        let (start, quoted) = match line[..at].chars().next_back() {
            Some(q @ ('"' | '\'')) => (at - 1, Some(q)),
            _ => (at, None),
        };
        let before_ok = match line[..start].chars().next_back() {
            None => true,
            Some(c) => matches!(c, ' ' | '{' | ',' | '\t' | '-'),
        };
        let after = &line[at + key.len()..];
        let after = match quoted {
            Some(q) => after.strip_prefix(q),
            None => Some(after),
        };
        let after_ok = after.is_some_and(|a| {
            let a = a.trim_start_matches(' ');
            a.starts_with(':')
        });
        if before_ok && after_ok {
            return Some(start);
        }
        from = at + key.len().max(1);
        while from < line.len() && !line.is_char_boundary(from) {
            from += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::{Map as JsonMap, Value as Json};
    use std::collections::HashMap;

    #[test]
    fn locator_finds_nested_keys() {
        let src = "namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        with: { zone: x }\n      zone:\n        call: X/Y\n";
        let loc = Locator::new(src);
        let root = loc.namespace_root(0);
        let path: Vec<String> = ["procedures", "P", "steps", "zone", "call"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(loc.find(root, &path), (8, 9));
        let path: Vec<String> = ["procedures", "P", "steps", "a", "with", "zone"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(loc.find(root, &path), (6, 17));
    }

    #[test]
    fn locator_list_of_namespaces_and_json() {
        let src =
            "- namespace: A\n  procedures:\n    P: {}\n- namespace: B\n  procedures:\n    Q: {}\n";
        let loc = Locator::new(src);
        let b = loc.namespace_root(1);
        assert_eq!((b.line, b.column), (4, 3));
        let path = vec!["procedures".to_string(), "Q".to_string()];
        assert_eq!(loc.find(b, &path), (6, 5));
        let json = "{\n  \"namespace\": \"A\",\n  \"procedures\": {\n    \"P\": {}\n  }\n}\n";
        let loc = Locator::new(json);
        let r = loc.namespace_root(0);
        let path = vec!["procedures".to_string(), "P".to_string()];
        assert_eq!(loc.find(r, &path), (4, 5));
    }

    // The indexed locator answers exactly what the scanning one (before the index) did.

    /// The scanning locator the index replaced, kept as the reference.
    struct OldLocator<'a> {
        lines: Vec<&'a str>,
    }

    impl<'a> OldLocator<'a> {
        fn new(src: &'a str) -> Self {
            OldLocator {
                lines: src.lines().collect(),
            }
        }

        fn root(&self) -> Block {
            Block {
                start: 0,
                end: self.lines.len(),
                indent: None,
                line: 0,
                column: 0,
            }
        }

        /// The block of the `i`-th namespace (the mapping holding its `namespace:` key).
        fn namespace_root(&self, i: usize) -> Block {
            let mut seen = 0;
            for (n, line) in self.lines.iter().enumerate() {
                let (_, eff) = effective_indent(line);
                let body = line.get(eff..).unwrap_or("");
                let found = if starts_with_key(body, "namespace") {
                    Some(eff)
                } else {
                    // flow style / JSON on one line
                    find_key_anywhere(line, "namespace")
                };
                if let Some(col) = found {
                    if seen == i {
                        let end = match col {
                            0 => self.lines.len(),
                            c => self.block_end(n, c - 1),
                        };
                        return Block {
                            start: n,
                            end,
                            indent: Some(col),
                            line: n as u32 + 1,
                            column: col as u32 + 1,
                        };
                    }
                    seen += 1;
                }
            }
            self.root()
        }

        /// First content line after `from` whose raw indent is `<= indent`.
        fn block_end(&self, from: usize, indent: usize) -> usize {
            for (n, line) in self.lines.iter().enumerate().skip(from + 1) {
                if is_content(line) && effective_indent(line).0 <= indent {
                    return n;
                }
            }
            self.lines.len()
        }

        /// The child `key` of `block`.
        fn child(&self, block: Block, key: &str) -> Option<Block> {
            let indent = block.indent.or_else(|| {
                self.lines
                    .iter()
                    .take(block.end)
                    .skip(block.start)
                    .find(|l| is_content(l))
                    .map(|l| effective_indent(l).1)
            });
            if let Some(ind) = indent {
                for n in block.start..block.end.min(self.lines.len()) {
                    let line = self.lines[n];
                    if !is_content(line) {
                        continue;
                    }
                    let (_, eff) = effective_indent(line);
                    if eff == ind && starts_with_key(line.get(eff..).unwrap_or(""), key) {
                        let end = self.block_end(n, ind);
                        return Some(Block {
                            start: n + 1,
                            end,
                            indent: None,
                            line: n as u32 + 1,
                            column: eff as u32 + 1,
                        });
                    }
                }
            }
            // Flow style or irregular layout: first occurrence in the block, including the
            // rest of the line of the key that opened it (`with: { zone: … }`).
            let from = if block.line > 0 {
                (block.line as usize - 1).min(block.start)
            } else {
                block.start
            };
            for n in from..block.end.min(self.lines.len()) {
                if let Some(col) = find_key_anywhere(self.lines[n], key) {
                    return Some(Block {
                        start: n,
                        end: block.end,
                        indent: None,
                        line: n as u32 + 1,
                        column: col as u32 + 1,
                    });
                }
            }
            None
        }

        /// The location of a field path below `block`: the deepest key found.
        fn find(&self, block: Block, path: &[String]) -> (u32, u32) {
            let mut b = block;
            for k in path {
                match self.child(b, k) {
                    Some(c) => b = c,
                    None => break,
                }
            }
            (b.line, b.column)
        }
    }

    /// Every key path of a YAML/JSON document (list items by index), plus misses.
    fn doc_paths(src: &str) -> Vec<Vec<String>> {
        fn walk(v: &serde_yaml::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(path.clone());
            for extra in ["nope", "call", "a-a"] {
                let mut p = path.clone();
                p.push(extra.to_string());
                out.push(p);
            }
            match v {
                serde_yaml::Value::Mapping(m) => {
                    for (k, x) in m {
                        let k = match k {
                            serde_yaml::Value::String(s) => s.clone(),
                            other => serde_yaml::to_string(other)
                                .unwrap_or_default()
                                .trim()
                                .to_string(),
                        };
                        path.push(k);
                        walk(x, path, out);
                        path.pop();
                    }
                }
                serde_yaml::Value::Sequence(s) => {
                    for (i, x) in s.iter().enumerate() {
                        path.push(i.to_string());
                        walk(x, path, out);
                        path.pop();
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(src) {
            // an invalid document ends the stream (the iterator would repeat the error)
            let Ok(v) = serde_yaml::Value::deserialize(doc) else {
                break;
            };
            match &v {
                // a list of namespaces: paths below each item too
                serde_yaml::Value::Sequence(items) => {
                    for x in items {
                        walk(x, &mut Vec::new(), &mut out);
                    }
                }
                _ => walk(&v, &mut Vec::new(), &mut out),
            }
        }
        out
    }

    fn assert_same_as_scan(src: &str, paths: &[Vec<String>]) {
        let old = OldLocator::new(src);
        // the default, and one that always uses the flow index
        let new = Locator::new(src);
        let mut flow = Locator::new(src);
        flow.scan_bytes = 0;
        let mut roots = vec![old.root()];
        roots.extend((0..3).map(|i| old.namespace_root(i)));
        for (i, o) in roots.into_iter().enumerate() {
            let n = match i {
                0 => new.root(),
                i => new.namespace_root(i - 1),
            };
            assert_eq!(o, n, "namespace root in {src:?}");
            for p in paths {
                let want = old.find(o, p);
                assert_eq!(want, new.find(n, p), "path {p:?} in {src:?}");
                assert_eq!(want, flow.find(n, p), "path {p:?}, flow index, in {src:?}");
            }
        }
    }

    fn big_json(n: usize, pretty: bool) -> String {
        let steps: JsonMap<String, Json> = (0..n)
            .map(|i| {
                (
                    format!("s-{i}"),
                    serde_json::json!({ "call": "A/B", "with": { "x": format!("{{{{ data.v{i} }}}}") } }),
                )
            })
            .collect();
        let j = serde_json::json!({ "namespace": "N", "procedures": { "P": { "steps": steps } } });
        let r = if pretty {
            serde_json::to_string_pretty(&j)
        } else {
            serde_json::to_string(&j)
        };
        r.unwrap_or_default()
    }

    #[test]
    fn index_matches_scan_on_samples() {
        let mut docs: Vec<String> = [
            include_str!("../../../tests/fixtures/yaml/architecture-dns.yaml"),
            include_str!("../../../tests/fixtures/yaml/architecture-request.yaml"),
            include_str!("../../../tests/fixtures/yaml/full.yaml"),
            include_str!("../../../tests/fixtures/yaml/request.json"),
            include_str!("../../../tests/fixtures/yaml/trusted-request.yaml"),
            include_str!("../../../tests/fixtures/yaml/two-namespaces.yaml"),
            "namespace: A\nprocedures:\n  P:\n    steps:\n      a:\n        with: { zone: x }\n      zone:\n        call: X/Y\n",
            "- namespace: A\n  procedures:\n    P: {}\n- namespace: B\n  procedures:\n    Q: {}\n",
            "{\n  \"namespace\": \"A\",\n  \"procedures\": {\n    \"P\": {}\n  }\n}\n",
            "# namespace: commented\nnamespace: A\nprocedures: { P: { steps: { a: { call: X/Y, with: { 'k': \"v\", a-a: 1 } }, aa: {} } } }\n",
            "namespace: A\r\nprocedures:\r\n  \"Create Zone\":\r\n    steps:\r\n      'a b':\r\n        call:  X/Y\r\n      c :\r\n        before:\r\n          - source: data\r\n            sourcePath: x\r\n          -   template: t\r\n",
            "---\nnamespace: A\n...\n---\nnamespace: B\nprocedures:\n  P:\n    steps:\n      s1: {call: A/B}\n\n      # s2: comment\n      s2:\n\tcall: A/B\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut block = String::from("namespace: Big\nprocedures:\n  Many:\n    steps:\n");
        for i in 0..40 {
            block.push_str(&format!(
                "      s{i}: {{ call: A/B, with: {{ x: \"{{{{ data.v{i} }}}}\" }} }}\n"
            ));
        }
        docs.push(block);
        docs.push(big_json(30, false));
        docs.push(big_json(30, true));
        let fixed: Vec<Vec<String>> = [
            "procedures.P.steps.s2.call",
            "procedures.Create Zone.steps.a b.call",
            "procedures.P.steps.a.with.a-a",
            "procedures.Many.steps.s7.with.x",
        ]
        .iter()
        .map(|p| p.split('.').map(str::to_string).collect())
        .collect();
        for d in &docs {
            let mut paths = doc_paths(d);
            paths.extend(fixed.iter().cloned());
            assert_same_as_scan(d, &paths);
        }
    }

    /// A tiny deterministic generator (no dependency, reproducible).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    const FUZZ_TOKENS: &[&str] = &[
        " ",
        "  ",
        "- ",
        "-",
        "a",
        "b",
        "aa",
        "a-a",
        "a b",
        ":",
        ": ",
        ":\t",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "#",
        "\t",
        "\n",
        "\n",
        "\n  ",
        "\n    ",
        "\n- ",
        "é",
        "namespace",
        "---",
    ];
    const FUZZ_KEYS: &[&str] = &[
        "a",
        "b",
        "aa",
        "a-a",
        "a b",
        "namespace",
        "é",
        "a:",
        "\"a\"",
        "",
        " a",
        "a ",
        "b-",
        "-b",
    ];

    #[test]
    fn index_matches_scan_on_noise() {
        let mut rng = Lcg(7);
        for _ in 0..1500 {
            let len = 1 + rng.next(60);
            let src: String = (0..len)
                .map(|_| FUZZ_TOKENS[rng.next(FUZZ_TOKENS.len())])
                .collect();
            let paths: Vec<Vec<String>> = (0..12)
                .map(|_| {
                    (0..1 + rng.next(4))
                        .map(|_| FUZZ_KEYS[rng.next(FUZZ_KEYS.len())].to_string())
                        .collect()
                })
                .collect();
            assert_same_as_scan(&src, &paths);
        }
    }

    #[test]
    fn key_indexes_match_their_scans() {
        let mut rng = Lcg(11);
        for _ in 0..20000 {
            let line: String = (0..rng.next(14))
                .map(|_| FUZZ_TOKENS[rng.next(FUZZ_TOKENS.len())])
                .filter(|t| !t.contains('\n'))
                .collect();
            let mut flow: HashMap<&str, usize> = HashMap::new();
            flow_keys(&line, |k, c| {
                let e = flow.entry(k).or_insert(c);
                *e = (*e).min(c);
            });
            for key in FUZZ_KEYS {
                if block_indexable(key) {
                    assert_eq!(
                        starts_with_key(&line, key),
                        block_key(&line) == Some(*key),
                        "{line:?} {key:?}"
                    );
                }
                if flow_indexable(key) {
                    assert_eq!(
                        find_key_anywhere(&line, key),
                        flow.get(key).copied(),
                        "{line:?} {key:?}"
                    );
                }
            }
        }
    }
}
