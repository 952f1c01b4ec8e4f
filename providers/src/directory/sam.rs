//! `sAMAccountName`s: derived from the user principal name the way HMC did, and reserved
//! race-free so that concurrent transactions never hand out the same name. Shared by every
//! backend.
//!
//! Derivation ([`derive_base`]): the characters AD forbids in a logon name
//! (`"/\[]:;|=,+*?<>`), whitespace and control characters are dropped, `@` becomes `_`,
//! trailing dots are dropped, and the result is cut to 20 characters
//! (`john.smith@contoso.com` → `john.smith_contoso.c`). On a collision digits are
//! appended, shortening the base so the whole stays within 20 characters
//! (`john.smith_contoso1`, `…2`, …, `john.smith_contos100`).
//!
//! Reservation ([`reserve`]): a name is free when the provider-state key
//! `sam/<lowercased name>` holds no other object's DN and (for a backend whose directory
//! is shared with other writers) the directory has no account with it. Reading the key
//! locks it until the transaction ends, so a concurrent transaction asking for the same
//! name waits and then sees it taken; the winner writes its DN there. The embedded
//! backend keeps the same key as its uniqueness index.

use super::backend::{DirError, DirectoryBackend, OpContext};
use super::dn::Dn;

/// Longest `sAMAccountName` (the pre-Windows 2000 logon name limit).
pub const MAX_LEN: usize = 20;

/// Characters AD refuses in a `sAMAccountName`.
pub const ILLEGAL: &str = "\"/\\[]:;|=,+*?<>";

/// How many numbered candidates are tried before giving up.
pub const MAX_TRIES: u32 = 10_000;

/// The name derived from a UPN (or any text), before collisions are looked at. An input
/// that leaves nothing is an error naming it.
pub fn derive_base(upn: &str) -> Result<String, DirError> {
    let mut out: String = upn
        .chars()
        .filter(|c| !ILLEGAL.contains(*c) && !c.is_whitespace() && !c.is_control())
        .map(|c| if c == '@' { '_' } else { c })
        .take(MAX_LEN)
        .collect();
    while out.ends_with('.') {
        out.pop();
    }
    if out.is_empty() {
        return Err(DirError::Invalid(format!(
            "no sAMAccountName can be derived from {upn:?}: nothing is left once the \
             characters {ILLEGAL} and spaces are dropped"
        )));
    }
    Ok(out)
}

/// Candidate `n`: the base itself for 0, else the base cut so that the base and the
/// number fit in 20 characters.
pub fn candidate(base: &str, n: u32) -> String {
    if n == 0 {
        return base.chars().take(MAX_LEN).collect();
    }
    let digits = n.to_string();
    let keep = MAX_LEN.saturating_sub(digits.len());
    let mut head: String = base.chars().take(keep).collect();
    while head.ends_with('.') {
        head.pop();
    }
    head.push_str(&digits);
    head
}

/// The provider-state key reserving `sam`.
pub fn reservation_key(sam: &str) -> Vec<u8> {
    format!("sam/{}", sam.to_lowercase()).into_bytes()
}

/// Checks a `sAMAccountName` given explicitly: 1 to 20 characters, none of [`ILLEGAL`],
/// no control characters, not ending in a dot.
pub fn check_explicit(dn: &Dn, sam: &str) -> Result<(), DirError> {
    let bad = sam.chars().find(|c| ILLEGAL.contains(*c) || c.is_control());
    if sam.is_empty() || sam.chars().count() > MAX_LEN || bad.is_some() || sam.ends_with('.') {
        return Err(DirError::ConstraintViolation {
            dn: dn.to_string(),
            message: format!(
                "sAMAccountName {sam:?} is not valid: 1 to {MAX_LEN} characters, none of \
                 {ILLEGAL}, not ending in a dot"
            ),
        });
    }
    Ok(())
}

/// Whether `candidate` may be given to `owner`: `Ok(None)` when free (the key is now
/// reserved for `owner`), `Ok(Some(holder))` when another object holds it.
async fn try_take(
    backend: &dyn DirectoryBackend,
    ctx: &OpContext,
    candidate: &str,
    owner: &Dn,
) -> Result<Option<String>, DirError> {
    let key = reservation_key(candidate);
    let held = ctx
        .state
        .get(&key)
        .await
        .map_err(|e| DirError::state(owner, e))?;
    if let Some(bytes) = held {
        let holder = String::from_utf8_lossy(&bytes).to_string();
        match Dn::parse(&holder) {
            Ok(h) if h == *owner => return Ok(None),
            Ok(h) => {
                if backend.state_backed() {
                    return Ok(Some(holder));
                }
                // A shared directory: the reservation counts while its holder still has
                // the name (an object renamed or deleted outside Provisio frees it).
                let still = backend
                    .read(
                        ctx,
                        &h,
                        &super::backend::AttrSelection::Only(vec!["sAMAccountName".into()]),
                    )
                    .await?
                    .is_some_and(|e| {
                        e.first("sAMAccountName")
                            .is_some_and(|s| s.eq_ignore_ascii_case(candidate))
                    });
                if still {
                    return Ok(Some(holder));
                }
            }
            Err(_) => {}
        }
    }
    if !backend.state_backed() {
        if let Some(d) = backend.find_account(ctx, candidate).await? {
            if d != *owner {
                return Ok(Some(d.to_string()));
            }
        }
    }
    ctx.state
        .put(&key, owner.to_string().into_bytes())
        .await
        .map_err(|e| DirError::state(owner, e))?;
    Ok(None)
}

