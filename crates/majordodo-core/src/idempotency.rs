//! Idempotency keys: a client-chosen key per submission, so that a submission sent again (after
//! a lost answer, a timeout, a leader change) creates nothing new and is answered with the task
//! the first one created.
//!
//! Keys are scoped by the task's owner (`user_id`): two users may use the same key, and one
//! user can never learn or pre-empt another's task through a key. A key is kept from its task's
//! creation until a [`crate::LogEntry::ForgetIdempotencyKeys`] entry forgets it (the leader logs
//! one when the configured window has passed), independently of the task: purging the task
//! does not forget its key. Because forgetting is a logged entry, replay and followers hold
//! exactly the leader's keys.
//!
//! A broker may keep a key for each of millions of tasks, so the layout is compact. Keys come
//! in creation order almost always (the leader stamps each new task with its clock), so they
//! live in a queue in that order, which is also the order they are forgotten in, with a hash
//! table of positions in the queue for lookups. A key that comes out of order (the leader's
//! clock went back, at a leader change for example) goes to a small ordered side index
//! instead, so every key is still forgotten exactly when its creation time says. Keys in the
//! two usual machine-made forms (32 lowercase hex digits, and lowercase UUIDs) are held as 16
//! bytes rather than as text.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use crate::model::{Millis, TaskId};

/// A client's key as the state holds it. The representation is canonical (a key has exactly
/// one), so equality of representations is equality of texts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KeyText {
    /// 32 lowercase hex digits.
    Hex([u8; 16]),
    /// A UUID in lowercase hyphenated form (8-4-4-4-12 hex digits).
    Uuid([u8; 16]),
    /// Any other text.
    Text(Arc<str>),
}

impl KeyText {
    /// The text of the key.
    pub fn as_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            KeyText::Text(t) => std::borrow::Cow::Borrowed(t),
            other => std::borrow::Cow::Owned(other.to_string()),
        }
    }
}

/// Value of each lowercase hex digit; 0xff for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// 32 lowercase hex digits → 16 bytes.
fn parse_hex(digits: &[u8]) -> Option<[u8; 16]> {
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut bad = 0u8;
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let (hi, lo) = (HEX_VALUES[pair[0] as usize], HEX_VALUES[pair[1] as usize]);
        bad |= hi | lo;
        out[i] = (hi << 4) | (lo & 0x0f);
    }
    // Digits are below 16: any other byte sets the high bits.
    (bad < 16).then_some(out)
}

/// The lowercase hex digits of `bytes` into `out`, with hyphens before the bytes at
/// `hyphens`; returns the length written.
fn write_hex(bytes: &[u8; 16], hyphens: &[usize], out: &mut [u8; 36]) -> usize {
    let mut n = 0;
    for (i, b) in bytes.iter().enumerate() {
        if hyphens.contains(&i) {
            out[n] = b'-';
            n += 1;
        }
        out[n] = HEX_DIGITS[usize::from(b >> 4)];
        out[n + 1] = HEX_DIGITS[usize::from(b & 0x0f)];
        n += 2;
    }
    n
}

/// Positions of the hyphens of a hyphenated UUID.
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

fn parse_uuid(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() != 36 || UUID_HYPHENS.iter().any(|&i| text[i] != b'-') {
        return None;
    }
    let mut digits = [0u8; 32];
    let mut n = 0;
    for (i, &c) in text.iter().enumerate() {
        if !UUID_HYPHENS.contains(&i) {
            digits[n] = c;
            n += 1;
        }
    }
    parse_hex(&digits)
}

/// A key being looked up, in the canonical form without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Hex([u8; 16]),
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> KeyRef<'a> {
    fn of(text: &'a str) -> KeyRef<'a> {
        if let Some(b) = parse_hex(text.as_bytes()) {
            KeyRef::Hex(b)
        } else if let Some(b) = parse_uuid(text.as_bytes()) {
            KeyRef::Uuid(b)
        } else {
            KeyRef::Text(text)
        }
    }
}

