//! MPS XSL templates and XML namespaces in requests (issue 13, item 6 and the XSL
//! construct): `xsl:template` children of a before/after transform the source node
//! (XSLT 1.0 through libxslt, sandboxed), `allowNullTransform`, prefixes in paths resolved
//! through the request's `xmlns` declarations, and `xmlns=""` where MPS writes it.

use provisio_engine::model::{Format, Request};
use provisio_engine::request::parse_request;
use provisio_engine::{RunError, TxnResult, TxnState};

mod support;
use support as h;

const XSL: &str = "http://www.w3.org/1999/XSL/Transform";

fn env() -> h::Env {
    h::env_ns(Vec::new(), h::options())
}

fn xml(src: &str) -> Request {
    parse_request(src, "r.xml", Format::Xml).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_error(src: &str) -> String {
    match parse_request(src, "r.xml", Format::Xml) {
        Ok(r) => panic!("expected a parse error, got {r:?}"),
        Err(e) => e.to_string(),
    }
}

async fn run(env: &h::Env, src: &str) -> TxnResult {
    match env.engine.run(&xml(src)).await {
        Ok(r) => r,
        Err(e) => panic!("request did not compile: {e}"),
    }
}

async fn compile_error(env: &h::Env, src: &str) -> String {
    match env.engine.run(&xml(src)).await {
        Ok(r) => panic!(
            "expected a compile error, got {:?} {:?}",
            r.state, r.failure
        ),
        Err(RunError::Compile(e)) => e.to_string(),
        Err(e) => panic!("expected compile errors, got: {e}"),
    }
}

fn rendered(r: &TxnResult) -> String {
    provisio_engine::response::render(r, Format::Xml)
}

/// A trusted request: `data`, then one Echo call whose before holds `templates`.
fn echo_request(data: &str, before_attrs: &str, templates: &str) -> String {
    format!(
        r#"<request xmlns:xsl="{XSL}">
  <data>{data}</data>
  <procedure>
    <execute namespace="Rec Provider" procedure="Echo">
      <before source="data" sourcePath="user" destination="executeData"{before_attrs}>
        {templates}
      </before>
      <after source="executeData" destination="data" mode="merge"/>
    </execute>
  </procedure>
</request>"#
    )
}

// ---------------------------------------------------------------- XSL templates

#[tokio::test]
async fn an_xsl_template_renames_and_restructures_the_source_node() {
    let env = env();
    let req = echo_request(
        r#"<user id="7"><first>Ann</first><last>Lee</last><tmp>x</tmp></user>"#,
        "",
        r#"<xsl:template match="/user">
          <person login="u{@id}">
            <name><xsl:value-of select="concat(first, ' ', last)"/></name>
            <xsl:for-each select="first|last"><part><xsl:value-of select="."/></part></xsl:for-each>
          </person>
        </xsl:template>"#,
    );
    let r = run(&env, &req).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        h::data(&r),
        serde_json::json!({
            "user": {"@id": "7", "first": "Ann", "last": "Lee", "tmp": "x"},
            "person": {"@login": "u7", "name": "Ann Lee", "part": ["Ann", "Lee"]}
        })
    );
}

