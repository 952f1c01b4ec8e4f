//! The directory behaviour suite's harness: a [`Fixture`] gives a provider over one
//! backend (embedded, slapd, Samba AD DC, …); [`Suite`] runs requests through a real engine
//! (transactions, provider state, rollback) against it, each test inside an OU of its own.
//!
//! Adding a backend to the suite is one line in `directory_behaviour.rs`:
//! `behaviour_suite!(slapd, SlapdFixture);`.
#![allow(dead_code)]

use async_trait::async_trait;
use provisio_engine::data::json::to_json;
use provisio_engine::data::Element;
use provisio_engine::model::Format;
use provisio_engine::provider::{Provider, ProviderRegistry};
use provisio_engine::request::parse_request;
use provisio_engine::{Catalog, Engine, EngineOptions, RetryOptions, TxnResult, TxnState};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The namespace of the directory procedures.
pub const NS: &str = "Active Directory Provider";

/// One backend under test.
#[async_trait]
pub trait Fixture: Send + Sync + Sized + 'static {
    /// A fresh directory for the test `name`; `None` when this backend cannot run here
    /// (its server is not installed): the test prints why and passes, unless the fixture
    /// is required (its own environment variable).
    async fn start(name: &str) -> Option<Self>;

    /// The provider under test.
    fn provider(&self) -> Arc<dyn Provider>;

    /// The base DN the provider is configured for.
    fn base_dn(&self) -> String;

    /// The values of `attr` of `dn` read without the provider (ldapsearch, samba-tool),
    /// `Some(None)` when the object does not exist; `None` when the backend has no
    /// independent view (embedded).
    async fn raw_values(&self, _dn: &str, _attr: &str) -> Option<Option<Vec<String>>> {
        None
    }

    /// Whether the backend is Active Directory (Samba AD DC), where some details differ
    /// (e.g. a new user's userAccountControl).
    fn is_ad(&self) -> bool {
        false
    }
}

/// A fixture with an engine over its provider, and an OU of the test's own.
pub struct Suite<F: Fixture> {
    /// The backend.
    pub fixture: F,
    /// The engine (in memory: no journal).
    pub engine: Engine,
    /// `OU=t-<test>,<base>`: everything a test makes is below it.
    pub root: String,
}

/// What one request gave.
#[derive(Debug)]
pub struct Ran {
    /// The transaction's result.
    pub result: TxnResult,
}

impl Ran {
    /// The final data as JSON (panics unless committed).
    pub fn data(&self) -> Value {
        assert_eq!(
            self.result.state,
            TxnState::Committed,
            "{:?}",
            self.result.failure
        );
        to_json(self.result.data.as_ref().expect("data"))
    }

    /// One step's executeData as JSON.
    pub fn step(&self, id: &str) -> Value {
        self.data()[id]["executeData"].clone()
    }

    /// The failure's code and message (panics when committed).
    pub fn failure(&self) -> (u32, String) {
        let f = self
            .result
            .failure
            .as_ref()
            .unwrap_or_else(|| panic!("expected a failure, got {:?}", self.result.state));
        (f.code, f.message.clone())
    }

    /// Whether it rolled back cleanly.
    pub fn rolled_back(&self) -> bool {
        self.result.state == TxnState::RolledBack && self.result.undo_failures.is_empty()
    }
}

/// One step of a request: id, procedure, inputs (JSON object).
pub struct Step {
    /// Step id.
    pub id: String,
    /// Procedure name.
    pub procedure: String,
    /// The inputs.
    pub with: Value,
}

/// A step.
pub fn step(id: &str, procedure: &str, with: Value) -> Step {
    Step {
        id: id.into(),
        procedure: procedure.into(),
        with,
    }
}

/// Property list input: `[(name, mode, values)]`.
pub fn props(list: &[(&str, &str, &[&str])]) -> Value {
    let items: Vec<Value> = list
        .iter()
        .map(|(n, m, v)| json!({"@name": n, "@mode": m, "value": v}))
        .collect();
    json!({ "property": items })
}

impl<F: Fixture> Suite<F> {
    /// Starts the fixture, builds the engine and the test's OU.
    pub async fn start(name: &str) -> Option<Suite<F>> {
        let fixture = F::start(name).await?;
        let mut registry = ProviderRegistry::new();
        registry.register(fixture.provider());
        let catalog = Catalog::new(Vec::new(), &registry).expect("catalog");
        let options = EngineOptions {
            retry: RetryOptions::default()
                .with_intervals(Duration::from_millis(1), Duration::from_millis(5)),
            step_timeout: Duration::from_secs(60),
            ..EngineOptions::default()
        };
        let engine = Engine::new(catalog, registry, options);
        let root = format!("OU=t-{name},{}", fixture.base_dn());
        let s = Suite {
            fixture,
            engine,
            root,
        };
        let r = s
            .run(vec![step(
                "root",
                "Create Object",
                json!({"container": s.fixture.base_dn(), "class": "organizationalUnit", "name": format!("OU=t-{name}")}),
            )])
            .await;
        assert_eq!(
            r.result.state,
            TxnState::Committed,
            "{:?}",
            r.result.failure
        );
        Some(s)
    }

