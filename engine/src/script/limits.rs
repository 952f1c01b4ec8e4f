//! Resource limits applied to every script evaluation.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Resource limits of a [`ScriptEngine`](super::ScriptEngine); each applies per evaluation.
///
/// Deserializes from config with every field optional (missing fields keep their default):
///
/// ```
/// use provisio_engine::ScriptLimits;
/// let l: ScriptLimits = serde_json::from_value(serde_json::json!({
///     "max_operations": 5000, "wall_time": "250ms"
/// })).unwrap();
/// assert_eq!(l.max_operations, 5000);
/// assert_eq!(l.wall_time, std::time::Duration::from_millis(250));
/// assert_eq!(l.max_call_levels, 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptLimits {
    /// Most rhai operations (expression nodes, statements, calls) one evaluation may run.
    pub max_operations: u64,
    /// Deepest nesting of function calls (recursion).
    pub max_call_levels: usize,
    /// Deepest nesting of an expression at compile time (also used inside functions).
    pub max_expr_depth: usize,
    /// Longest string, in bytes, a script may build.
    pub max_string_size: usize,
    /// Most items in one array.
    pub max_array_size: usize,
    /// Most entries in one object map.
    pub max_map_size: usize,
    /// Longest time one evaluation may run, not counting time spent inside host
    /// functions (`call_procedure`, `submit`, `read_csv`). In config: seconds as a number,
    /// or a string with a unit: `"2s"`, `"500ms"`.
    #[serde(deserialize_with = "de_duration")]
    pub wall_time: Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 100_000,
            wall_time: Duration::from_secs(2),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(f64),
    Text(String),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let bad = |what: &str| {
        serde::de::Error::custom(format!(
            "invalid duration {what}: expected seconds or a string like \"2s\" or \"500ms\""
        ))
    };
    let secs = match RawDuration::deserialize(d)? {
        RawDuration::Seconds(s) => s,
        RawDuration::Text(t) => {
            let t = t.trim();
            let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = t.strip_suffix('s') {
                (n, 1.0)
            } else {
                (t, 1.0)
            };
            num.trim()
                .parse::<f64>()
                .map_err(|_| bad(&format!("{t:?}")))?
                * scale
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad(&secs.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        for (v, ms) in [
            (serde_json::json!(1.5), 1500),
            (serde_json::json!("3s"), 3000),
            (serde_json::json!("20ms"), 20),
            (serde_json::json!("4"), 4000),
        ] {
            let l: ScriptLimits =
                serde_json::from_value(serde_json::json!({ "wall_time": v })).unwrap();
            assert_eq!(l.wall_time, Duration::from_millis(ms));
        }
        assert!(
            serde_json::from_value::<ScriptLimits>(serde_json::json!({"wall_time": -1})).is_err()
        );
        assert!(
            serde_json::from_value::<ScriptLimits>(serde_json::json!({"wall_time": "x"})).is_err()
        );
        assert!(serde_json::from_value::<ScriptLimits>(serde_json::json!({"bogus": 1})).is_err());
    }
}