#[tokio::test]
async fn an_empty_result_fails_the_step_unless_allow_null_transform() {
    let env = env();
    let nothing = r#"<xsl:template match="/"><xsl:if test="user/@skip != 'yes'"><kept/></xsl:if></xsl:template>"#;
    let data = r#"<user skip="yes"/><kept>old</kept>"#;

    let r = run(&env, &echo_request(data, "", nothing)).await;
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
    let msg = h::failure(&r).message.clone();
    assert!(msg.contains("produced no element"), "{msg}");
    assert!(msg.contains("r.xml:6"), "{msg}");

    // allowNullTransform="1": the target is left as it was, the step runs.
    let r = run(
        &env,
        &echo_request(data, r#" allowNullTransform="1""#, nothing),
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        h::data(&r),
        serde_json::json!({"user": {"@skip": "yes"}, "kept": "old"})
    );

    // A result with an element is placed as usual with allowNullTransform too.
    let r = run(
        &env,
        &echo_request(
            r#"<user skip="no"/>"#,
            r#" allowNullTransform="1""#,
            nothing,
        ),
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        h::data(&r),
        serde_json::json!({"user": {"@skip": "no"}, "kept": null})
    );
}

#[tokio::test]
async fn a_stylesheet_error_is_a_compile_error_with_its_file_and_line() {
    let env = env();
    // xsl:value-of without select is refused by libxslt when the request compiles.
    let req = echo_request(
        "<user/>",
        "",
        r#"<xsl:template match="/">
          <x><xsl:value-of/></x>
        </xsl:template>"#,
    );
    let e = compile_error(&env, &req).await;
    assert!(e.contains("r.xml:7"), "{e}");
    assert!(e.contains("select is missing"), "{e}");

    // What libxslt lacks (XSLT 2.0) is refused when the request is read, with its place.
    let e = parse_error(&echo_request(
        "<user/>",
        "",
        "<xsl:template match=\"/\">\n<xsl:for-each-group select=\"a\" group-by=\"b\"/></xsl:template>",
    ));
    assert!(e.contains("r.xml:7"), "{e}");
    assert!(e.contains("not an XSLT 1.0 instruction"), "{e}");
}

#[tokio::test]
async fn document_and_includes_are_refused() {
    let e = parse_error(&echo_request(
        "<user/>",
        "",
        r#"<xsl:template match="/"><x><xsl:copy-of select="document('/etc/passwd')"/></x></xsl:template>"#,
    ));
    assert!(e.contains("document() in select"), "{e}");
    assert!(e.contains("r.xml:6"), "{e}");

    for child in [
        r#"<xsl:include href="/etc/other.xsl"/>"#,
        r#"<xsl:import href="http://example.invalid/x.xsl"/>"#,
    ] {
        let e = parse_error(&echo_request("<user/>", "", child));
        assert!(e.contains("are refused"), "{e}");
    }

    // A template outside the XSLT namespace is not taken for one.
    let e = parse_error(&echo_request("<user/>", "", r#"<template match="/"/>"#));
    assert!(e.contains("unexpected <template>"), "{e}");
}

#[tokio::test]
async fn a_runtime_xslt_error_fails_the_step_with_the_templates_position() {
    let env = env();
    let req = echo_request(
        "<user/>",
        "",
        r#"<xsl:template match="/"><x><xsl:value-of select="$undeclared"/></x></xsl:template>"#,
    );
    let r = run(&env, &req).await;
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
    let msg = h::failure(&r).message.clone();
    assert!(msg.contains("r.xml:6"), "{msg}");
    assert!(msg.contains("undeclared"), "{msg}");
}

// ---------------------------------------------------------------- XML namespaces

#[tokio::test]
async fn a_namespace_less_element_under_a_namespaced_target_gets_xmlns_empty() {
    let env = env();
    let req = r#"<request xmlns:p="urn:tenant">
  <data><t xmlns="urn:tenant"><old/></t><plain>x</plain></data>
  <procedure>
    <transform>
      <before source="data" sourcePath="plain" destination="data" destinationPath="p:t"/>
    </transform>
  </procedure>
</request>"#;
    let r = run(&env, req).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let out = rendered(&r);
    assert!(
        out.contains(r#"<t xmlns="urn:tenant">"#) && out.contains(r#"<plain xmlns="">x</plain>"#),
        "{out}"
    );
    // The namespaced <old/> keeps its namespace (it needs no declaration of its own).
    assert!(out.contains("<old/>"), "{out}");
}

#[tokio::test]
async fn a_prefixed_path_selects_by_namespace_not_by_the_data_prefix() {
    let env = env();
    // The request binds p; the data writes the same namespace with another prefix.
    let req = r#"<request xmlns:p="urn:users">
  <data xmlns:u="urn:users"><u:user>ann</u:user><user>not this one</user></data>
  <procedure>
    <execute namespace="Rec Provider" procedure="Echo">
      <before source="data" sourcePath="p:user" destination="executeData" destinationPath="picked"/>
      <after source="executeData" sourcePath="picked" destination="data"/>
    </execute>
  </procedure>
</request>"#;
    let r = run(&env, req).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        h::data(&r)["picked"],
        serde_json::json!({"u:user": "ann"}),
        "{}",
        rendered(&r)
    );
}

#[test]
fn an_unbound_prefix_in_a_path_is_refused_with_its_line() {
    let e = parse_error(
        r#"<request xmlns:p="urn:users">
  <data/>
  <procedure>
    <transform>
      <before source="data" sourcePath="q:user" destination="data" destinationPath="p:x"/>
    </transform>
  </procedure>
</request>"#,
    );
    assert!(e.contains("r.xml:5"), "{e}");
    assert!(e.contains("prefix `q` is not bound"), "{e}");
}

#[test]
fn an_undeclared_prefix_in_data_is_refused_with_its_line() {
    let e = parse_error(
        "<request namespace=\"A\" procedure=\"B\">\n<data>\n<p:user/></data></request>",
    );
    assert!(e.contains("r.xml:3"), "{e}");
    assert!(e.contains("prefix `p`"), "{e}");
}

#[tokio::test]
async fn a_value_an_xsl_template_computes_from_a_secret_is_masked_too() {
    let env = env();
    let req = format!(
        r#"<request xmlns:xsl="{XSL}">
  <data><user><password do-not-log="1">s3cret-pw</password></user></data>
  <procedure>
    <execute namespace="Rec Provider" procedure="Echo">
      <before source="data" sourcePath="user" destination="executeData">
        <xsl:template match="/user"><shout><xsl:value-of select="translate(password, 'cepstrw', 'CEPSTRW')"/></shout></xsl:template>
      </before>
      <after source="executeData" sourcePath="shout" destination="data"/>
    </execute>
  </procedure>
</request>"#
    );
    let r = run(&env, &req).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let out = rendered(&r);
    assert!(!out.contains("S3CRET-PW"), "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");
    assert!(out.contains("<shout>"), "{out}");
}

#[test]
fn allow_null_transform_without_templates_is_warned_about() {
    let env = env();
    let req = r#"<request>
  <data><a>1</a></data>
  <procedure>
    <execute namespace="Rec Provider" procedure="Echo">
      <before source="data" sourcePath="a" destination="executeData" allowNullTransform="1"/>
    </execute>
  </procedure>
</request>"#;
    let program = env.engine.program(&xml(req)).expect("compiles");
    let warnings: Vec<String> = program.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("r.xml:5:"), "{warnings:?}");
    assert!(warnings[0].contains("allowNullTransform"), "{warnings:?}");
}

#[tokio::test]
async fn templates_and_prefixes_in_a_namespace_file_serve_a_yaml_request() {
    // The namespace file binds xsl and p on its root; a YAML request (no namespaces of its
    // own) calls the procedure.
    let ns = r#"<namespace name="Orders" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:p="urn:orders">
  <procedure name="Take" access="public">
    <procedureData><p:order><p:item>pen</p:item><p:item>ink</p:item></p:order></procedureData>
    <execute namespace="Rec Provider" procedure="Echo">
      <before source="procedureData" sourcePath="p:order" destination="executeData">
        <xsl:template match="/p:order"><count><xsl:value-of select="count(p:item)"/></count></xsl:template>
      </before>
      <after source="executeData" sourcePath="count" destination="data"/>
    </execute>
  </procedure>
</namespace>"#;
    let env = h::env_ns(h::parse(ns, "orders.xml", Format::Xml), h::options());
    let req = parse_request("call: Orders/Take\ndata: {}\n", "r.yaml", Format::Yaml).unwrap();
    let r = env.engine.run(&req).await.expect("compiles");
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(h::data(&r), serde_json::json!({"count": "2"}));
}

#[tokio::test]
async fn a_destination_path_with_prefixes_creates_namespaced_elements() {
    let env = env();
    let req = r#"<request xmlns:p="urn:p">
  <data><v>1</v></data>
  <procedure>
    <transform>
      <before source="data" sourcePath="v" destination="data" destinationPath="p:made/p:inner"/>
    </transform>
    <transform>
      <before source="data" sourcePath="p:made/p:inner/v" destination="data" destinationPath="found"/>
    </transform>
  </procedure>
</request>"#;
    let r = run(&env, req).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let out = rendered(&r);
    assert!(
        out.contains(r#"<made xmlns="urn:p">"#) && out.contains("<inner>"),
        "{out}"
    );
    // The created elements are found again by the same prefixed path.
    assert!(out.contains("<found>"), "{out}");
}
