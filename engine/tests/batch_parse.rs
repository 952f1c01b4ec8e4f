//! Batch requests in YAML and JSON (`batch:` + `globalData:`), the same model as MPS XML's
//! several `<data>` + `<globalData>`; and `parse_request` refusing a batch it cannot run as
//! one request.

use provisio_engine::model::{Format, Request, RequestDocument};
use provisio_engine::request::{parse_request, parse_request_document};

fn document(src: &str, format: Format) -> RequestDocument {
    parse_request_document(src, "r.yaml", format).unwrap_or_else(|e| panic!("{e}"))
}

fn split(src: &str, format: Format) -> Vec<Request> {
    match document(src, format) {
        RequestDocument::Batch(b) => b.split(),
        RequestDocument::Single(r) => panic!("expected a batch, got {r:?}"),
    }
}

fn text(r: &Request, name: &str) -> String {
    r.data
        .child(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.data))
        .string_value()
}

#[test]
fn yaml_batch_items_see_global_data() {
    let requests = split(
        r#"call: Hosted Files/CreateTenantFolders
globalData: { quotaMegabytes: 50, owner: { name: ops } }
batch:
  - data: { tenant: alpha }
  - data: { tenant: beta, quotaMegabytes: 70 }
  - data: { tenant: gamma }
context: { clientContext: { clientTransactionId: c-1 } }
"#,
        Format::Yaml,
    );
    let tenants: Vec<String> = requests.iter().map(|r| text(r, "tenant")).collect();
    assert_eq!(tenants, ["alpha", "beta", "gamma"]);
    let quotas: Vec<String> = requests.iter().map(|r| text(r, "quotaMegabytes")).collect();
    assert_eq!(quotas, ["50", "70", "50"]);
    for r in &requests {
        assert_eq!(text(r, "owner"), "ops");
        assert!(r.context.child("clientContext").is_some());
        assert_eq!(r.format, Format::Yaml);
    }
}

#[test]
fn json_batch_is_the_same_model() {
    let requests = split(
        r#"{ "call": "A/B", "globalData": { "g": 1 }, "batch": [ { "data": { "n": 1 } }, { "data": { "n": 2 } } ] }"#,
        Format::Json,
    );
    assert_eq!(requests.len(), 2);
    assert_eq!(text(&requests[1], "n"), "2");
    assert_eq!(text(&requests[1], "g"), "1");
}

#[test]
fn one_data_without_global_data_is_a_plain_request() {
    match document("call: A/B\ndata: { n: 1 }\n", Format::Yaml) {
        RequestDocument::Single(r) => assert_eq!(text(&r, "n"), "1"),
        RequestDocument::Batch(b) => panic!("expected one request, got {b:?}"),
    }
    // With globalData it is a batch of one, as in XML.
    let requests = split(
        "call: A/B\nglobalData: { g: 1 }\ndata: { n: 1 }\n",
        Format::Yaml,
    );
    assert_eq!(requests.len(), 1);
    assert_eq!(text(&requests[0], "g"), "1");
    assert_eq!(text(&requests[0], "n"), "1");
}

#[test]
fn mixed_or_malformed_batches_are_refused_with_the_place() {
    let err = |src: &str| {
        parse_request_document(src, "r.yaml", Format::Yaml)
            .expect_err("refused")
            .to_string()
    };
    let e = err("call: A/B\ndata: { n: 1 }\nbatch:\n  - data: { n: 2 }\n");
    assert!(
        e.starts_with("r.yaml:3:1: `batch`: a request has either `data`"),
        "{e}"
    );
    assert!(e.contains("hint: move `data` into the batch"), "{e}");
    let e = err("call: A/B\nbatch: { n: 1 }\n");
    assert!(
        e.contains("`batch` must be a list of `{ data: … }` items"),
        "{e}"
    );
    let e = err("call: A/B\nbatch: []\n");
    assert!(e.contains("`batch` holds no item"), "{e}");
    let e = err("call: A/B\nbatch:\n  - data: { n: 1 }\n  - tenant: x\n");
    assert!(
        e.contains("item 2 has `tenant`; a batch item holds only `data`"),
        "{e}"
    );
    let e = err("call: A/B\nbatch:\n  - 3\n");
    assert!(e.contains("item 1 is not a `{ data: … }` mapping"), "{e}");
    let e = err("call: A/B\nbatch:\n  - data: [1, 2]\n");
    assert!(e.contains("`data` must be a mapping"), "{e}");
}

#[test]
fn parse_request_refuses_a_batch() {
    let e = parse_request(
        "<request namespace=\"A\" procedure=\"B\"><data/><data/></request>",
        "r.xml",
        Format::Xml,
    )
    .expect_err("a batch is not one request");
    assert!(
        e.message.starts_with(
            "this is a batch request (2 data item(s)), which runs as one transaction per item"
        ),
        "{e}"
    );
    assert_eq!(e.source_ref.line, 1);
    let e = parse_request("call: A/B\nglobalData: { g: 1 }\n", "r.yaml", Format::Yaml)
        .expect_err("a batch is not one request");
    assert!(e.message.contains("(1 data item(s) and globalData)"), "{e}");
}

#[test]
fn yaml_batch_items_know_their_lines() {
    let src = r#"call: A/B
globalData: { g: 1 }
batch:
  - data: { n: 1 }
  - data:
      n: 2
      data: { nested: true }
  -   data: { n: 3 }
"#;
    let RequestDocument::Batch(b) = document(src, Format::Yaml) else {
        panic!("a batch");
    };
    let lines: Vec<u32> = b.items.iter().map(|i| i.source_ref.line).collect();
    // The third item's `data` is not in the column of the others: it is placed at `batch`
    // rather than at the nested `data` key above it.
    assert_eq!(lines, [4, 5, 3]);
    // JSON on one line: every item is placed at the `batch` key.
    let RequestDocument::Batch(b) = document(
        r#"{"call": "A/B", "batch": [{"data": {"n": 1}}, {"data": {"n": 2}}]}"#,
        Format::Json,
    ) else {
        panic!("a batch");
    };
    assert!(b.items.iter().all(|i| i.source_ref.line == 1));
}