    /// A DN below the test's OU: `under("CN=x,OU=a")` → `CN=x,OU=a,OU=t-…,<base>`.
    pub fn under(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.root.clone()
        } else {
            format!("{rel},{}", self.root)
        }
    }

    /// Runs steps in order as one transaction; each step's executeData ends up in
    /// `data/<step id>/executeData`.
    pub async fn run(&self, steps: Vec<Step>) -> Ran {
        let mut map = serde_json::Map::new();
        for s in steps {
            map.insert(
                s.id.clone(),
                json!({
                    "call": format!("{NS}/{}", s.procedure),
                    "with": s.with,
                    "after": [{"source": "executeData", "destination": "data", "destinationPath": s.id, "mode": "insert"}],
                }),
            );
        }
        let req = json!({
            "procedure": {"type": "write", "parallel": false, "steps": Value::Object(map)},
            "data": {"x": "1"},
        });
        let text = serde_json::to_string(&req).expect("json");
        let request = parse_request(&text, "req.json", Format::Json).expect("request parses");
        let result = self.engine.run(&request).await.expect("request compiles");
        Ran { result }
    }

    /// Plans steps (`provisio plan`): each step's preview, in order.
    pub async fn plan(&self, steps: Vec<Step>) -> Vec<provisio_engine::provider::Preview> {
        let mut map = serde_json::Map::new();
        let ids: Vec<String> = steps.iter().map(|s| s.id.clone()).collect();
        for s in steps {
            map.insert(
                s.id.clone(),
                json!({"call": format!("{NS}/{}", s.procedure), "with": s.with}),
            );
        }
        let req = json!({
            "procedure": {"type": "write", "parallel": false, "steps": Value::Object(map)},
            "data": {"x": "1"},
        });
        let request =
            parse_request(&req.to_string(), "plan.json", Format::Json).expect("request parses");
        let entries = self.engine.plan(&request).await.expect("request compiles");
        ids.iter()
            .map(|id| {
                entries
                    .iter()
                    .find(|e| e.step == *id || e.step.ends_with(&format!("/{id}")))
                    .unwrap_or_else(|| panic!("no plan entry for {id}: {entries:?}"))
                    .preview
                    .clone()
            })
            .collect()
    }

    /// Runs one step; `Ok(executeData)` or `Err((code, message))`.
    pub async fn call(&self, procedure: &str, with: Value) -> Result<Value, (u32, String)> {
        let r = self.run(vec![step("s", procedure, with)]).await;
        if r.result.state == TxnState::Committed {
            Ok(r.step("s"))
        } else {
            Err(r.failure())
        }
    }

    /// Runs one step that must succeed.
    pub async fn ok(&self, procedure: &str, with: Value) -> Value {
        match self.call(procedure, with.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("{procedure} {with} failed: {e:?}"),
        }
    }

    /// Creates an object below the test OU; returns its output.
    pub async fn create(
        &self,
        container_rel: &str,
        class: &str,
        name: &str,
        properties: Value,
    ) -> Value {
        self.ok(
            "Create Object",
            json!({"container": self.under(container_rel), "class": class, "name": name, "properties": properties}),
        )
        .await
    }

    /// The values of `attr` through Get Properties; `None` when the object does not exist.
    pub async fn values(&self, dn: &str, attr: &str) -> Option<Vec<String>> {
        match self
            .call("Get Properties", json!({"path": format!("LDAP://{dn}")}))
            .await
        {
            Ok(v) => Some(property_values(&v, attr)),
            Err((0x8007_2030, _)) => None,
            Err(e) => panic!("Get Properties {dn}: {e:?}"),
        }
    }

    /// Whether the object exists (through the provider, and independently when the
    /// backend allows it — both must agree).
    pub async fn exists(&self, dn: &str) -> bool {
        let via = self.values(dn, "objectClass").await.is_some();
        if let Some(raw) = self.fixture.raw_values(dn, "objectClass").await {
            assert_eq!(
                raw.is_some(),
                via,
                "{dn}: the provider and the server disagree"
            );
        }
        via
    }

    /// A search: DNs found, and the cookie.
    pub async fn search(
        &self,
        base: &str,
        scope: &str,
        filter: &str,
        page: Option<u32>,
        cookie: &str,
    ) -> (Vec<String>, String) {
        let mut with = json!({"base": base, "scope": scope, "filter": filter, "attributes": "cn", "cookie": cookie});
        if let Some(p) = page {
            with["pageSize"] = json!(p);
        }
        let v = self.ok("Search", with).await;
        let entries = as_list(&v["entries"]["entry"]);
        let dns = entries
            .iter()
            .map(|e| e["dn"].as_str().unwrap_or_default().to_string())
            .collect();
        (
            dns,
            v["cookie"].as_str().map(str::to_string).unwrap_or_default(),
        )
    }
}

/// A JSON value that may be one item or a list, as a list.
pub fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// The values of one property in a Get Properties output (case-insensitive name).
pub fn property_values(out: &Value, attr: &str) -> Vec<String> {
    for p in as_list(&out["properties"]["property"]) {
        if p["@name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(attr))
        {
            return as_list(&p["value"])
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
        }
    }
    Vec::new()
}

/// An element's text, for messages.
pub fn text_of(e: &Element) -> String {
    e.string_value()
}