impl KeyText {
    fn as_ref(&self) -> KeyRef<'_> {
        match self {
            KeyText::Hex(b) => KeyRef::Hex(*b),
            KeyText::Uuid(b) => KeyRef::Uuid(*b),
            KeyText::Text(t) => KeyRef::Text(t),
        }
    }
}

impl KeyRef<'_> {
    /// The key as the state holds it.
    fn to_key_text(self) -> KeyText {
        match self {
            KeyRef::Hex(b) => KeyText::Hex(b),
            KeyRef::Uuid(b) => KeyText::Uuid(b),
            KeyRef::Text(t) => KeyText::Text(t.into()),
        }
    }
}

impl From<&str> for KeyText {
    fn from(text: &str) -> KeyText {
        KeyRef::of(text).to_key_text()
    }
}

impl From<String> for KeyText {
    fn from(text: String) -> KeyText {
        KeyRef::of(&text).to_key_text()
    }
}

impl From<Arc<str>> for KeyText {
    fn from(text: Arc<str>) -> KeyText {
        // A text key keeps the shared text it came in.
        match KeyRef::of(&text) {
            KeyRef::Text(_) => None,
            compact => Some(compact.to_key_text()),
        }
        .unwrap_or(KeyText::Text(text))
    }
}

impl fmt::Display for KeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 36];
        let n = match self {
            KeyText::Hex(b) => write_hex(b, &[], &mut buf),
            KeyText::Uuid(b) => write_hex(b, &[4, 6, 8, 10], &mut buf),
            KeyText::Text(t) => return f.write_str(t),
        };
        f.write_str(std::str::from_utf8(&buf[..n]).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for KeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.as_text(), f)
    }
}

impl PartialEq<str> for KeyText {
    fn eq(&self, other: &str) -> bool {
        self.as_ref() == KeyRef::of(other)
    }
}

impl PartialEq<&str> for KeyText {
    fn eq(&self, other: &&str) -> bool {
        self.as_ref() == KeyRef::of(other)
    }
}

/// One key the state knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Owner of the task (keys are scoped by owner).
    pub user_id: Arc<str>,
    /// The client's key.
    pub key: KeyText,
    /// The task the first submission with this key created.
    pub task_id: TaskId,
    /// That task's creation time: the key is kept for the window from then.
    pub created: Millis,
}

impl IdempotencyKey {
    /// Where the key sorts in expiry order.
    fn stamp(&self) -> (Millis, TaskId) {
        (self.created, self.task_id)
    }
}

/// The keys of a state.
#[derive(Clone, Default)]
pub(crate) struct IdempotencyKeys {
    /// Keys in strictly increasing (created, task) order; the front one has sequence number
    /// `popped`, the next `popped + 1`, and so on (modulo 2^32: the run is never that long).
    run: VecDeque<IdempotencyKey>,
    /// Keys popped from the front of `run` so far, modulo 2^32.
    popped: u32,
    /// Sequence numbers of the keys of `run`, with the hash of their owner and key (kept, so
    /// that growing the table reads nothing else), by that hash.
    positions: hashbrown::HashTable<(u32, u32)>,
    /// Keys that came out of order, by (created, task), with their lookup index.
    stragglers: BTreeMap<(Millis, TaskId), IdempotencyKey>,
    straggler_keys: crate::HashMap<(Arc<str>, KeyText), (TaskId, Millis)>,
    hasher: foldhash::fast::RandomState,
}

impl IdempotencyKeys {
    /// The 32-bit hash of an owner and key.
    fn hash(&self, user_id: &str, key: KeyRef<'_>) -> u32 {
        let mut h = self.hasher.build_hasher();
        user_id.hash(&mut h);
        key.hash(&mut h);
        let h = h.finish();
        (h ^ (h >> 32)) as u32
    }

    fn in_run(&self, seq: u32) -> &IdempotencyKey {
        &self.run[seq.wrapping_sub(self.popped) as usize]
    }

    /// The task and creation time of `key` of `user_id`, if known.
    pub(crate) fn get(&self, user_id: &str, key: &str) -> Option<(TaskId, Millis)> {
        self.get_ref(user_id, KeyRef::of(key))
    }

