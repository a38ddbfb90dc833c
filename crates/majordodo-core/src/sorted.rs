//! Merging sorted sequences: the compact layouts (idempotency keys, waiting queues) keep most
//! items in one array in order and the few that came out of order in a side index, and read
//! both as one sequence.

/// `a` and `b`, each sorted by `key`, as one sequence sorted by `key` (on a tie, `a` first).
pub(crate) fn merge_sorted<T, K: Ord>(
    a: impl Iterator<Item = T>,
    b: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> impl Iterator<Item = T> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if key(y) < key(x) => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn merges_in_order_with_ties_from_the_first() {
        // Goal: the merge is sorted, keeps every item, and takes the first sequence's on a tie.
        let a = [(1, 'a'), (3, 'a'), (5, 'a')];
        let b = [(0, 'b'), (3, 'b'), (6, 'b')];
        let merged: Vec<_> =
            super::merge_sorted(a.into_iter(), b.into_iter(), |(k, _)| *k).collect();
        assert_eq!(
            merged,
            [(0, 'b'), (1, 'a'), (3, 'a'), (3, 'b'), (5, 'a'), (6, 'b')]
        );
    }
}
