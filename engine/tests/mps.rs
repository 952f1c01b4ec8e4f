//! The MPS request language without silent differences (issue 13): the canonical simple
//! request only when it is exact, selects named per procedure, the execute and procedure
//! attributes MPS defines (`sensitive`, `impersonate`, `trusted`, `auditEnabled`,
//! `perfEnabled`, `type`), and the engine-managed parts of `context`.

use provisio_engine::model::{Format, Request};
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::{
    Journal, JournalError, RunError, SledStore, Space, StepDone, StepIntent, Store, TxnResult,
    TxnState,
};
use std::sync::{Arc, Mutex};

mod support;
use support as h;

const NS: &str = r#"<namespaces>
<namespace name="M">
  <procedure name="Make" access="public" perfEnabled="1">
    <execute namespace="Rec Provider" procedure="Create">
      <before source="data" sourcePath="name" destination="executeData"/>
      <after source="executeData" sourcePath="id" destination="data"/>
    </execute>
  </procedure>
  <procedure name="Quiet" access="public" auditEnabled="0">
    <execute namespace="Rec Provider" procedure="Noop"/>
  </procedure>
  <procedure name="Sealed" access="public">
    <execute id="outer" namespace="M" procedure="Make" sensitive="1">
      <before source="data" destination="executeData" mode="merge"/>
    </execute>
    <execute id="open" namespace="M" procedure="Unsealed" sensitive="1">
      <before source="data" sourcePath="other" destination="executeData"/>
    </execute>
  </procedure>
  <procedure name="Unsealed">
    <execute namespace="Rec Provider" procedure="Create" sensitive="2">
      <before source="data" sourcePath="other" destination="executeData" destinationPath="name"/>
    </execute>
  </procedure>
  <procedure name="Pick" access="public">
    <select name="tier" source="data" sourcePath="plan">
      <where value="gold" case="g"/>
    </select>
    <try>
      <execute namespace="Rec Provider" procedure="Create">
        <when select="tier" case="g"/>
        <before source="data" sourcePath="name" destination="executeData"/>
      </execute>
    </try>
    <catch>
      <execute namespace="Rec Provider" procedure="Noop"/>
    </catch>
  </procedure>
  <procedure name="Caught" access="public">
    <try>
      <execute namespace="Rec Provider" procedure="Fail"/>
    </try>
    <catch>
      <transform>
        <before source="context" sourcePath="errorContext" destination="data" destinationPath="seen"/>
      </transform>
    </catch>
    <transform>
      <before source="context" sourcePath="errorContext" destination="data" destinationPath="late" ifNull="ignore"/>
    </transform>
  </procedure>
  <procedure name="Impersonating" access="public">
    <execute namespace="Rec Provider" procedure="Noop" impersonate="1" trusted="1"/>
  </procedure>
</namespace>
</namespaces>"#;

fn env() -> h::Env {
    h::env_ns(h::parse(NS, "m.xml", Format::Xml), h::options())
}