    fn get_ref(&self, user_id: &str, key: KeyRef<'_>) -> Option<(TaskId, Millis)> {
        let hash = self.hash(user_id, key);
        if let Some(k) = self.find_in_run(hash, user_id, key) {
            return Some((k.task_id, k.created));
        }
        if self.straggler_keys.is_empty() {
            return None;
        }
        self.get_straggler(user_id, key)
    }

    fn find_in_run(&self, hash: u32, user_id: &str, key: KeyRef<'_>) -> Option<&IdempotencyKey> {
        let (seq, _) = self.positions.find(spread(hash), |&(seq, h)| {
            h == hash && {
                let k = self.in_run(seq);
                *k.user_id == *user_id && k.key.as_ref() == key
            }
        })?;
        Some(self.in_run(*seq))
    }

    /// Rare: only keys that came out of order are there.
    fn get_straggler(&self, user_id: &str, key: KeyRef<'_>) -> Option<(TaskId, Millis)> {
        let owned = (Arc::<str>::from(user_id), key.to_key_text());
        self.straggler_keys.get(&owned).copied()
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.run.len() + self.stragglers.len()
    }

    /// Records a key. Returns false, changing nothing, when the owner already has that key or
    /// the task already has a key (both are refused before an entry is applied; this is the
    /// last guard).
    pub(crate) fn insert(
        &mut self,
        user_id: Arc<str>,
        key: KeyText,
        task_id: TaskId,
        created: Millis,
    ) -> bool {
        let hash = self.hash(&user_id, key.as_ref());
        if self.find_in_run(hash, &user_id, key.as_ref()).is_some()
            || (!self.straggler_keys.is_empty()
                && self.get_straggler(&user_id, key.as_ref()).is_some())
        {
            return false;
        }
        let k = IdempotencyKey {
            user_id,
            key,
            task_id,
            created,
        };
        let stamp = k.stamp();
        // Every straggler sorts before the back of the run (it went aside because it did), so
        // a key after the back of the run sorts after every key.
        if self.run.back().is_some_and(|last| last.stamp() >= stamp) {
            if self.stragglers.contains_key(&stamp) || self.run_holds(stamp) {
                return false;
            }
            self.straggler_keys
                .insert((k.user_id.clone(), k.key.clone()), (task_id, created));
            self.stragglers.insert(stamp, k);
            return true;
        }
        let seq = self.popped.wrapping_add(self.run.len() as u32);
        self.run.push_back(k);
        self.positions
            .insert_unique(spread(hash), (seq, hash), |&(_, h)| spread(h));
        true
    }

    /// The keys of a restored state, built at once: in creation order, with their lookup table
    /// filled in the order of its buckets. Filled one key at a time, in creation order, every key
    /// lands in a random bucket of a table of millions (a cache miss for each); in bucket order
    /// the table is written from one end to the other. Returns the first key found to repeat
    /// the (owner, key) or the (created, task) of another, building nothing.
    pub(crate) fn from_keys(
        mut keys: Vec<IdempotencyKey>,
    ) -> Result<IdempotencyKeys, IdempotencyKey> {
        let mut out = IdempotencyKeys::default();
        if !keys.is_sorted_by_key(IdempotencyKey::stamp) {
            keys.sort_unstable_by_key(IdempotencyKey::stamp);
        }
        if let Some(i) = (1..keys.len()).find(|&i| keys[i - 1].stamp() == keys[i].stamp()) {
            return Err(keys.swap_remove(i));
        }
        let mut order: Vec<(u32, u32)> = keys
            .iter()
            .enumerate()
            .map(|(seq, k)| (out.hash(&k.user_id, k.key.as_ref()), seq as u32))
            .collect();
        by_bucket(&mut order, keys.len());
        // Keys of one hash are next to each other now: a repeated key is among them.
        for same in order.chunk_by(|a, b| a.0 == b.0).filter(|s| s.len() > 1) {
            for (i, a) in same.iter().enumerate() {
                let (ka, rest) = (&keys[a.1 as usize], &same[i + 1..]);
                if let Some(b) = rest.iter().find(|b| {
                    let kb = &keys[b.1 as usize];
                    *kb.user_id == *ka.user_id && kb.key == ka.key
                }) {
                    return Err(keys.swap_remove(b.1 as usize));
                }
            }
        }
        out.positions.reserve(order.len(), |&(_, h)| spread(h));
        for (hash, seq) in order {
            out.positions
                .insert_unique(spread(hash), (seq, hash), |&(_, h)| spread(h));
        }
        out.run = keys.into();
        Ok(out)
    }

