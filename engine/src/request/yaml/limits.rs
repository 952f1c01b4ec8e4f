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
            // `- - x`: each further entry marker opens a sequence inside the first
            let mut dashes = 0usize;
            while b.get(i) == Some(&b'-') && matches!(b.get(i + 1), Some(b' ') | None) {
                dashes += 1;
                // at the marker that goes too deep, not at the end of a long `- - - …` line
                if block + dashes - 1 > limit {
                    return Some((n as u32 + 1, i as u32 + 1));
                }
                i += 1;
                while b.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
            block += dashes.saturating_sub(1);
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
    fn ignores_text_that_only_looks_nested() {
        let quoted = "a: \"[[[[[[\"\nb: '{{{{{{'\nc: x[[[[[[\nd: 1 # [[[[[[\n";
        assert_eq!(too_deep_at(quoted, 2), None);
        let block = "a: |\n  [[[[[[\n      {{{{{{\nb: 1\n";
        assert_eq!(too_deep_at(block, 2), None);
        assert_eq!(too_deep_at("a: 'it''s [[[[['\n", 2), None);
    }
}