/// Reserves a `sAMAccountName` for `owner`. With `exact`, only `wanted` itself (a taken
/// name is a [`DirError::ConstraintViolation`] naming its holder); otherwise `wanted` is
/// the derived base and digits are appended until a free name is found. Returns the name.
pub async fn reserve(
    backend: &dyn DirectoryBackend,
    ctx: &OpContext,
    wanted: &str,
    owner: &Dn,
    exact: bool,
) -> Result<String, DirError> {
    if exact {
        check_explicit(owner, wanted)?;
        return match try_take(backend, ctx, wanted, owner).await? {
            None => Ok(wanted.to_string()),
            Some(holder) => Err(DirError::ConstraintViolation {
                dn: owner.to_string(),
                message: format!("sAMAccountName {wanted} is already used by {holder}"),
            }),
        };
    }
    let mut last = String::new();
    for n in 0..MAX_TRIES {
        let c = candidate(wanted, n);
        if c == last {
            continue;
        }
        if try_take(backend, ctx, &c, owner).await?.is_none() {
            return Ok(c);
        }
        last = c;
    }
    Err(DirError::ConstraintViolation {
        dn: owner.to_string(),
        message: format!("no free sAMAccountName from {wanted} after {MAX_TRIES} tries"),
    })
}

/// Gives up the reservation of `sam` if `owner` holds it (a deleted or renamed account).
pub async fn release(ctx: &OpContext, sam: &str, owner: &Dn) -> Result<(), DirError> {
    let key = reservation_key(sam);
    let held = ctx
        .state
        .get(&key)
        .await
        .map_err(|e| DirError::state(owner, e))?;
    if let Some(bytes) = held {
        if Dn::parse(&String::from_utf8_lossy(&bytes)).is_ok_and(|h| h == *owner) {
            ctx.state
                .delete(&key)
                .await
                .map_err(|e| DirError::state(owner, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_like_hmc() {
        assert_eq!(derive_base("john@contoso.com").unwrap(), "john_contoso.com");
        assert_eq!(
            derive_base("john.smith@contoso.com").unwrap(),
            "john.smith_contoso.c"
        );
        assert_eq!(
            derive_base("a\"b/c\\d[e]f:g;h|i=j,k+l*m?n<o>p q@x").unwrap(),
            "abcdefghijklmnopq_x"
        );
        assert_eq!(derive_base("Jürgen@x.de").unwrap(), "Jürgen_x.de");
        assert_eq!(
            derive_base("abcdefghijklmnopqrs.@x").unwrap(),
            "abcdefghijklmnopqrs"
        );
        assert!(derive_base("*** ").is_err());
        assert_eq!(derive_base("x".repeat(40).as_str()).unwrap().len(), 20);
    }

    #[test]
    fn candidates_stay_within_twenty() {
        let base = "john.smith_contoso.c";
        assert_eq!(candidate(base, 0), base);
        assert_eq!(candidate(base, 1), "john.smith_contoso1");
        assert_eq!(candidate(base, 42), "john.smith_contoso42");
        assert_eq!(candidate(base, 100), "john.smith_contos100");
        assert_eq!(candidate("bob", 7), "bob7");
        for n in [1, 9, 10, 99, 100, 9999] {
            assert!(candidate(base, n).chars().count() <= MAX_LEN);
        }
        // A cut that would end in a dot drops the dot.
        assert_eq!(candidate("abcdefghijklmnopq.rs", 12), "abcdefghijklmnopq12");
        assert_eq!(
            candidate("abcdefghijklmnopq.rs", 123),
            "abcdefghijklmnopq123"
        );
        assert_eq!(
            candidate("abcdefghijklmnop.qrs", 1234),
            "abcdefghijklmnop1234"
        );
        assert_eq!(
            candidate("abcdefghijklmnop.qrs", 123),
            "abcdefghijklmnop123"
        );
    }

    #[test]
    fn explicit_names_are_checked() {
        let dn = Dn::parse("CN=x,DC=y").unwrap();
        assert!(check_explicit(&dn, "good.name").is_ok());
        assert!(check_explicit(&dn, "bad*name").is_err());
        assert!(check_explicit(&dn, "ends.").is_err());
        assert!(check_explicit(&dn, &"x".repeat(21)).is_err());
        assert!(check_explicit(&dn, "").is_err());
    }
}