fn xml(src: &str) -> Request {
    parse_request(src, "r.xml", Format::Xml).unwrap_or_else(|e| panic!("{e}"))
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

fn simple(procedure: &str, data: &str) -> String {
    format!(r#"<request namespace="M" procedure="{procedure}"><data>{data}</data></request>"#)
}

// ---------------------------------------------------------------- 1. the lone execute

#[tokio::test]
async fn a_lone_execute_with_only_before_returns_data_unchanged() {
    let env = env();
    let body = |transforms: &str| {
        format!(
            r#"<request><data><name>a</name></data><procedure>
                 <execute namespace="M" procedure="Make">{transforms}</execute>
               </procedure></request>"#
        )
    };
    let before = r#"<before source="data" destination="executeData" mode="merge"/>"#;
    let after = r#"<after source="executeData" destination="data" mode="merge"/>"#;

    // Only the before mirror: the call happens, its output does not come back (MPS).
    let r = run(&env, &body(before)).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(h::data(&r), serde_json::json!({"name": "a"}));
    assert_eq!(env.resources(), ["a"]);

    // Both mirrors: the callee's output is merged back.
    let r = run(
        &env,
        &body(&format!("{before}{after}")).replace(">a<", ">b<"),
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(h::data(&r), serde_json::json!({"name": "b", "id": "id-b"}));

    // No transforms: the callee gets empty executeData, so Create misses its input.
    let r = run(&env, &body("")).await;
    assert_eq!(r.state, TxnState::RolledBack, "{r:?}");
}

// ---------------------------------------------------------------- 2. forEach items are the nodes

#[tokio::test]
async fn a_before_into_a_for_each_name_writes_into_data() {
    let env = env();
    let r = run(
        &env,
        r#"<request><data><users><user><name>a</name></user><user><name>b</name></user></users></data>
           <procedure>
             <transform id="mark">
               <forEach name="u" root="data" path="users/user"/>
               <before template="seen-{{ u/name }}" destination="u" destinationPath="tag" mode="merge"/>
             </transform>
           </procedure></request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        h::data(&r),
        serde_json::json!({"users": {"user": [
            {"name": "a", "tag": "seen-a"},
            {"name": "b", "tag": "seen-b"}
        ]}})
    );
}

#[tokio::test]
async fn a_move_out_of_a_for_each_name_detaches_the_item() {
    let env = env();
    let r = run(
        &env,
        r#"<request><data><users><user><name>a</name></user><user><name>b</name><old/></user><user><name>c</name><old/></user></users></data>
           <procedure>
             <transform id="archive">
               <forEach name="u" root="data" path="users/user"/>
               <when source="u" sourcePath="old"/>
               <before source="u" destination="data" destinationPath="archived" mode="move"/>
             </transform>
           </procedure></request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    // b and c left users (c found again after b went), in order, under archived.
    assert_eq!(
        h::data(&r),
        serde_json::json!({
            "users": {"user": {"name": "a"}},
            "archived": {"user": [{"name": "b", "old": null}, {"name": "c", "old": null}]}
        })
    );
}

#[tokio::test]
async fn nested_items_moved_out_leave_their_lists_whole() {
    let env = env();
    let r = run(
        &env,
        r#"<request><data><orgs>
             <org><n>x</n><user><n>1</n><old/></user><user><n>2</n></user><user><n>3</n><old/></user></org>
             <org><n>y</n><user><n>4</n><old/></user></org>
           </orgs></data>
           <procedure>
             <transform id="archive">
               <forEach name="o" root="data" path="orgs/org"/>
               <forEach name="u" root="o" path="user"/>
               <when source="u" sourcePath="old"/>
               <before source="u" sourcePath="n" destination="data" destinationPath="archived"/>
               <before source="u" destination="data" destinationPath="trash" mode="move"/>
             </transform>
           </procedure></request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let data = h::data(&r);
    assert_eq!(
        data["orgs"],
        serde_json::json!({"org": [{"n": "x", "user": {"n": "2"}}, {"n": "y"}]})
    );
    assert_eq!(data["archived"], serde_json::json!({"n": ["1", "3", "4"]}));
}

#[tokio::test]
async fn nested_for_each_items_write_into_their_own_nodes() {
    let env = env();
    let r = run(
        &env,
        r#"<request><data><orgs>
             <org><n>x</n><user><n>1</n></user><user><n>2</n></user></org>
             <org><n>y</n><user><n>3</n></user></org>
           </orgs></data>
           <procedure>
             <transform id="stamp">
               <forEach name="o" root="data" path="orgs/org"/>
               <forEach name="u" root="o" path="user"/>
               <before template="{{ o/n }}-{{ u/n }}" destination="u" destinationPath="upn" mode="merge"/>
               <before source="u" sourcePath="n" destination="o" destinationPath="seen"/>
             </transform>
           </procedure></request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        h::data(&r),
        serde_json::json!({"orgs": {"org": [
            {"n": "x", "user": [{"n": "1", "upn": "x-1"}, {"n": "2", "upn": "x-2"}], "seen": {"n": ["1", "2"]}},
            {"n": "y", "user": {"n": "3", "upn": "y-3"}, "seen": {"n": "3"}}
        ]}})
    );
}

#[tokio::test]
async fn a_step_reading_what_a_for_each_writes_waits_for_it() {
    let env = env();
    // `report` reads data/users, which `mark` writes through its forEach item: the plan
    // must order them by a data edge (in a parallel procedure they would otherwise look
    // independent and run side by side).
    let src = r#"<request><data><users><user><name>a</name></user><user><name>b</name></user></users></data>
           <procedure parallel="1">
             <execute id="mark" namespace="Rec Provider" procedure="Create">
               <forEach name="u" root="data" path="users/user"/>
               <before source="u" sourcePath="name" destination="executeData"/>
               <before template="t-{{ u/name }}" destination="u" destinationPath="tag" mode="merge"/>
             </execute>
             <execute id="report" namespace="Rec Provider" procedure="Create">
               <before source="data" sourcePath="users/user[2]/tag" destination="executeData" destinationPath="name" mode="merge"/>
             </execute>
           </procedure></request>"#;
    let program = provisio_engine::compile_request(
        env.engine.catalog(),
        &xml(src),
        &provisio_engine::Limits::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dot =
        provisio_engine::plan::render(&program, provisio_engine::plan::GraphFormat::Dot, false);
    let edge = dot
        .lines()
        .find(|l| l.contains("->") && l.contains("label=\"data\""));
    assert!(edge.is_some(), "no data edge from mark to report:\n{dot}");
    let r = run(&env, src).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.resources(), ["a", "b", "t-b"]);
}

#[tokio::test]
async fn an_item_whose_list_was_moved_away_is_an_error_not_a_lost_write() {
    let env = env();
    let r = run(
        &env,
        r#"<request><data><users><user><name>a</name></user></users></data>
           <procedure>
             <transform id="mark">
               <forEach name="u" root="data" path="users/user"/>
               <before source="data" sourcePath="users" destination="data" destinationPath="gone" mode="move"/>
               <before template="t" destination="u" destinationPath="tag" mode="merge"/>
             </transform>
           </procedure></request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::RolledBack);
    let message = &h::failure(&r).message;
    assert!(
        message.contains("forEach `u`") && message.contains("no longer where it was"),
        "{message}"
    );
}

#[tokio::test]
async fn a_computed_value_in_replace_mode_keeps_the_target_name() {
    let env = env();
    let r = run(
        &env,
        r##"<request><data><x a="1">old<k>v</k></x><y>old</y><z/></data>
           <procedure>
             <transform id="t">
               <before template="new-{{ data/y }}" destination="data" destinationPath="x" mode="replace"/>
               <before expr="#{ n: 2 }" destination="data" destinationPath="y" mode="replace"/>
               <before source="data" sourcePath="y" destination="data" destinationPath="z" mode="replace"/>
             </transform>
           </procedure></request>"##,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    // The template's text and the expression's map became the content of `x` and `y`; a
    // node from data (`y`) took the place of `z`, name and all, as MPS replaces.
    assert_eq!(
        h::data(&r),
        serde_json::json!({"x": "new-old", "y": [{"n": 2}, {"n": 2}]})
    );
}

// ---------------------------------------------------------------- 3. selects per procedure

#[tokio::test]
async fn a_procedure_level_select_is_seen_inside_a_try() {
    let env = env();
    let r = run(&env, &simple("Pick", "<plan>gold</plan><name>g1</name>")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(env.resources(), ["g1"]);
    let r = run(&env, &simple("Pick", "<plan>basic</plan><name>b1</name>")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(
        env.resources(),
        ["g1"],
        "the when is false for another case"
    );
}

#[tokio::test]
async fn a_when_before_its_select_is_named_not_called_a_cycle() {
    let env = env();
    let e = compile_error(
        &env,
        r#"<request><data><plan>gold</plan></data><procedure>
             <execute id="early" namespace="Rec Provider" procedure="Noop"><when select="tier" case="g"/></execute>
             <select name="tier" source="data" sourcePath="plan"><where value="gold" case="g"/></select>
           </procedure></request>"#,
    )
    .await;
    assert!(
        e.contains("uses select `tier` before it is evaluated"),
        "{e}"
    );
    assert!(!e.contains("cycle"), "{e}");

    let e = compile_error(
        &env,
        r#"<request><procedure>
             <execute namespace="Rec Provider" procedure="Noop"><when select="nope" case="g"/></execute>
           </procedure></request>"#,
    )
    .await;
    assert!(e.contains("`nope`, which is not a select of"), "{e}");
}

// ---------------------------------------------------------------- 4. attributes

/// What the executor asks the journal to seal.
#[derive(Clone, Default)]
struct Seals(Arc<Mutex<Vec<String>>>);

impl Seals {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl Journal for Seals {
    async fn txn_state(
        &self,
        _: &provisio_engine::TxnId,
        _: TxnState,
        _: Option<&str>,
    ) -> Result<(), JournalError> {
        Ok(())
    }
    async fn step_intent(&self, i: &StepIntent<'_>) -> Result<(), JournalError> {
        let line = format!("intent {} sealed={}", i.context.step_id, i.secret);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        Ok(())
    }
    async fn step_done(&self, d: &StepDone<'_>) -> Result<(), JournalError> {
        let line = format!("done {} sealed={}", d.context.step_id, d.secret);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        Ok(())
    }
}

#[tokio::test]
async fn sensitive_seals_rollback_data_from_there_down_and_2_stops_it() {
    let seals = Seals::default();
    let env = env().with_journal(seals.clone());
    let r = run(&env, &simple("Sealed", "<name>s1</name><other>s2</other>")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let lines = seals.lines();
    // `outer` (sensitive="1") calls Make, whose Create inherits the seal.
    assert!(
        lines.contains(&"intent outer/step1 sealed=true".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"done outer/step1 sealed=true".to_string()),
        "{lines:?}"
    );
    // `open` is sensitive="1" too, but Unsealed's call says sensitive="2".
    assert!(
        lines.contains(&"intent open/step1 sealed=false".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"done open/step1 sealed=false".to_string()),
        "{lines:?}"
    );

    // Without the attribute nothing is sealed (no secrets here).
    let seals = Seals::default();
    let env = self::env().with_journal(seals.clone());
    let r = run(&env, &simple("Make", "<name>p1</name>")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert!(
        seals.lines().iter().all(|l| l.ends_with("sealed=false")),
        "{:?}",
        seals.lines()
    );
}

#[tokio::test]
async fn audit_enabled_0_keeps_the_transaction_out_of_the_audit_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SledStore::open(dir.path()).expect("store opens"));
    let journal = provisio_engine::DurableJournal::new(store.clone(), None, "tester");
    let env = env().with_journal(journal);
    let audited = || store.scan(Space::Audit, b"").expect("scan").len();

    let r = run(&env, &simple("Make", "<name>a1</name>")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(audited(), 1);
    let r = run(&env, &simple("Quiet", "")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert_eq!(audited(), 1, "auditEnabled=\"0\": no audit entry");
    // Its journal records and summary are kept as for any transaction.
    assert!(store
        .get(Space::Txns, r.txn_id.as_bytes())
        .expect("get")
        .is_some());
}

#[tokio::test]
async fn perf_enabled_logs_the_procedure_timing() {
    let (logs, _guard) = h::Logs::capture();
    let env = env();
    let r = run(&env, &simple("Make", "<name>t1</name>")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let r = run(&env, &simple("Quiet", "")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let timings: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("provisio::perf"))
        .collect();
    assert_eq!(timings.len(), 1, "{timings:?}");
    assert!(timings[0].contains("procedure=M/Make"), "{timings:?}");
    assert!(timings[0].contains("elapsed_ms="), "{timings:?}");
}

#[tokio::test]
async fn a_read_procedure_that_reaches_a_write_does_not_compile() {
    let env = env();
    let e = compile_error(
        &env,
        r#"<request><procedure type="read">
             <execute id="w" namespace="M" procedure="Make"/>
           </procedure></request>"#,
    )
    .await;
    assert!(
        e.contains("is a read procedure, but its step calls `M/Make`, which is a write procedure"),
        "{e}"
    );
    let r = run(
        &env,
        r#"<request><data><name>r1</name></data><procedure type="read">
             <execute namespace="Rec Provider" procedure="Get">
               <before source="data" sourcePath="name" destination="executeData"/>
             </execute>
           </procedure></request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
}

#[tokio::test]
async fn impersonate_and_trusted_are_warned_about_not_dropped() {
    let (logs, _guard) = h::Logs::capture();
    let env = env();
    let program = env
        .engine
        .program(&xml(&simple("Impersonating", "")))
        .expect("compiles");
    let warnings: Vec<String> = program.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("impersonate=\"1\""), "{warnings:?}");
    assert!(
        warnings[0].starts_with("m.xml:"),
        "names the file: {warnings:?}"
    );
    assert!(warnings[1].contains("trusted=\"1\""), "{warnings:?}");
    let r = run(&env, &simple("Impersonating", "")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    assert!(logs.text().contains("has no effect yet"), "{}", logs.text());
    // A procedure without them has none.
    let program = env
        .engine
        .program(&xml(&simple("Make", "<name>x</name>")))
        .expect("compiles");
    assert!(program.warnings().is_empty());
}

#[test]
fn attribute_values_outside_mps_are_refused_with_the_choices() {
    for (attr, value) in [("sensitive", "3"), ("impersonate", "yes"), ("trusted", "2")] {
        let src = format!(
            r#"<namespace name="X"><procedure name="P"><execute namespace="A" procedure="B" {attr}="{value}"/></procedure></namespace>"#
        );
        let e = parse_namespaces(&src, "x.xml", Format::Xml).expect_err(&src);
        let text = format!("{e:?}");
        assert!(text.contains(attr), "{text}");
    }
}

// ---------------------------------------------------------------- 5. context

#[tokio::test]
async fn the_engine_writes_the_transaction_id_and_returns_client_context() {
    let env = env();
    let r = run(
        &env,
        r#"<request>
             <context>
               <transactionContext transactionId="client-42"/>
               <clientContext clientTransactionId="c-7" localeID="1033"/>
             </context>
             <procedure>
               <transform>
                 <before source="context" sourcePath="transactionContext" destination="data"/>
               </transform>
             </procedure>
           </request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let data = r.data.as_ref().expect("data");
    let tc = data.child("transactionContext").expect("copied");
    assert_eq!(tc.attr("transactionId"), Some(r.txn_id.as_str()));
    let cc = r.client_context.as_ref().expect("clientContext returned");
    assert_eq!(cc.attr("clientTransactionId"), Some("c-7"));
    let xml = provisio_engine::response::render(&r, Format::Xml);
    assert!(
        xml.contains(r#"<clientContext clientTransactionId="c-7""#),
        "{xml}"
    );
    let json = provisio_engine::response::to_value(&r);
    assert_eq!(
        json["context"]["clientContext"]["@clientTransactionId"], "c-7",
        "{json}"
    );
}

#[tokio::test]
async fn error_context_is_gone_once_its_catch_has_handled_the_error() {
    let env = env();
    let r = run(&env, &simple("Caught", "")).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    let data = r.data.as_ref().expect("data");
    let seen = data.child("seen").expect("the catch saw the errorContext");
    assert!(
        seen.child("errorContext").is_some() || seen.attr("code").is_some(),
        "{seen:?}"
    );
    assert!(
        data.child("late").is_none(),
        "errorContext outlived its catch: {data:?}"
    );
}

#[tokio::test]
async fn security_context_credentials_never_come_back_in_clear() {
    let env = env();
    let r = run(
        &env,
        r#"<request>
             <context><securityContext><authentication>
               <basic username="admin" domain="corp" password="Pw-9f8e7d"/>
             </authentication></securityContext></context>
             <procedure>
               <transform>
                 <before source="context" sourcePath="securityContext" destination="data"/>
               </transform>
             </procedure>
           </request>"#,
    )
    .await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    for format in [Format::Xml, Format::Json, Format::Yaml] {
        let shown = provisio_engine::response::render(&r, format);
        assert!(!shown.contains("Pw-9f8e7d"), "{shown}");
        assert!(shown.contains("admin"), "{shown}");
    }
}

#[test]
fn two_phase_on_a_procedure_with_steps_is_warned_about() {
    let ns = parse_namespaces(
        r#"<namespace name="X"><procedure name="P" type="two-phase"><execute namespace="A" procedure="B"/></procedure><procedure name="L" type="two-phase"/></namespace>"#,
        "x.xml",
        Format::Xml,
    )
    .expect("parses");
    let warnings: Vec<String> = ns[0]
        .procedures
        .iter()
        .flat_map(|p| p.warnings())
        .map(|w| w.to_string())
        .collect();
    assert_eq!(warnings.len(), 1, "only the one with steps: {warnings:?}");
    assert!(
        warnings[0].contains("procedure `P`: type=\"two-phase\""),
        "{warnings:?}"
    );
}
