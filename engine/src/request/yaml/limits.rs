//! Limits checked on the YAML text before serde_yaml sees it, in one linear pass: the
//! nesting depth. libyaml takes time quadratic in the depth before serde_yaml's own
//! recursion limit applies (100,000 levels took 24 s), so the depth is bounded first.

use super::super::MAX_DEPTH;

/// Where (1-based line and column) the nesting of `src` first exceeds `MAX_DEPTH`, if it
/// does. The count is a lower bound of the depth serde_yaml would see (flow brackets that
/// open a value, block indentation levels, `- ` entries opening a sequence on one line),
/// so no document serde_yaml accepts is refused here.
pub(super) fn too_deep(src: &str) -> Option<(u32, u32)> {
    too_deep_at(src, MAX_DEPTH)
}

fn too_deep_at(src: &str, limit: usize) -> Option<(u32, u32)> {
    // indentation of the enclosing block-style nodes
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // inside a quoted scalar that continues on the next line
    let mut quote: Option<u8> = None;
    // the lines of a block scalar (`|`, `>`) are indented deeper than this
    let mut block_scalar: Option<usize> = None;
    for (n, line) in src.lines().enumerate() {
        let b = line.as_bytes();
        let indent = b.iter().take_while(|&&c| c == b' ').count();
        if let Some(bi) = block_scalar {
            if indent >= b.len() || indent > bi {
                continue;
            }
            block_scalar = None;
        }
        let mut i = indent;
        let mut block = indents.len();
        if flow == 0 && quote.is_none() {
            if i >= b.len() || b[i] == b'#' {
                continue;
            }
            while indents.last().is_some_and(|&x| x >= indent) {
                indents.pop();
            }
            indents.push(indent);
            block = indents.len();
            // `- - x`, `? - ? x`: each further indicator (a sequence entry, an explicit key
            // or its value) opens a collection inside the first
            let mut markers = 0usize;
            while matches!(b.get(i), Some(b'-' | b'?' | b':'))
                && matches!(b.get(i + 1), Some(b' ' | b'\t') | None)
            {
                markers += 1;
                // at the marker that goes too deep, not at the end of a long `- - - …` line
                if block + markers - 1 > limit {
                    return Some((n as u32 + 1, i as u32 + 1));
                }
                i += 1;
                while matches!(b.get(i), Some(b' ' | b'\t')) {
                    i += 1;
                }
            }
            block += markers.saturating_sub(1);
            if block > limit {
                return Some((n as u32 + 1, i as u32 + 1));
            }
        }
        // flow brackets and quotes that open a value: at the start, or after `:`, `-`,
        // `?`, `,`, `[`, `{` and blanks
        let mut value_start = true;
        while i < b.len() {
            let c = b[i];
            if let Some(q) = quote {
                if c == b'\\' && q == b'"' {
                    i += 2;
                    continue;
                }
                if c == q {
                    if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                    value_start = false;
                }
                i += 1;
                continue;
            }
            match c {
                b'#' if i == 0 || matches!(b[i - 1], b' ' | b'\t') => break,
                b'"' | b'\'' if value_start => quote = Some(c),
                // a node's anchor (`&a`) or tag (`!t`, `!!str`, `!<tag:x>`) comes before
                // its value: what follows still opens one (`&a [`, `!t {`)
                b'&' | b'!' if value_start => {
                    i = property_end(b, i);
                    continue;
                }
                b'[' | b'{' if value_start => {
                    flow += 1;
                    if block + flow > limit {
                        return Some((n as u32 + 1, i as u32 + 1));
                    }
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    value_start = false;
                }
                b' ' | b'\t' => {}
                b':' | b'-' | b'?' | b',' => value_start = true,
                _ => value_start = false,
            }
            i += 1;
        }
        if flow == 0 && quote.is_none() {
            let body = line.trim_end();
            let body = match body.find(" #") {
                Some(h) => body[..h].trim_end(),
                None => body,
            };
            let tail = body.trim_end_matches(|c: char| c.is_ascii_digit() || c == '+' || c == '-');
            if tail.ends_with('|') || tail.ends_with('>') {
                block_scalar = Some(indent);
            }
        }
    }
    None
}

