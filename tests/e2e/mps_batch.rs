//! MPS batch requests through the binary: several `<data>` plus `<globalData>` (YAML
//! `batch:` + `globalData:`) run as one transaction per item, one after another; a failing
//! item rolls back only itself, the response lists every item, the exit code is 1.

use crate::util::Sandbox;

/// Three tenants sharing a quota and an admin user from globalData; the second asks for a
/// quota the filesystem provider refuses, after its folders were made.
const XML_BATCH: &str = r#"<request namespace="Hosted Files" procedure="CreateTenantFolders">
  <globalData><quotaMegabytes>64</quotaMegabytes><user><name>admin</name></user></globalData>
  <data><tenant>alpha</tenant></data>
  <data><tenant>beta</tenant><quotaMegabytes>-5</quotaMegabytes></data>
  <data><tenant>gamma</tenant></data>
</request>
"#;

#[test]
fn a_failing_item_rolls_back_alone_and_the_response_lists_all() {
    let sb = Sandbox::new();
    let req = sb.write("batch.xml", XML_BATCH);
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    // Items 1 and 3 committed, with globalData's user; item 2 left nothing behind.
    let tenants = sb.data().join("files/tenants");
    assert!(tenants.join("alpha/users/admin").is_dir(), "{r:?}");
    assert!(tenants.join("gamma/users/admin").is_dir(), "{r:?}");
    assert!(!tenants.join("beta").exists(), "{r:?}");
    // One response document, one entry per item in order.
    assert!(
        r.stdout
            .starts_with("<batchResponse committed=\"2\" failed=\"1\">"),
        "{r:?}"
    );
    let entries: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("<response "))
        .collect();
    assert_eq!(entries.len(), 3, "{r:?}");
    for (i, (entry, status)) in entries
        .iter()
        .zip(["committed", "rolled_back", "committed"])
        .enumerate()
    {
        assert!(entry.contains(&format!("item=\"{}\"", i + 1)), "{entry}");
        assert!(entry.contains(&format!("status=\"{status}\"")), "{entry}");
    }
    assert!(
        r.stdout.contains("<errorContext code=\"0x80070057\""),
        "{r:?}"
    );
    assert!(r.stdout.contains("<tenant>gamma</tenant>"), "{r:?}");
    assert!(r.stderr.contains("item 2/3: "), "{r:?}");
    assert!(r.stderr.contains("rolled_back"), "{r:?}");
    // Three transactions in the journal, each with its own id and outcome.
    let list = sb.run(&["tx", "list"]);
    let states: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        states,
        ["committed", "rolled_back", "committed"],
        "{list:?}"
    );
    for (entry, line) in entries.iter().zip(list.stdout.lines().rev()) {
        let id = line.split_whitespace().next().expect("an id");
        assert!(entry.contains(id), "{entry} / {line}");
    }
}

#[test]
fn a_yaml_batch_answers_in_json_and_commits_every_item() {
    let sb = Sandbox::new();
    let req = sb.write(
        "batch.yaml",
        r#"call: Hosted Files/CreateTenantFolders
globalData: { quotaMegabytes: 32 }
batch:
  - data: { tenant: one }
  - data: { tenant: two }
"#,
    );
    let r = sb.run(&["run", req.to_str().unwrap(), "--output", "json", "--quiet"]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON response");
    assert_eq!(doc["committed"], 2, "{r:?}");
    assert_eq!(doc["failed"], 0, "{r:?}");
    let items = doc["batch"].as_array().expect("a list");
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["item"], 2);
    assert_eq!(items[1]["status"], "committed");
    assert_eq!(items[1]["data"]["tenant"], "two");
    assert_eq!(items[1]["data"]["quotaMegabytes"], 32);
    assert_ne!(items[0]["transactionId"], items[1]["transactionId"]);
    assert!(sb.data().join("files/tenants/one").is_dir());
    assert!(sb.data().join("files/tenants/two").is_dir());
}

