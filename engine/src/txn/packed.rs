//! A compact, flat encoding of an element tree for the journal (the request's data, written
//! once per transaction in bounded chunks), about the size of the XML it came from. The
//! derived serde form of [`Element`] spells out every field of every element and nests three
//! JSON levels per element: ~4x the XML of small elements (276 bytes for a 66-byte
//! `<item><key>…</key><value>…</value></item>`, 75 packed), and the journal built a
//! `serde_json::Value` of the whole tree on top of that.
//!
//! The encoding is one JSON array of tokens, in document order:
//! - `["name"]` opens an element; `["name", {"a": [["k", "v"], …], "l": true, "n": "urn:…"}]`
//!   one with attributes (`a`), that came from a list (`l`) or has an XML namespace (`n`);
//! - a string, integer, float or boolean is a text child of the open element (a float keeps
//!   its `.0`, so it reads back as a float); `{"f": "NaN" | "inf" | "-inf"}` is a float JSON
//!   cannot spell;
//! - `null` closes the open element.
//!
//! Flat, so neither writing nor reading recurses (data may nest deeper than serde_json's
//! recursion limit), and it can be cut into chunks anywhere: a reader concatenates them.

use crate::data::{Element, Node, Scalar};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::io::Write;

/// Writes into a list of chunks of at most `limit` bytes each (cut at any byte).
struct ChunkWriter {
    limit: usize,
    chunks: Vec<Vec<u8>>,
    bytes: u64,
}