/// The index just past the anchor or tag that starts at `b[i]`: a verbatim tag runs to its
/// `>`, anything else to the next blank or flow indicator (which libyaml does not take into
/// an anchor's name or a tag shorthand).
fn property_end(b: &[u8], i: usize) -> usize {
    if b.get(i..i + 2) == Some(b"!<") {
        return b[i..]
            .iter()
            .position(|&c| c == b'>')
            .map_or(b.len(), |p| i + p + 1);
    }
    let mut j = i + 1;
    while j < b.len() && !matches!(b[j], b' ' | b'\t' | b',' | b'[' | b']' | b'{' | b'}') {
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flow_block_and_entries() {
        assert_eq!(too_deep_at("a: [[1]]\n", 3), None);
        assert_eq!(too_deep_at("a: [[[1]]]\n", 3), Some((1, 6)));
        assert_eq!(too_deep_at("a:\n  b:\n    c: 1\n", 3), None);
        assert_eq!(
            too_deep_at("a:\n  b:\n    c:\n      d: 1\n", 3),
            Some((4, 7))
        );
        assert_eq!(too_deep_at("- - - x\n", 3), None);
        assert_eq!(too_deep_at("- - - - x\n", 3), Some((1, 7)));
        let long = format!("{}x\n", "- ".repeat(100_000));
        assert_eq!(too_deep_at(&long, 3), Some((1, 7)));
    }

    #[test]
    fn counts_explicit_keys_and_values_as_entries() {
        assert_eq!(too_deep_at("? - x\n", 2), None);
        assert_eq!(too_deep_at("? - ? x\n", 2), Some((1, 5)));
        assert_eq!(too_deep_at("- ? - x\n", 2), Some((1, 5)));
        assert_eq!(too_deep_at("? x\n: - - x\n", 2), Some((2, 5)));
        assert_eq!(too_deep_at("-\t-\t-\tx\n", 2), Some((1, 5)));
        let keys = format!("x:\n  {}1\n", "- ? ".repeat(100_000));
        assert_eq!(too_deep_at(&keys, 3), Some((2, 7)));
        let keys = format!("x:\n  {}1\n", "? ".repeat(100_000));
        assert_eq!(too_deep_at(&keys, 3), Some((2, 7)));
        // a plain scalar that starts with those characters
        assert_eq!(too_deep_at("a: - ? : x\n-x ?y :z\n", 1), None);
    }

    #[test]
    fn counts_brackets_after_anchors_and_tags() {
        for src in [
            "a: &x [&y [&z [1]]]\n",
            "a: !t [!!seq [!<tag:x> [1]]]\n",
            "a: &x[&y[&z[1]]]\n",
            "a: !t{b: !t{c: !t{d: 1}}}\n",
            "a: [&x !t [&y !t [1]]]\n",
        ] {
            // the mapping and three brackets: four levels
            assert!(too_deep_at(src, 3).is_some(), "{src}");
            assert_eq!(too_deep_at(src, 4), None, "{src}");
        }
        let anchored = format!("a: {}1\n", "&x [".repeat(100_000));
        assert_eq!(too_deep_at(&anchored, 3), Some((1, 15)));
        // not a property: inside a plain scalar, or an alias
        assert_eq!(too_deep_at("a: x&y [[[[\nb: *x\n", 2), None);
    }

    #[test]
    fn ignores_text_that_only_looks_nested() {
        let quoted = "a: \"[[[[[[\"\nb: '{{{{{{'\nc: x[[[[[[\nd: 1 # [[[[[[\n";
        assert_eq!(too_deep_at(quoted, 2), None);
        let block = "a: |\n  [[[[[[\n      {{{{{{\nb: 1\n";
        assert_eq!(too_deep_at(block, 2), None);
        assert_eq!(too_deep_at("a: 'it''s [[[[['\n", 2), None);
    }
}