#[test]
fn a_bad_item_stops_the_batch_before_anything_runs() {
    let sb = Sandbox::new();
    let req = sb.write(
        "bad.yaml",
        r#"call: Hosted Files/CreateTenantFolders
batch:
  - data: { tenant: first }
  - data: { name: second }
"#,
    );
    let r = sb.run(&["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("batch item 2 of 2"), "{r:?}");
    assert!(r.stderr.contains("needs input `tenant`"), "{r:?}");
    assert!(r.stderr.contains("nothing of the batch ran"), "{r:?}");
    assert!(!sb.data().join("files/tenants/first").exists(), "{r:?}");
    let v = sb.run(&["validate", req.to_str().unwrap()]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(v.stderr.contains("batch item 2 of 2"), "{v:?}");
    // Mixing the two forms is refused with the place.
    let mixed = sb.write(
        "mixed.yaml",
        "call: Hosted Files/CreateTenantFolders\ndata: { tenant: a }\nbatch:\n  - data: { tenant: b }\n",
    );
    let r = sb.run(&["run", mixed.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("mixed.yaml:3:1: `batch`: a request has either `data`"),
        "{r:?}"
    );
}

#[test]
fn plan_shows_each_items_plan() {
    let sb = Sandbox::new();
    let req = sb.write("batch.xml", XML_BATCH);
    let r = sb.run(&["plan", req.to_str().unwrap()]);
    // The second item's quota would fail: the plan says so and exits 1.
    assert_eq!(r.code, 1, "{r:?}");
    for i in 1..=3 {
        assert!(
            r.stdout.contains(&format!("== batch item {i} of 3")),
            "{r:?}"
        );
    }
    assert!(
        r.stdout.contains("create folder tenants/gamma/users/admin"),
        "{r:?}"
    );
    assert!(r.stdout.contains("! will fail: input `megabytes`"), "{r:?}");
    let r = sb.run(&["plan", req.to_str().unwrap(), "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON plan");
    let items = doc.as_array().expect("a list");
    assert_eq!(items.len(), 3, "{r:?}");
    assert_eq!(items[2]["item"], 3);
    assert_eq!(items[2]["plan"].as_array().map(Vec::len), Some(4), "{r:?}");
    // Nothing was changed.
    assert!(!sb.data().join("files/tenants").exists());
}

/// Every item starts from the request's globalData: what the first item's transaction
/// writes into it is not what the second sees. A `do-not-log` global value is masked in
/// every item's response.
#[test]
fn each_item_works_on_its_own_copy_of_global_data() {
    let sb = Sandbox::new();
    let req = sb.write(
        "iso.xml",
        r#"<request>
  <globalData><shared>original</shared><password do-not-log="1">S3cretPw!</password></globalData>
  <data><tenant>alpha</tenant></data>
  <data><tenant>beta</tenant></data>
  <procedure>
    <transform id="mark">
      <before source="data" sourcePath="shared" destination="data" destinationPath="seenBefore"/>
      <before template="changed by {{ data/tenant }}" destination="data" destinationPath="shared" mode="merge"/>
    </transform>
  </procedure>
</request>
"#,
    );
    let r = sb.run(&[
        "run",
        req.to_str().unwrap(),
        "--output",
        "json",
        "--quiet",
        "--ephemeral",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON response");
    let items = doc["batch"].as_array().expect("a list");
    assert_eq!(items.len(), 2, "{r:?}");
    for (item, tenant) in items.iter().zip(["alpha", "beta"]) {
        let data = &item["data"];
        assert_eq!(data["seenBefore"]["shared"], "original", "{r:?}");
        assert_eq!(data["shared"], format!("changed by {tenant}"), "{r:?}");
    }
    assert!(!r.stdout.contains("S3cretPw!"), "{r:?}");
    assert!(r.stdout.contains("********"), "{r:?}");
}