impl ChunkWriter {
    fn current(&mut self) -> &mut Vec<u8> {
        if self.chunks.last().is_none_or(|c| c.len() >= self.limit) {
            self.chunks.push(Vec::with_capacity(self.limit));
        }
        self.chunks.last_mut().expect("a chunk was just pushed")
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        self.bytes += n as u64;
        while !buf.is_empty() {
            let limit = self.limit;
            let chunk = self.current();
            let take = (limit - chunk.len()).min(buf.len());
            chunk.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The attributes and list flag of an element, when it has either.
#[derive(serde::Serialize)]
struct Meta<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    a: &'a [(crate::data::Name, crate::data::Name)],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    l: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<&'a str>,
}

fn write_scalar<W: Write>(w: &mut W, s: &Scalar) -> serde_json::Result<()> {
    match s {
        Scalar::Str(s) => serde_json::to_writer(&mut *w, s.as_str()),
        Scalar::Int(i) => serde_json::to_writer(&mut *w, i),
        Scalar::Float(f) if f.is_finite() => serde_json::to_writer(&mut *w, f),
        Scalar::Float(f) => {
            let name = if f.is_nan() {
                "NaN"
            } else if *f > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            write!(w, "{{\"f\":\"{name}\"}}").map_err(serde_json::Error::io)
        }
        Scalar::Bool(b) => serde_json::to_writer(&mut *w, b),
    }
}

fn write_open<W: Write>(w: &mut W, e: &Element) -> serde_json::Result<()> {
    w.write_all(b"[").map_err(serde_json::Error::io)?;
    serde_json::to_writer(&mut *w, e.name.as_str())?;
    if !e.attrs.is_empty() || e.list_item || e.ns.is_some() {
        w.write_all(b",").map_err(serde_json::Error::io)?;
        serde_json::to_writer(
            &mut *w,
            &Meta {
                a: &e.attrs,
                l: e.list_item,
                n: e.ns.as_deref(),
            },
        )?;
    }
    w.write_all(b"]").map_err(serde_json::Error::io)
}

/// An element tree in the packed encoding, cut into chunks of at most `chunk_bytes` (the
/// last may be shorter); also returns the total size.
pub(crate) fn pack(root: &Element, chunk_bytes: usize) -> (Vec<Vec<u8>>, u64) {
    let mut w = ChunkWriter {
        limit: chunk_bytes.max(1),
        chunks: Vec::new(),
        bytes: 0,
    };
    // Writing to memory cannot fail, and every value here is JSON-encodable.
    let written = write_tree(&mut w, root);
    debug_assert!(written.is_ok(), "{written:?}");
    let total = w.bytes;
    (w.chunks, total)
}

/// A small element tree (an undo record) in the packed encoding, in one exact-size buffer:
/// `<undo><created>u000123</created></undo>` is 35 bytes packed, ~250 as an [`Element`].
pub(crate) fn pack_small(root: &Element) -> Box<[u8]> {
    let mut w = Vec::with_capacity(64);
    // Writing to memory cannot fail, and every value here is JSON-encodable.
    let written = write_tree(&mut w, root);
    debug_assert!(written.is_ok(), "{written:?}");
    w.into_boxed_slice()
}

fn write_tree<W: Write>(w: &mut W, root: &Element) -> serde_json::Result<()> {
    w.write_all(b"[").map_err(serde_json::Error::io)?;
    write_open(w, root)?;
    // The open elements and the next child of each to write.
    let mut stack: Vec<(&Element, usize)> = vec![(root, 0)];
    while let Some((e, i)) = stack.last_mut() {
        let Some(child) = e.children.get(*i) else {
            w.write_all(b",null").map_err(serde_json::Error::io)?;
            stack.pop();
            continue;
        };
        *i += 1;
        w.write_all(b",").map_err(serde_json::Error::io)?;
        match child {
            Node::Text(s) => write_scalar(w, s)?,
            Node::Element(c) => {
                write_open(w, c)?;
                stack.push((c, 0));
            }
        }
    }
    w.write_all(b"]").map_err(serde_json::Error::io)
}

/// Reads a tree written by [`pack`] (its chunks concatenated).
pub(crate) fn unpack(bytes: &[u8]) -> Result<Element, serde_json::Error> {
    serde_json::from_slice::<Packed>(bytes).map(|p| p.0)
}

/// A whole packed tree.
struct Packed(Element);

/// One token of the encoding.
enum Token {
    Open(Element),
    Text(Scalar),
    Close,
}

struct MetaIn {
    a: Vec<(crate::data::Name, crate::data::Name)>,
    l: bool,
    n: Option<crate::data::NsUri>,
}

/// The second item of an open token: attributes and list flag.
impl<'de> Deserialize<'de> for MetaIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            a: Vec<(crate::data::Name, crate::data::Name)>,
            #[serde(default)]
            l: bool,
            #[serde(default)]
            n: Option<crate::data::NsUri>,
        }
        let raw = Raw::deserialize(d)?;
        Ok(MetaIn {
            a: raw.a,
            l: raw.l,
            n: raw.n,
        })
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TokenVisitor;
        impl<'de> Visitor<'de> for TokenVisitor {
            type Value = Token;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a packed element token")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Token, E> {
                Ok(Token::Text(Scalar::Str(v.into())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Token, E> {
                Ok(Token::Text(Scalar::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Token, E> {
                i64::try_from(v)
                    .map(|v| Token::Text(Scalar::Int(v)))
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Token, E> {
                Ok(Token::Text(Scalar::Float(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Token, E> {
                Ok(Token::Text(Scalar::Bool(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Token, E> {
                Ok(Token::Close)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Token, A::Error> {
                let name: crate::data::Name = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("an open token without a name"))?;
                let mut e = Element::new(name);
                if let Some(meta) = seq.next_element::<MetaIn>()? {
                    e.attrs = meta.a;
                    e.list_item = meta.l;
                    e.ns = meta.n;
                }
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("an open token has at most two items"));
                }
                Ok(Token::Open(e))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Token, A::Error> {
                let mut value = None;
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if k == "f" {
                        value = Some(match v.as_str() {
                            "NaN" => f64::NAN,
                            "inf" => f64::INFINITY,
                            "-inf" => f64::NEG_INFINITY,
                            other => {
                                return Err(de::Error::custom(format!("unknown float `{other}`")))
                            }
                        });
                    }
                }
                value
                    .map(|f| Token::Text(Scalar::Float(f)))
                    .ok_or_else(|| de::Error::custom("an object token without `f`"))
            }
        }
        d.deserialize_any(TokenVisitor)
    }
}

impl<'de> Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PackedVisitor;
        impl<'de> Visitor<'de> for PackedVisitor {
            type Value = Packed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a packed element tree (an array of tokens)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Packed, A::Error> {
                let mut open: Vec<Element> = Vec::new();
                let mut root = None;
                while let Some(token) = seq.next_element::<Token>()? {
                    if root.is_some() {
                        return Err(de::Error::custom("tokens after the root element"));
                    }
                    match token {
                        Token::Open(e) => open.push(e),
                        Token::Text(s) => open
                            .last_mut()
                            .ok_or_else(|| de::Error::custom("text outside any element"))?
                            .children
                            .push(Node::Text(s)),
                        Token::Close => {
                            let done = open
                                .pop()
                                .ok_or_else(|| de::Error::custom("a close with no open element"))?;
                            match open.last_mut() {
                                Some(parent) => parent.children.push(Node::Element(done)),
                                None => root = Some(done),
                            }
                        }
                    }
                }
                root.map(Packed)
                    .ok_or_else(|| de::Error::custom("the packed tree ends before its root closes"))
            }
        }
        d.deserialize_seq(PackedVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Element {
        let mut root = Element::new("data");
        root.attrs.push(("id".into(), "7 \"q\"".into()));
        let mut users = Element::new("users");
        for i in 0..50 {
            let mut u = Element::with_text("user", format!("u{i}\n<&>é"));
            u.list_item = i % 2 == 0;
            if i % 7 == 0 {
                u.ns = Some("urn:example:users".into());
            }
            users.children.push(Node::Element(u));
        }
        root.children.push(Node::Element(users));
        root.children.push(Node::Text(Scalar::Str("mixed".into())));
        root.children
            .push(Node::Element(Element::with_scalar("n", Scalar::Int(-3))));
        root.children
            .push(Node::Element(Element::with_scalar("f", Scalar::Float(1.0))));
        root.children
            .push(Node::Element(Element::with_scalar("b", Scalar::Bool(true))));
        root.children.push(Node::Element(Element::with_scalar(
            "inf",
            Scalar::Float(f64::NEG_INFINITY),
        )));
        root.children.push(Node::Element(Element::new("empty")));
        root
    }

    #[test]
    fn a_tree_reads_back_exactly_from_chunks_cut_anywhere() {
        let root = sample();
        for chunk in [1, 7, 64, 1 << 20] {
            let (chunks, total) = pack(&root, chunk);
            assert!(chunks.iter().all(|c| c.len() <= chunk));
            let joined: Vec<u8> = chunks.concat();
            assert_eq!(joined.len() as u64, total);
            assert_eq!(unpack(&joined).unwrap(), root, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_nan_reads_back_as_nan_and_deep_nesting_does_not_recurse() {
        let nan = Element::with_scalar("x", Scalar::Float(f64::NAN));
        let (chunks, _) = pack(&nan, 1024);
        let back = unpack(&chunks.concat()).unwrap();
        assert!(matches!(back.scalar(), Some(Scalar::Float(f)) if f.is_nan()));

        let mut deep = Element::with_text("leaf", "x");
        // Deeper than serde_json's recursion limit (128).
        for _ in 0..1_000 {
            let mut parent = Element::new("n");
            parent.children.push(Node::Element(deep));
            deep = parent;
        }
        let (chunks, _) = pack(&deep, 4096);
        assert_eq!(unpack(&chunks.concat()).unwrap(), deep);
    }

    #[test]
    fn the_encoding_is_about_the_size_of_the_xml() {
        let mut items = Element::new("items");
        for i in 0..1000 {
            let mut item = Element::new("item");
            item.children
                .push(Node::Element(Element::with_text("key", format!("k{i:08}"))));
            item.children.push(Node::Element(Element::with_text(
                "value",
                format!("value number {i}"),
            )));
            items.children.push(Node::Element(item));
        }
        let xml_bytes: usize = (0..1000)
            .map(|i| {
                format!("<item><key>k{i:08}</key><value>value number {i}</value></item>").len()
            })
            .sum();
        let (_, packed) = pack(&items, 6144);
        let derived = serde_json::to_vec(&items).unwrap().len();
        // 9 bytes per item more than the XML here (`null` closes, quotes, commas).
        assert!(
            packed as usize <= xml_bytes + xml_bytes / 4,
            "{packed} vs {xml_bytes}"
        );
        // The element tree's serde form (which leaves out empty attributes and false
        // `list_item`s since the journal records were trimmed) is still over twice as big.
        assert!(packed as usize * 2 < derived, "{packed} vs {derived}");
    }

    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        for bad in [
            &b"[]"[..],
            b"[[\"a\"]",
            b"[null]",
            b"[\"t\"]",
            b"[[\"a\"],null,[\"b\"],null]",
            b"{}",
        ] {
            assert!(unpack(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
