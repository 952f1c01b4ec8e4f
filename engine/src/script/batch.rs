//! `submit_all([...])` for driver scripts: several calls as one request, so they commit or
//! roll back together.
//!
//! The calls become the steps of one trusted request (one transaction), run one after the
//! other in the order given. Each call's data travels in the request's `data` under the
//! step's id (`call1`, `call2`, …) and is merged into the step's `executeData` by a
//! `before` transform, never written into the procedure itself: a value such as
//! `"{{ x }}"` stays data, it is not read as a placeholder. Each call's resulting data is
//! copied back to `data/<step id>` so the script gets one result per call.

use serde_json::{json, Map, Value};

/// The id of the step (and of its `data` entry) of the `index`-th call (0-based).
pub(crate) fn step_id(index: usize) -> String {
    format!("call{}", index + 1)
}

/// Builds the trusted request for `calls` (each `{"call": "Namespace/Procedure", "data":
/// {…}}`, `data` optional), or says which item is not a call.
pub(crate) fn batch_request(calls: &[Value]) -> Result<Value, String> {
    if calls.is_empty() {
        return Err("submit_all(calls): the list is empty; give at least one call".into());
    }
    let mut steps = Map::new();
    let mut data = Map::new();
    let mut names = Vec::new();
    for (i, item) in calls.iter().enumerate() {
        let bad = |what: &str| {
            format!(
                "submit_all(calls): item {} {what}; each item is #{{\"call\": \"Namespace/Procedure\", data: #{{…}}}}",
                i + 1
            )
        };
        let Some(map) = item.as_object() else {
            return Err(bad("is not a map"));
        };
        let Some(target) = map.get("call").and_then(Value::as_str) else {
            return Err(bad("has no \"call\" text"));
        };
        if let Some(key) = map.keys().find(|k| *k != "call" && *k != "data") {
            return Err(bad(&format!("has the unknown key {key:?}")));
        }
        let call_data = match map.get("data") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(bad("has `data` that is not a map")),
        };
        let id = step_id(i);
        steps.insert(
            id.clone(),
            json!({
                "call": target,
                "before": [{
                    "source": "data", "sourcePath": id, "destination": "executeData",
                    "mode": "merge", "ifNull": "ignore",
                }],
                "after": [{
                    "source": "executeData", "destination": "data", "destinationPath": id,
                    "mode": "merge", "ifNull": "ignore",
                }],
            }),
        );
        data.insert(id, call_data);
        names.push(target.to_string());
    }
    Ok(json!({
        "procedure": {
            "type": "write",
            "parallel": false,
            "description": format!("batch of {} call(s) from a driver script: {}", calls.len(), names.join(", ")),
            "steps": steps,
        },
        "data": data,
    }))
}

/// Adds `results` to a batch's outcome: each call's resulting data, in call order (from
/// `data/<step id>` of the response; `()` for a call that produced none).
pub(crate) fn with_results(mut outcome: Value, calls: usize) -> Value {
    let results: Vec<Value> = (0..calls)
        .map(|i| {
            outcome
                .get("data")
                .and_then(|d| d.get(step_id(i)))
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    if let Some(map) = outcome.as_object_mut() {
        map.insert("results".into(), Value::Array(results));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_become_ordered_steps_with_their_data_kept_as_data() {
        let calls = vec![
            json!({"call": "A/One", "data": {"x": "{{ not.a.placeholder }}"}}),
            json!({"call": "B/Two"}),
        ];
        let r = batch_request(&calls).expect("batch");
        assert_eq!(r["procedure"]["parallel"], false);
        let steps = r["procedure"]["steps"].as_object().expect("steps");
        assert_eq!(steps.keys().collect::<Vec<_>>(), ["call1", "call2"]);
        assert_eq!(steps["call2"]["call"], "B/Two");
        assert_eq!(r["data"]["call1"]["x"], "{{ not.a.placeholder }}");
        assert_eq!(r["data"]["call2"], json!({}));
        for (bad, says) in [
            (json!([]), "empty"),
            (json!([1]), "item 1 is not a map"),
            (json!([{"data": {}}]), "item 1 has no \"call\""),
            (json!([{"call": "A/B", "dat": {}}]), "unknown key \"dat\""),
            (
                json!([{"call": "A/B"}, {"call": "A/B", "data": 3}]),
                "item 2 has `data`",
            ),
        ] {
            let e = batch_request(bad.as_array().expect("list")).expect_err("refused");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn results_are_listed_in_call_order() {
        let out = json!({"status": "committed", "data": {"call2": {"b": 2}, "call1": {"a": 1}}});
        let r = with_results(out, 3);
        assert_eq!(r["results"], json!([{"a": 1}, {"b": 2}, null]));
    }
}
