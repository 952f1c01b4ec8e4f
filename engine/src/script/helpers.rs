//! Generic helper functions registered for scripts: `lower`, `upper`, `slug`, `join`,
//! `exists` and `lookup`. See `docs/scripting.md`.

use rhai::{Array, Dynamic, Engine, ImmutableString, Map, INT};

/// Folds common accented Latin letters to ASCII (lowercase input).
fn fold(c: char) -> &'static str {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ğ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => "i",
        'ł' | 'ľ' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'ř' => "r",
        'ś' | 'š' | 'ş' => "s",
        'ť' | 'ţ' => "t",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        'ß' => "ss",
        'æ' => "ae",
        'œ' => "oe",
        'þ' => "th",
        _ => "",
    }
}

/// `slug(s)`: lowercase ASCII letters, digits and single hyphens; accented Latin letters
/// fold to ASCII, every other run of characters becomes one hyphen, no hyphen at either end.
pub(crate) fn slug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut hyphen = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        let piece: &str = if c.is_ascii_alphanumeric() {
            out.push_str(if hyphen && !out.is_empty() { "-" } else { "" });
            hyphen = false;
            out.push(c);
            continue;
        } else {
            fold(c)
        };
        if piece.is_empty() {
            hyphen = true;
        } else {
            if hyphen && !out.is_empty() {
                out.push('-');
            }
            hyphen = false;
            out.push_str(piece);
        }
    }
    out
}

/// Text of a value for `join`: strings as they are, `()` empty, others via `to_string`.
fn text(d: &Dynamic) -> String {
    if d.is_unit() {
        return String::new();
    }
    match d.read_lock::<ImmutableString>() {
        Some(s) => s.to_string(),
        None => d.to_string(),
    }
}

/// Follows `segs` (map keys, array indices; negative indices count from the end) from
/// `cur` and hands what is there to `f`, without copying anything on the way.
fn walk<R>(cur: &Dynamic, segs: &[&str], f: &mut dyn FnMut(Option<&Dynamic>) -> R) -> R {
    let Some((seg, rest)) = segs.split_first() else {
        return f(Some(cur));
    };
    if let Some(m) = cur.read_lock::<Map>() {
        return match m.get(*seg) {
            Some(v) => walk(v, rest, f),
            None => f(None),
        };
    }
    if let Some(a) = cur.read_lock::<Array>() {
        let index = seg.parse::<INT>().ok().and_then(|i| {
            let len = INT::try_from(a.len()).ok()?;
            usize::try_from(if i < 0 { len + i } else { i }).ok()
        });
        return match index.and_then(|i| a.get(i)) {
            Some(v) => walk(v, rest, f),
            None => f(None),
        };
    }
    f(None)
}

/// Splits a path `"a/b/0/c"` into segments; empty segments are skipped.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// The value at `path` under a map or array `root` (`None` when missing).
fn at<R>(root: &Dynamic, path: &str, f: &mut dyn FnMut(Option<&Dynamic>) -> R) -> R {
    walk(root, &segments(path), f)
}

fn exists_in(root: &Dynamic, path: &str) -> bool {
    at(root, path, &mut |v| v.is_some_and(|v| !v.is_unit()))
}

fn lookup_in(root: &Dynamic, path: &str) -> Dynamic {
    at(root, path, &mut |v| v.cloned().unwrap_or(Dynamic::UNIT))
}

/// Runs `f` on a borrowed map or array as a `Dynamic` without copying it.
fn as_dynamic<T: Clone + Default + 'static + Send + Sync, R>(
    value: &mut T,
    wrap: fn(T) -> Dynamic,
    unwrap: fn(Dynamic) -> Option<T>,
    f: impl FnOnce(&Dynamic) -> R,
) -> R {
    let d = wrap(std::mem::take(value));
    let r = f(&d);
    if let Some(v) = unwrap(d) {
        *value = v;
    }
    r
}

fn map_dyn<R>(m: &mut Map, f: impl FnOnce(&Dynamic) -> R) -> R {
    as_dynamic(m, Dynamic::from_map, |d| d.try_cast::<Map>(), f)
}

fn array_dyn<R>(a: &mut Array, f: impl FnOnce(&Dynamic) -> R) -> R {
    as_dynamic(a, Dynamic::from_array, |d| d.try_cast::<Array>(), f)
}

/// Whether `s` can stand for exactly one folder in a path: not empty, no `/`, `\\` or NUL,
/// not `.` or `..`, at most 255 characters. Namespaces that put a tenant's or a user's
/// name into a path check it with this, or `contoso/users` would land inside another
/// tenant's folder and `.` would name all of them.
fn is_folder_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\', '\0'])
        && s.chars().count() <= 255
}

/// Registers the helpers.
pub(crate) fn register(engine: &mut Engine) {
    engine.register_fn("lower", |s: &str| s.to_lowercase());
    engine.register_fn("upper", |s: &str| s.to_uppercase());
    engine.register_fn("slug", |s: &str| slug(s));
    engine.register_fn("is_folder_name", |s: &str| is_folder_name(s));
    // A missing value (`()`) is not a folder name.
    engine.register_fn("is_folder_name", |_: ()| false);
    engine.register_fn("join", |a: &mut Array, sep: &str| {
        a.iter().map(text).collect::<Vec<_>>().join(sep)
    });
    // `exists`/`lookup` take the map by reference, so `data.exists("a/b")` does not copy
    // `data`; they do not modify it, so they may be called on constants.
    let pure = |name: &str| rhai::FuncRegistration::new(name).with_purity(true);
    pure("exists").register_into_engine(engine, |m: &mut Map, path: &str| {
        map_dyn(m, |d| exists_in(d, path))
    });
    pure("exists").register_into_engine(engine, |a: &mut Array, path: &str| {
        array_dyn(a, |d| exists_in(d, path))
    });
    pure("lookup").register_into_engine(engine, |m: &mut Map, path: &str| {
        map_dyn(m, |d| lookup_in(d, path))
    });
    pure("lookup").register_into_engine(engine, |a: &mut Array, path: &str| {
        array_dyn(a, |d| lookup_in(d, path))
    });
    pure("lookup").register_into_engine(engine, |m: &mut Map, path: &str, default: Dynamic| {
        let v = map_dyn(m, |d| lookup_in(d, path));
        if v.is_unit() {
            default
        } else {
            v
        }
    });
    pure("lookup").register_into_engine(engine, |a: &mut Array, path: &str, default: Dynamic| {
        let v = array_dyn(a, |d| lookup_in(d, path));
        if v.is_unit() {
            default
        } else {
            v
        }
    });
    // On anything else (e.g. `()` from a missing property): nothing exists there.
    engine.register_fn("exists", |_: (), _: &str| false);
    engine.register_fn("lookup", |_: (), _: &str| Dynamic::UNIT);
    engine.register_fn("lookup", |_: (), _: &str, default: Dynamic| default);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names() {
        for ok in ["contoso", "ann lee", ".hidden", "a..b", &"é".repeat(255)] {
            assert!(is_folder_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "contoso/users",
            "/",
            "a\\b",
            "a\0b",
            &"é".repeat(256),
        ] {
            assert!(!is_folder_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Jürgen Müller"), "jurgen-muller");
        assert_eq!(slug("  Hello,  World!! "), "hello-world");
        assert_eq!(slug("ÆSIR_ß 42"), "aesir-ss-42");
        assert_eq!(slug("---"), "");
        assert_eq!(slug("a--b"), "a-b");
    }
}
