//! The JSON Schemas of the YAML/JSON formats (`request::schema`) against the parser: every
//! example file and every YAML example of the docs that the parser accepts validates against
//! the schema of its kind (checked with the `jsonschema` crate, an independent validator),
//! and what the parser refuses for its keys or names the schema refuses too.

use provisio_engine::model::Format;
use provisio_engine::request::{self, schema};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Each YAML document (or the JSON value) of `src`, as JSON.
fn documents(src: &str, format: Format) -> Vec<Value> {
    use serde::Deserialize;
    match format {
        Format::Json => vec![serde_json::from_str(src).expect("JSON")],
        _ => serde_yaml::Deserializer::from_str(src)
            .map(|d| {
                let v = serde_yaml::Value::deserialize(d).expect("YAML");
                serde_json::to_value(v).expect("YAML as JSON")
            })
            .collect(),
    }
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("the generated schema is a valid JSON Schema")
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// What the parser makes of a source: a namespace file, a request, or neither.
#[derive(Debug, PartialEq)]
enum Kind {
    Namespace,
    Request,
    Neither,
}

fn kind(src: &str, name: &str, format: Format) -> Kind {
    if provisio_engine::parse_namespaces(src, name, format).is_ok_and(|n| !n.is_empty()) {
        Kind::Namespace
    } else if request::parse_request_document(src, name, format).is_ok() {
        Kind::Request
    } else {
        Kind::Neither
    }
}

/// The example files: the namespace folders and workflows of the repository, and the
/// engine's YAML/JSON fixtures.
fn example_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = Vec::new();
    for dir in [
        "namespaces",
        "workflows",
        "engine/tests/fixtures/yaml",
        "tests/fixtures/operator/namespaces",
        "tests/fixtures/crash/namespaces",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if matches!(
                Format::from_extension(&p),
                Some(Format::Yaml) | Some(Format::Json)
            ) {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The ```yaml blocks of the docs.
fn doc_examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(repo().join("docs")) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("md") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read doc");
        let mut block: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim_start().starts_with("```yaml") => {
                    block = Some((i + 1, String::new()))
                }
                Some((start, body)) if line.trim_start().starts_with("```") => {
                    out.push((format!("{}:{}", p.display(), start), std::mem::take(body)));
                    block = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    out
}

#[test]
fn every_example_the_parser_accepts_validates_against_its_schema() {
    let namespace = validator(&schema::namespace());
    let request = validator(&schema::request());
    let mut checked = (0, 0);
    let mut sources: Vec<(String, String, Format)> = example_files()
        .into_iter()
        .map(|p| {
            let format = Format::from_extension(&p).expect("a format");
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).expect("read"),
                format,
            )
        })
        .collect();
    let files = sources.len();
    sources.extend(
        doc_examples()
            .into_iter()
            .map(|(name, src)| (name, src, Format::Yaml)),
    );
    for (name, src, format) in &sources {
        let (v, count) = match kind(src, name, *format) {
            Kind::Namespace => (&namespace, &mut checked.0),
            Kind::Request => (&request, &mut checked.1),
            Kind::Neither => continue,
        };
        for doc in documents(src, *format) {
            let e = errors(v, &doc);
            assert!(e.is_empty(), "{name} does not validate:\n{}", e.join("\n"));
        }
        *count += 1;
    }
    assert!(files >= 10, "found only {files} example files");
    assert!(
        checked.0 >= 8 && checked.1 >= 6,
        "too few examples validated: {checked:?}"
    );
}

#[test]
fn what_the_parser_refuses_for_keys_and_names_the_schema_refuses() {
    let namespace = validator(&schema::namespace());
    let request = validator(&schema::request());
    let bad_namespaces = [
        // A misspelled key.
        "namespace: N\nprocedures:\n  P:\n    acess: public\n",
        // A name outside its set.
        "namespace: N\nprocedures:\n  P:\n    access: protected\n",
        "namespace: N\nprocedures:\n  P:\n    type: twophase\n",
        // A step key that does not exist, deep inside try.
        "namespace: N\nprocedures:\n  P:\n    steps:\n      t:\n        try:\n          a:\n            cal: X/Y\n",
        // `namespace:` is required.
        "procedures: {}\n",
        "namespace: N\nprocedures:\n  P:\n    steps:\n      s:\n        before:\n          - { source: data, mode: upsert }\n",
    ];
    for src in bad_namespaces {
        assert_eq!(
            kind(src, "bad.yaml", Format::Yaml),
            Kind::Neither,
            "the parser accepts {src}"
        );
        let doc = &documents(src, Format::Yaml)[0];
        assert!(!namespace.is_valid(doc), "the schema accepts {src}");
    }
    for src in ["cal: A/B\n", "call: A/B\ndata: {}\ncontxt: {}\n"] {
        assert_eq!(kind(src, "bad.yaml", Format::Yaml), Kind::Neither, "{src}");
        let doc = &documents(src, Format::Yaml)[0];
        assert!(!request.is_valid(doc), "the schema accepts {src}");
    }
}

#[test]
fn the_schemas_name_every_key_and_name_the_parser_reads() {
    let ns = schema::namespace();
    let text = ns.to_string();
    for key in [
        "\"saveDataForRollback\"",
        "\"forEach\"",
        "\"executeData\"",
        "\"two-phase\"",
        "\"replace\"",
        "\"skip\"",
    ] {
        assert!(text.contains(key), "{key} missing from {text}");
    }
    assert_eq!(
        ns["$schema"], "http://json-schema.org/draft-07/schema#",
        "draft 7, for editors"
    );
    let req = schema::request();
    for key in [
        "call",
        "procedure",
        "data",
        "batch",
        "globalData",
        "context",
    ] {
        assert!(req["properties"].get(key).is_some(), "{key}: {req}");
    }
}
