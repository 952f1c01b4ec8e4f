//! Helpers shared by the embedded providers: reading inputs from executeData, describing
//! inputs, and naming undo/trash entries safely.

use provisio_engine::data::{Element, Scalar};
use provisio_engine::model::InputSpec;
use provisio_engine::provider::ProviderError;

/// The text of the first present input among `names` (first name is the canonical one,
/// the rest are aliases such as MPS property names). Surrounding whitespace is kept.
pub(crate) fn opt_input(data: &Element, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| data.child(n))
        .map(Element::string_value)
}

/// Like [`opt_input`], but an absent or empty value is an error naming the input.
pub(crate) fn req_input(data: &Element, names: &[&str]) -> Result<String, ProviderError> {
    match opt_input(data, names) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ProviderError::invalid(format!(
            "input `{}` is empty",
            names.first().copied().unwrap_or("?")
        ))),
        None => Err(ProviderError::invalid(format!(
            "input `{}` is required",
            names.first().copied().unwrap_or("?")
        ))),
    }
}

/// An optional input that is absent when missing or empty (after trimming).
pub(crate) fn opt_nonempty(data: &Element, names: &[&str]) -> Option<String> {
    opt_input(data, names).filter(|v| !v.trim().is_empty())
}

/// Parses a boolean flag: `true`/`1`/`yes` and `false`/`0`/`no` (case-insensitive).
pub(crate) fn parse_bool(field: &str, value: Option<String>) -> Result<bool, ProviderError> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(ProviderError::invalid(format!(
                "input `{field}` must be true/false/1/0, got {v:?}"
            ))),
        },
    }
}

/// Describes one input of a procedure.
pub(crate) fn input(name: &str, ty: &str, required: bool, description: &str) -> InputSpec {
    InputSpec {
        name: name.to_string(),
        ty: Some(ty.to_string()),
        required,
        secret: false,
        default: None,
        description: Some(description.to_string()),
        check: None,
    }
}

/// Describes one optional input with a default value.
pub(crate) fn input_default(name: &str, ty: &str, default: &str, description: &str) -> InputSpec {
    InputSpec {
        default: Some(Scalar::Str(default.into())),
        ..input(name, ty, false, description)
    }
}

/// A text child element.
pub(crate) fn text(name: &str, value: impl Into<provisio_engine::data::Name>) -> Element {
    Element::with_text(name, value)
}

/// Turns an idempotency key into one safe file-name component (≤ 120 bytes): characters
/// outside `[A-Za-z0-9._-]` become `_`; long keys are cut and suffixed with a stable hash
/// of the whole key so distinct keys stay distinct.
pub(crate) fn sanitize_key(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Never `.` / `..` / hidden.
    if out.starts_with('.') {
        out.insert(0, '_');
    }
    if out.is_empty() {
        out.push('_');
    }
    if out.len() > 120 || out != key {
        // Keep names unique even when two keys sanitize to the same text.
        let hash = fnv1a(key.as_bytes());
        out.truncate(100);
        out = format!("{out}-{hash:016x}");
    }
    out
}

/// FNV-1a 64: a small, stable (across Rust versions) hash for file names.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_is_safe_and_distinct() {
        let a = sanitize_key("t1/step/a/1");
        let b = sanitize_key("t1/step_a/1");
        assert_ne!(a, b);
        assert!(!a.contains('/'));
        assert!(sanitize_key(&"x".repeat(1000)).len() <= 120);
        assert!(!sanitize_key("..").starts_with('.'));
        assert_eq!(sanitize_key("abc-1"), "abc-1");
    }
}

/// Fences between a call and the settlement of the same idempotency key. A call the engine
/// stopped waiting for (step timeout) may still be running (in the blocking pool, or in a
/// task of its own); `recover` for its key waits for it to end instead of reading a
/// half-done change as "not applied". Keys are spread over a fixed set of locks.
#[derive(Debug, Clone)]
pub(crate) struct KeyFences(std::sync::Arc<Vec<std::sync::Arc<tokio::sync::Mutex<()>>>>);

impl KeyFences {
    /// How many locks keys are spread over.
    const LOCKS: usize = 64;

    pub(crate) fn new() -> KeyFences {
        KeyFences(std::sync::Arc::new(
            (0..Self::LOCKS)
                .map(|_| std::sync::Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        ))
    }

    /// Waits for the fence of `key`; it is held until the guard is dropped.
    pub(crate) async fn hold(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let lock = &self.0[(h.finish() as usize) % Self::LOCKS];
        std::sync::Arc::clone(lock).lock_owned().await
    }
}

/// Locks by name (a zone, a folder) for blocking threads: calls on different names run
/// at the same time, calls on the same name take turns, and [`NameLocks::all`] waits for
/// every holder and keeps new ones out (sweeps, purges, recovery). Replaces a
/// provider-wide mutex held around `fsync`s, which made every call of the provider wait
/// for every other (issue 17's benchmark).
#[derive(Debug, Default)]
pub(crate) struct NameLocks {
    state: std::sync::Mutex<NameLockState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct NameLockState {
    held: std::collections::HashSet<String>,
    /// `all` holds every name.
    exclusive: bool,
    /// `all` callers waiting: new name holders wait behind them (no starvation).
    exclusive_waiting: usize,
}

/// Held name (or every name); released on drop.
#[derive(Debug)]
pub(crate) struct NameGuard<'a> {
    locks: &'a NameLocks,
    /// `None`: the exclusive guard.
    name: Option<String>,
}

impl NameLocks {
    pub(crate) fn new() -> NameLocks {
        NameLocks::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NameLockState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(
        &self,
        g: std::sync::MutexGuard<'a, NameLockState>,
    ) -> std::sync::MutexGuard<'a, NameLockState> {
        self.changed
            .wait(g)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until no one holds `name` (nor every name), then holds it.
    pub(crate) fn one(&self, name: &str) -> NameGuard<'_> {
        let mut g = self.state();
        while g.exclusive || g.exclusive_waiting > 0 || g.held.contains(name) {
            g = self.wait(g);
        }
        g.held.insert(name.to_string());
        NameGuard {
            locks: self,
            name: Some(name.to_string()),
        }
    }

    /// Waits until no one holds any name, then holds them all.
    pub(crate) fn all(&self) -> NameGuard<'_> {
        let mut g = self.state();
        g.exclusive_waiting += 1;
        while g.exclusive || !g.held.is_empty() {
            g = self.wait(g);
        }
        g.exclusive_waiting -= 1;
        g.exclusive = true;
        NameGuard {
            locks: self,
            name: None,
        }
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.locks.state();
        match self.name.take() {
            Some(name) => {
                g.held.remove(&name);
            }
            None => g.exclusive = false,
        }
        drop(g);
        self.locks.changed.notify_all();
    }
}

#[cfg(test)]
mod name_lock_tests {
    use super::NameLocks;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    #[test]
    fn different_names_overlap_same_name_and_all_take_turns() {
        let locks = Arc::new(NameLocks::new());
        // Two different names are held at once (a provider-wide lock would deadlock here:
        // each thread waits at the barrier while holding its name).
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = ["a.test", "b.test"]
            .into_iter()
            .map(|n| {
                let (locks, barrier) = (Arc::clone(&locks), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let _g = locks.one(n);
                    barrier.wait();
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        // The same name: never two holders at once; `all` excludes every holder.
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (locks, inside, max) =
                    (Arc::clone(&locks), Arc::clone(&inside), Arc::clone(&max));
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _g = if i == 7 {
                            locks.all()
                        } else {
                            locks.one("same.test")
                        };
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);
    }
}
