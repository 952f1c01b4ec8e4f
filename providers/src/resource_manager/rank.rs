//! The block model's choices, as pure functions over free capacities: which share of an
//! organization takes a mailbox, which store grants an organization more space, and how an
//! organization's space is split over stores (`tightPack` = fewest stores, `level` = even
//! parts). Candidates come in key order; equal ranks go to the first with room.

/// How a mailbox (or a share) picks among candidates that have room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// The candidate with the most free space (ranked by free capacity, descending).
    Level,
    /// The candidate with the least free space that still has room (best fit, ascending).
    TightPack,
}

/// How an organization that lacks room is granted more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AutoAllocate {
    /// On the store with the most free space.
    Level,
    /// On the store with the least free space that has room.
    TightPack,
    /// On a store the organization already has space on if one has room (most free first),
    /// else as `Level`.
    MinStoreCount,
}

/// The candidate `algorithm` picks among `(id, free)` pairs that have at least `need` free.
pub(crate) fn pick<'a>(
    candidates: impl IntoIterator<Item = (&'a str, u64)>,
    need: u64,
    algorithm: Algorithm,
) -> Option<&'a str> {
    let mut best: Option<(&str, u64)> = None;
    for (id, free) in candidates {
        if free < need {
            continue;
        }
        let better = match (best, algorithm) {
            (None, _) => true,
            (Some((_, b)), Algorithm::Level) => free > b,
            (Some((_, b)), Algorithm::TightPack) => free < b,
        };
        if better {
            best = Some((id, free));
        }
    }
    best.map(|(id, _)| id)
}

/// Splits `want` over stores `(id, free)` in the fewest stores: one store if one can take it
/// all (the best fit: the least free that has room), else the stores with the most free
/// space first. `None` when all of them together cannot take it.
pub(crate) fn split_tight(stores: &[(String, u64)], want: u64) -> Option<Vec<(String, u64)>> {
    if let Some(id) = pick(
        stores.iter().map(|(id, f)| (id.as_str(), *f)),
        want,
        Algorithm::TightPack,
    ) {
        return Some(vec![(id.to_string(), want)]);
    }
    let mut by_free: Vec<&(String, u64)> = stores.iter().filter(|(_, f)| *f > 0).collect();
    // Stable: equal free space keeps key order.
    by_free.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut left = want;
    let mut parts = Vec::new();
    for (id, free) in by_free {
        if left == 0 {
            break;
        }
        let part = left.min(*free);
        parts.push((id.clone(), part));
        left -= part;
    }
    (left == 0).then_some(parts)
}

/// Splits `want` in even parts over every store with free space; a store that cannot take
/// its part gives all it has and the rest is split evenly over the others (the remainder of
/// a division goes to the stores with the most room, so a small share lands on the store
/// with the most free space). `None` when all of them together
/// cannot take it.
pub(crate) fn split_level(stores: &[(String, u64)], want: u64) -> Option<Vec<(String, u64)>> {
    let total: u64 = stores.iter().map(|(_, f)| *f).sum();
    if total < want {
        return None;
    }
    let mut parts: Vec<(String, u64, u64)> = stores
        .iter()
        .filter(|(_, f)| *f > 0)
        .map(|(id, f)| (id.clone(), *f, 0))
        .collect();
    let mut left = want;
    loop {
        let open: Vec<usize> = (0..parts.len())
            .filter(|&i| parts[i].2 < parts[i].1)
            .collect();
        if left == 0 || open.is_empty() {
            break;
        }
        let n = open.len() as u64;
        // A store that cannot take an even part takes all it has, and the round starts over.
        let even = left.div_ceil(n);
        let mut capped = false;
        for &i in &open {
            let room = parts[i].1 - parts[i].2;
            if room < even {
                parts[i].2 += room;
                left -= room;
                capped = true;
            }
        }
        if capped {
            continue;
        }
        // The remainder goes to the stores with the most room (equal room: key order).
        let (base, extra) = (left / n, left % n);
        let mut by_room = open.clone();
        by_room.sort_by_key(|&i| std::cmp::Reverse(parts[i].1 - parts[i].2));
        for (k, &i) in by_room.iter().enumerate() {
            parts[i].2 += base + u64::from((k as u64) < extra);
        }
        left = 0;
    }
    Some(
        parts
            .into_iter()
            .filter(|p| p.2 > 0)
            .map(|(id, _, part)| (id, part))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(i, f)| (i.to_string(), *f)).collect()
    }

    #[test]
    fn level_takes_the_most_free_and_tight_pack_the_best_fit() {
        let c = [("a", 50), ("b", 80), ("c", 30), ("d", 80)];
        assert_eq!(pick(c, 40, Algorithm::Level), Some("b"));
        assert_eq!(pick(c, 40, Algorithm::TightPack), Some("a"));
        assert_eq!(pick(c, 20, Algorithm::TightPack), Some("c"));
        assert_eq!(pick(c, 81, Algorithm::Level), None);
    }

    #[test]
    fn tight_pack_uses_the_fewest_stores() {
        let s = stores(&[("a", 10), ("b", 40), ("c", 25)]);
        assert_eq!(split_tight(&s, 20), Some(vec![("c".into(), 20)]));
        assert_eq!(
            split_tight(&s, 60),
            Some(vec![("b".into(), 40), ("c".into(), 20)])
        );
        assert_eq!(split_tight(&s, 76), None);
    }

    #[test]
    fn level_spreads_evenly_and_caps_small_stores() {
        let s = stores(&[("a", 100), ("b", 100), ("c", 100)]);
        assert_eq!(
            split_level(&s, 10),
            Some(vec![("a".into(), 4), ("b".into(), 3), ("c".into(), 3)])
        );
        let s = stores(&[("a", 2), ("b", 100), ("c", 100), ("z", 0)]);
        assert_eq!(
            split_level(&s, 30),
            Some(vec![("a".into(), 2), ("b".into(), 14), ("c".into(), 14)])
        );
        assert_eq!(split_level(&s, 203), None);
        assert_eq!(split_level(&s, 1), Some(vec![("b".into(), 1)]));
        assert_eq!(
            split_level(&s, 202)
                .unwrap()
                .iter()
                .map(|p| p.1)
                .sum::<u64>(),
            202
        );
    }
}
