//! Pauses the tests arm by environment variable (feature `failpoints`), to put a stall
//! exactly where a race needs one; without the feature they do nothing and read nothing.

/// Pauses the first caller of `name` in this process for the milliseconds in
/// `PROVISIO_FAIL_PAUSE_<NAME>_MS` (`name` upper-cased), once; later callers go on at once.
#[cfg(feature = "failpoints")]
pub async fn pause_once(name: &str) {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static FIRED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let var = format!("PROVISIO_FAIL_PAUSE_{}_MS", name.to_ascii_uppercase());
    let Some(ms) = std::env::var(&var).ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    let first = FIRED
        .lock()
        .map(|mut fired| fired.insert(name.to_string()))
        .unwrap_or(false);
    if first {
        tracing::warn!(failpoint = %var, ms, "pausing here once (a test's failpoint)");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// Without the `failpoints` feature: returns at once (no variable is read).
#[cfg(not(feature = "failpoints"))]
pub async fn pause_once(_name: &str) {}