    /// Whether a key of `run` has this (created, task).
    fn run_holds(&self, stamp: (Millis, TaskId)) -> bool {
        self.run.binary_search_by(|k| k.stamp().cmp(&stamp)).is_ok()
    }

    /// Removes the front key of `run`.
    fn pop_run(&mut self) {
        let Some(k) = self.run.pop_front() else {
            return;
        };
        let seq = self.popped;
        self.popped = self.popped.wrapping_add(1);
        let hash = self.hash(&k.user_id, k.key.as_ref());
        if let Ok(found) = self.positions.find_entry(spread(hash), |&(s, _)| s == seq) {
            found.remove();
        }
    }

    /// Forgets every key of a task created before `created_before`; returns how many.
    pub(crate) fn forget_before(&mut self, created_before: Millis) -> usize {
        let mut forgotten = 0;
        // From the oldest: the cost follows the keys forgotten, not the keys kept.
        while self.run.front().is_some_and(|k| k.created < created_before) {
            self.pop_run();
            forgotten += 1;
        }
        while let Some(entry) = self.stragglers.first_entry()
            && entry.key().0 < created_before
        {
            let k = entry.remove();
            self.straggler_keys.remove(&(k.user_id, k.key));
            forgotten += 1;
        }
        if self.run.is_empty() {
            // Nothing to point into: start the numbering again (and give memory back).
            self.run = VecDeque::new();
            self.positions = hashbrown::HashTable::new();
            self.popped = 0;
        }
        forgotten
    }

    /// Keys in expiry order: the run and the stragglers merged.
    fn merged<'a>(
        &'a self,
        run: impl Iterator<Item = &'a IdempotencyKey> + 'a,
        stragglers: impl Iterator<Item = &'a IdempotencyKey> + 'a,
    ) -> impl Iterator<Item = &'a IdempotencyKey> + 'a {
        crate::sorted::merge_sorted(run, stragglers, |k| k.stamp())
    }

    /// Creation times of the keys created at or after `from`, oldest first.
    pub(crate) fn created_from(&self, from: Millis) -> impl Iterator<Item = Millis> + '_ {
        let start = self.run.partition_point(|k| k.created < from);
        self.merged(
            self.run.range(start..),
            self.stragglers.range((from, TaskId(0))..).map(|(_, k)| k),
        )
        .map(|k| k.created)
    }

    /// Every key, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = IdempotencyKey> + '_ {
        self.merged(self.run.iter(), self.stragglers.values())
            .cloned()
    }

    /// Checks that the order and the lookup indexes hold the same keys.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(w) = self
            .run
            .iter()
            .zip(self.run.iter().skip(1))
            .find(|(a, b)| a.stamp() >= b.stamp())
        {
            return Err(format!(
                "idempotency keys of tasks {} and {} are out of order",
                w.0.task_id, w.1.task_id
            ));
        }
        if self.positions.len() != self.run.len()
            || self.straggler_keys.len() != self.stragglers.len()
        {
            return Err(format!(
                "{} + {} idempotency keys indexed for lookup, {} + {} in expiry order",
                self.positions.len(),
                self.straggler_keys.len(),
                self.run.len(),
                self.stragglers.len()
            ));
        }
        // Every key is found by its lookup, looked up in the order of the table's buckets (as
        // `from_keys` fills it) so that checking millions of keys reads the table in order.
        let mut order: Vec<(u32, u32)> = self
            .run
            .iter()
            .enumerate()
            .map(|(i, k)| (self.hash(&k.user_id, k.key.as_ref()), i as u32))
            .collect();
        by_bucket(&mut order, self.positions.len());
        for (_, i) in order {
            let k = &self.run[i as usize];
            if self.get_ref(&k.user_id, k.key.as_ref()) != Some((k.task_id, k.created)) {
                return Err(not_indexed(k));
            }
        }
        for k in self.stragglers.values() {
            if self.get_ref(&k.user_id, k.key.as_ref()) != Some((k.task_id, k.created)) {
                return Err(not_indexed(k));
            }
            // Stamps are unique within the run (in strictly increasing order) and among the
            // stragglers (their index's keys); none is in both.
            if self.run_holds(k.stamp()) {
                return Err(format!("task {} has two idempotency keys", k.task_id));
            }
        }
        Ok(())
    }
}

