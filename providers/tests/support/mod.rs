//! Helpers for the provider integration tests: building calls and undo records.
#![allow(dead_code)]

use provisio_engine::data::Element;
use provisio_engine::provider::{Call, CallContext, Done, Outcome, Provider, ProviderError};
use std::sync::atomic::{AtomicU32, Ordering};

static STEP: AtomicU32 = AtomicU32::new(0);

/// A call of `procedure` with text inputs.
pub fn call(namespace: &str, procedure: &str, inputs: &[(&str, &str)]) -> Call {
    let mut data = Element::new("executeData");
    for (k, v) in inputs {
        data.push(Element::with_text(*k, *v));
    }
    Call {
        intent: provisio_engine::provider::IntentBarrier::passed(),
        state: provisio_engine::ProviderState::detached(),
        context: CallContext {
            txn_id: "0190c0de-0000-7000-8000-000000000001"
                .parse()
                .expect("a transaction id"),
            step_id: format!("step{}", STEP.fetch_add(1, Ordering::Relaxed)),
            attempt: 1,
            namespace: namespace.into(),
            procedure: procedure.into(),
        },
        provider_context: Element::new("providerContext"),
        execute_data: data,
    }
}

/// Runs a call.
pub async fn run(
    p: &dyn Provider,
    procedure: &str,
    inputs: &[(&str, &str)],
) -> Result<(Call, Outcome), ProviderError> {
    let c = call(&p.namespace(), procedure, inputs);
    let out = p.execute(c.clone()).await?;
    Ok((c, out))
}

/// Undoes a finished call.
pub async fn undo(p: &dyn Provider, c: &Call, out: &Outcome) -> Result<(), ProviderError> {
    let done = Done {
        state: provisio_engine::ProviderState::detached(),
        context: c.context.clone(),
        provider_context: c.provider_context.clone(),
        undo: out.undo.clone().expect("an undo record"),
        execute_data: None,
    };
    p.undo(done).await
}

/// The text of an output.
pub fn output(out: &Outcome, name: &str) -> Option<String> {
    out.execute_data.child(name).map(Element::string_value)
}

/// The message of an error (panics on Ok, for tests).
pub fn err_message<T: std::fmt::Debug>(r: Result<T, ProviderError>) -> (u32, String) {
    let e = r.expect_err("expected an error");
    (e.code(), e.message())
}

/// A call with a `records` list input: each item one record's data fields, repeated
/// `records` elements as a YAML/JSON list arrives.
pub fn rrset_call(
    namespace: &str,
    procedure: &str,
    inputs: &[(&str, &str)],
    records: &[&[(&str, &str)]],
) -> Call {
    let mut c = call(namespace, procedure, inputs);
    for item in records {
        let mut e = Element::new("records");
        e.list_item = true;
        for (k, v) in *item {
            e.push(Element::with_text(*k, *v));
        }
        c.execute_data.push(e);
    }
    c
}

/// Runs a ReplaceRecordSet-style call with a `records` list.
pub async fn run_rrset(
    p: &dyn Provider,
    procedure: &str,
    inputs: &[(&str, &str)],
    records: &[&[(&str, &str)]],
) -> Result<(Call, Outcome), ProviderError> {
    let c = rrset_call(&p.namespace(), procedure, inputs, records);
    let out = p.execute(c.clone()).await?;
    Ok((c, out))
}

/// The record lines of an output list (`previous`, `current`).
pub fn output_lines(out: &Outcome, name: &str) -> Vec<String> {
    out.execute_data
        .child(name)
        .map(|e| e.elements().map(Element::string_value).collect())
        .unwrap_or_default()
}
