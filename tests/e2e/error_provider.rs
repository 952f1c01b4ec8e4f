//! The Error Provider through the binary: a catch block re-raises with `SetError`, and the
//! transaction ends failed with exactly that code, description and error source, with
//! what it had done undone.

use crate::util::Sandbox;

/// A trusted XML request: a folder is created, then a try whose step fails (the folder
/// `tenants/taken` exists) and whose catch re-raises as E_INVALIDARG with its own words.
const REQUEST: &str = r#"<request>
  <data><tenant>contoso</tenant></data>
  <procedure>
    <execute id="made" namespace="Filesystem Provider" procedure="CreateFolder">
      <before template="tenants/{{ data/tenant }}" destination="executeData" destinationPath="path"/>
    </execute>
    <try id="guarded">
      <execute id="clash" namespace="Filesystem Provider" procedure="CreateFolder">
        <executeData><path>tenants/taken</path></executeData>
      </execute>
    </try>
    <catch>
      <execute id="report" namespace="Error Provider" procedure="ReportEvent">
        <executeData><level>warn</level></executeData>
        <before source="context" sourcePath="errorContext/@description" destination="executeData" destinationPath="parameters/parameter"/>
      </execute>
      <execute id="raise" namespace="Error Provider" procedure="SetError">
        <executeData><hr>0x80070057</hr><desc>tenant contoso cannot be set up: its folder is taken</desc></executeData>
      </execute>
    </catch>
  </procedure>
</request>
"#;

#[test]
fn a_catch_block_re_raises_through_set_error() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.data().join("files/tenants/taken")).expect("mkdir");
    let req = sb.write("req.xml", REQUEST);
    // The providers' built-in namespaces are enough: an empty namespace folder.
    let none = sb.path("none");
    std::fs::create_dir_all(&none).expect("mkdir");
    let r = sb.run_with(&["run", req.to_str().unwrap()], &none);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("status=\"rolled_back\""), "{r:?}");
    assert!(
        r.stdout.contains(
            "<errorContext code=\"0x80070057\" description=\"tenant contoso cannot be set up: its folder is taken\" step=\"guarded/catch/raise\">"
        ),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(
            "<errorSource namespace=\"Error Provider\" procedure=\"SetError\" step=\"guarded/catch/raise\"/>"
        ),
        "{r:?}"
    );
    // The catch logged the caught error through ReportEvent first.
    assert!(
        r.stderr
            .contains("provisio::event: folder `tenants/taken` already exists"),
        "{r:?}"
    );
    // The step before the try was undone.
    assert!(!sb.data().join("files/tenants/contoso").exists(), "{r:?}");
    assert!(sb.data().join("files/tenants/taken").is_dir());
    // The journal keeps the same code and description.
    let list = sb.run_with(&["tx", "list"], &none);
    let id = list
        .stdout
        .split_whitespace()
        .next()
        .expect("one transaction")
        .to_string();
    let show = sb.run_with(&["tx", "show", &id], &none);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(
        show.stdout
            .contains("0x80070057: tenant contoso cannot be set up: its folder is taken"),
        "{show:?}"
    );
    assert!(show.stdout.contains("rolled_back"), "{show:?}");
    // The same request in JSON form answers with the same error.
    let r = sb.run_with(
        &["run", req.to_str().unwrap(), "--output", "json", "--quiet"],
        &none,
    );
    assert_eq!(r.code, 1, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON response");
    assert_eq!(doc["error"]["code"], "0x80070057", "{r:?}");
    assert_eq!(
        doc["error"]["sources"][0]["namespace"], "Error Provider",
        "{r:?}"
    );
    assert_eq!(doc["error"]["sources"][0]["procedure"], "SetError", "{r:?}");
}

/// `TranslateError` in a catch block: the caught error, copied in whole from
/// `context/errorContext`, is raised as the code and message of the table's matching item.
#[test]
fn a_catch_block_translates_the_caught_error() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.data().join("files/tenants/taken")).expect("mkdir");
    let none = sb.path("none");
    std::fs::create_dir_all(&none).expect("mkdir");
    let req = sb.write(
        "req.yaml",
        r#"procedure:
  steps:
    guarded:
      try:
        clash: { call: Filesystem Provider/CreateFolder, with: { path: tenants/taken } }
      catch:
        translate:
          call: Error Provider/TranslateError
          executeData:
            errorMessageContext: adduser
            Items:
              Item:
                - { name: "adduser|0x80070005", message: "Not allowed.", errorCode: "0x82100005" }
                - { name: "adduser|0x800700b7", message: "That tenant exists already.", errorCode: "0x82101391" }
          before:
            - { source: context, sourcePath: errorContext, destination: executeData }
"#,
    );
    let r = sb.run_with(
        &[
            "run",
            req.to_str().unwrap(),
            "--output",
            "json",
            "--quiet",
            "--ephemeral",
        ],
        &none,
    );
    assert_eq!(r.code, 1, "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON response");
    assert_eq!(doc["status"], "rolled_back", "{r:?}");
    assert_eq!(doc["error"]["code"], "0x82101391", "{r:?}");
    assert_eq!(
        doc["error"]["description"], "That tenant exists already.",
        "{r:?}"
    );
    assert_eq!(
        doc["error"]["sources"][0]["procedure"], "TranslateError",
        "{r:?}"
    );
}