fn not_indexed(k: &IdempotencyKey) -> String {
    format!(
        "idempotency key {:?} of {} (task {}) is not indexed for lookup",
        k.key, k.user_id, k.task_id
    )
}

/// Sorts (hash, position) pairs in the order of the buckets of a lookup table holding `len`
/// keys (the table takes a key's bucket from the low bits of its hash, see [`spread`]), and by
/// hash within a bucket.
fn by_bucket(pairs: &mut [(u32, u32)], len: usize) {
    // As the table sizes itself: room for `len` at a load of at most 7/8, a power of two.
    let buckets = (len.max(8).saturating_mul(8) / 7).next_power_of_two();
    let mask = u32::try_from(buckets - 1).unwrap_or(u32::MAX);
    pairs.sort_unstable_by_key(|&(h, _)| (u64::from(h & mask) << 32) | u64::from(h));
}

/// The table's 64-bit hash from a 32-bit one: the table takes its bucket from the low bits and
/// a tag from the top ones, so both come from the 32 bits.
fn spread(h: u32) -> u64 {
    (u64::from(h) << 32) | u64::from(h)
}

/// Two sets of keys are equal when they hold the same keys: how they are laid out (which came
/// out of order, the numbering, the hash seeds) does not matter.
impl PartialEq for IdempotencyKeys {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for IdempotencyKeys {}

impl fmt::Debug for IdempotencyKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyKeys")
            .field("in_order", &self.run.len())
            .field("out_of_order", &self.stragglers.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_owner_and_forgotten_by_creation_time() {
        // Goal: lookups are per owner, a second insert of a key is refused, and forgetting
        // removes exactly the keys created before the bound from both indexes.
        let mut keys = IdempotencyKeys::default();
        assert!(keys.insert("a".into(), "k".into(), TaskId(1), 10));
        assert!(keys.insert("b".into(), "k".into(), TaskId(2), 20));
        assert!(!keys.insert("a".into(), "k".into(), TaskId(3), 30));
        assert_eq!(keys.get("a", "k"), Some((TaskId(1), 10)));
        assert_eq!(keys.get("b", "k"), Some((TaskId(2), 20)));
        assert_eq!(keys.get("c", "k"), None);
        assert_eq!(keys.forget_before(20), 1);
        assert_eq!(keys.get("a", "k"), None);
        assert_eq!(keys.get("b", "k"), Some((TaskId(2), 20)));
        assert_eq!(keys.len(), 1);
        keys.check().unwrap();
        assert_eq!(keys.forget_before(21), 1);
        assert_eq!(keys, IdempotencyKeys::default());
    }

    #[test]
    fn machine_made_keys_keep_their_exact_text() {
        // Goal: the compact forms are used only for their canonical texts, and give back
        // exactly the text they were made from; near misses stay text.
        let hex = "0123456789abcdef0123456789abcdef";
        let uuid = "01234567-89ab-cdef-0123-456789abcdef";
        assert!(matches!(KeyText::from(hex), KeyText::Hex(_)));
        assert!(matches!(KeyText::from(uuid), KeyText::Uuid(_)));
        for text in [
            hex,
            uuid,
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdefa",
            "01234567-89ab-cdef-0123-456789abcdeg",
            "0123456789ab-cdef-0123-456789abcdef",
            "",
            "k",
        ] {
            let key = KeyText::from(text);
            assert_eq!(key.to_string(), text);
            assert_eq!(key, KeyText::from(text.to_string()));
            assert!(key == text);
        }
        assert!(matches!(
            KeyText::from(hex.to_uppercase()),
            KeyText::Text(_)
        ));
        let mut keys = IdempotencyKeys::default();
        assert!(keys.insert("a".into(), hex.into(), TaskId(1), 10));
        assert_eq!(keys.get("a", hex), Some((TaskId(1), 10)));
        assert_eq!(keys.get("a", &hex.to_uppercase()), None);
        assert!(keys.insert("a".into(), hex.to_uppercase().into(), TaskId(2), 10));
        assert_eq!(
            keys.iter().map(|k| k.key.to_string()).collect::<Vec<_>>(),
            [hex.to_string(), hex.to_uppercase()]
        );
    }

    #[test]
    fn keys_out_of_creation_order_are_forgotten_in_creation_order() {
        // Goal: a key created before the newest one (the clock went back) is still listed and
        // forgotten by its creation time, and the two layouts compare by content.
        let mut keys = IdempotencyKeys::default();
        assert!(keys.insert("a".into(), "k1".into(), TaskId(1), 100));
        assert!(keys.insert("a".into(), "k2".into(), TaskId(2), 200));
        assert!(keys.insert("a".into(), "k3".into(), TaskId(3), 150));
        assert!(keys.insert("a".into(), "k4".into(), TaskId(4), 160));
        assert!(!keys.insert("a".into(), "k3".into(), TaskId(5), 300));
        assert!(!keys.insert("b".into(), "x".into(), TaskId(3), 150));
        keys.check().unwrap();
        assert_eq!(keys.get("a", "k3"), Some((TaskId(3), 150)));
        assert_eq!(
            keys.created_from(0).collect::<Vec<_>>(),
            [100, 150, 160, 200]
        );
        assert_eq!(keys.created_from(155).collect::<Vec<_>>(), [160, 200]);
        let mut in_order = IdempotencyKeys::default();
        for k in keys.iter() {
            assert!(in_order.insert(k.user_id, k.key, k.task_id, k.created));
        }
        assert_eq!(in_order, keys);
        assert_eq!(keys.forget_before(155), 2);
        assert_eq!(keys.get("a", "k1"), None);
        assert_eq!(keys.get("a", "k3"), None);
        assert_eq!(keys.get("a", "k4"), Some((TaskId(4), 160)));
        keys.check().unwrap();
        assert_eq!(keys.forget_before(1000), 2);
        assert_eq!(keys.len(), 0);
        // Numbering starts again once empty.
        assert!(keys.insert("a".into(), "k1".into(), TaskId(9), 1));
        assert_eq!(keys.get("a", "k1"), Some((TaskId(9), 1)));
        keys.check().unwrap();
    }

    /// What the keys must behave like: the plain ordered layout.
    #[derive(Default)]
    struct Model {
        by_key: std::collections::HashMap<(String, String), (TaskId, Millis)>,
        by_time: BTreeMap<(Millis, TaskId), (String, String)>,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert { user: u8, key: u8, created: Millis },
        Forget(Millis),
    }

    fn key_text(k: u8) -> String {
        match k % 4 {
            0 => format!("{:032x}", u128::from(k) * 0x0123_4567_89ab_cdef),
            1 => format!("01234567-89ab-cdef-0123-4567890000{k:02x}"),
            2 => format!("{:032X}", u128::from(k) + 0xabc),
            _ => format!("key-{k}"),
        }
    }

    use proptest::prelude::*;

    proptest::proptest! {
        #[test]
        fn keys_behave_like_one_ordered_index(ops in proptest::collection::vec(
            proptest::prop_oneof![
                4 => (0u8..3, 0u8..24, 0i64..60).prop_map(|(user, key, created)| Op::Insert { user, key, created }),
                1 => (0i64..70).prop_map(Op::Forget),
            ],
            0..120,
        )) {
            // Goal: whatever order keys come in (creation times going back included), the
            // compact layout answers lookups, lists, and forgets exactly as one ordered index.
            let mut keys = IdempotencyKeys::default();
            let mut model = Model::default();
            let mut next_task = 1;
            for op in ops {
                match op {
                    Op::Insert { user, key, created } => {
                        let (user, key) = (format!("u{user}"), key_text(key));
                        let task = TaskId(next_task);
                        next_task += 1;
                        let fresh = !model.by_key.contains_key(&(user.clone(), key.clone()));
                        prop_assert_eq!(keys.insert(user.as_str().into(), key.clone().into(), task, created), fresh);
                        if fresh {
                            model.by_key.insert((user.clone(), key.clone()), (task, created));
                            model.by_time.insert((created, task), (user, key));
                        }
                    }
                    Op::Forget(before) => {
                        let gone: Vec<_> = model.by_time.range(..(before, TaskId(0))).map(|(t, _)| *t).collect();
                        for t in &gone {
                            let k = model.by_time.remove(t).expect("listed");
                            model.by_key.remove(&k);
                        }
                        prop_assert_eq!(keys.forget_before(before), gone.len());
                    }
                }
                keys.check().map_err(TestCaseError::fail)?;
                prop_assert_eq!(keys.len(), model.by_time.len());
                for ((user, key), found) in &model.by_key {
                    prop_assert_eq!(keys.get(user, key), Some(*found));
                }
                prop_assert_eq!(keys.get("u0", "absent"), None);
                let listed: Vec<_> = keys.iter().map(|k| (k.created, k.task_id, k.user_id.to_string(), k.key.to_string())).collect();
                let expected: Vec<_> = model.by_time.iter().map(|((c, t), (u, k))| (*c, *t, u.clone(), k.clone())).collect();
                prop_assert_eq!(listed, expected);
                for from in [0, 20, 45] {
                    let got: Vec<_> = keys.created_from(from).collect();
                    let want: Vec<_> = model.by_time.range((from, TaskId(0))..).map(|((c, _), _)| *c).collect();
                    prop_assert_eq!(got, want);
                }
                // Built at once (as a snapshot restores them), from any order, the same keys.
                let mut listed: Vec<IdempotencyKey> = keys.iter().collect();
                listed.reverse();
                let rebuilt = IdempotencyKeys::from_keys(listed).expect("no key repeats");
                rebuilt.check().map_err(TestCaseError::fail)?;
                prop_assert_eq!(&rebuilt, &keys);
                for ((user, key), found) in &model.by_key {
                    prop_assert_eq!(rebuilt.get(user, key), Some(*found));
                }
            }
        }
    }

    #[test]
    fn keys_built_at_once_refuse_a_repeated_key_or_task() {
        // Goal: the restore path refuses what `insert` refuses: an owner's key twice, or two
        // keys of one task; and many keys come out as inserted one by one would.
        let key = |user: &str, text: &str, task: u64, created: Millis| IdempotencyKey {
            user_id: user.into(),
            key: text.into(),
            task_id: TaskId(task),
            created,
        };
        let repeated = IdempotencyKeys::from_keys(vec![
            key("a", "k", 1, 10),
            key("b", "k", 2, 20),
            key("a", "k", 3, 30),
        ]);
        assert_eq!(repeated.err().map(|k| k.task_id.0 % 2), Some(1));
        let one_task =
            IdempotencyKeys::from_keys(vec![key("a", "k1", 1, 10), key("a", "k2", 1, 10)]);
        assert_eq!(one_task.err().map(|k| k.task_id), Some(TaskId(1)));
        let mut one_by_one = IdempotencyKeys::default();
        let many: Vec<_> = (0..20_000_u64)
            .map(|i| {
                key(
                    &format!("u{}", i % 7),
                    &format!("{:032x}", i * 7919),
                    i + 1,
                    i as Millis,
                )
            })
            .collect();
        for k in &many {
            assert!(one_by_one.insert(k.user_id.clone(), k.key.clone(), k.task_id, k.created));
        }
        let at_once = IdempotencyKeys::from_keys(many).unwrap();
        at_once.check().unwrap();
        assert_eq!(at_once, one_by_one);
        assert_eq!(
            at_once.get("u3", &format!("{:032x}", 10 * 7919)),
            Some((TaskId(11), 10))
        );
    }
}
