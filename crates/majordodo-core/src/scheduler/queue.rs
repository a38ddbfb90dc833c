//! One queue of waiting tasks (one tenant, one task type), in priority then age order.
//!
//! Tasks almost always join a queue at its end (ids grow, and most tasks keep the default
//! priority) and leave it at its head (the chooser takes the first that fits), so the queue is
//! a double-ended array in key order: joining at the end and leaving at the head cost O(1) and
//! 16 bytes per task, where a B-tree filled in ascending order leaves its nodes about half
//! full. The tasks' needs (cpu, memory, named amounts) sit in a second array beside it, index
//! for index, which a queue has only once one of its tasks declares needs: most queues hold
//! tasks that declare none, or all declare some (needs usually come with the task type). A
//! task that leaves from the middle (cancelled, deadline passed) is marked and skipped, and the
//! marks are swept when they outnumber the tasks. A task that joins before the end (a
//! higher priority, a task put back) goes to an ordered side index, merged in when reading.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use super::QueueKey;
use crate::model::TaskId;
use crate::quota::Needs;

/// A task in the array.
#[derive(Clone)]
struct Entry {
    priority: i32,
    /// Left the queue (kept to keep the array's order searchable, until swept).
    gone: bool,
    id: TaskId,
}

// The array's cost per task.
const _: () = assert!(std::mem::size_of::<Entry>() == 16);

/// What the needs of a task that declares none read as.
static NO_NEEDS: Option<Needs> = None;

impl Entry {
    fn key(&self) -> QueueKey {
        (Reverse(self.priority), self.id)
    }
}

/// Waiting tasks of one tenant and type.
#[derive(Clone, Default)]
pub(super) struct Queue {
    /// In strictly increasing key order, gone entries included; the first and the last are
    /// never gone.
    run: VecDeque<Entry>,
    /// The needs of the entries of `run`, index for index; empty while no entry has needs
    /// (never empty while one has). A gone entry's needs are `None`.
    needs: VecDeque<Option<Needs>>,
    /// Entries of `run` not gone.
    live: usize,
    /// Tasks that joined before the end of `run`, by key (never also in `run`).
    others: BTreeMap<QueueKey, Option<Needs>>,
}

impl Queue {
    /// Number of tasks.
    pub(super) fn len(&self) -> usize {
        self.live + self.others.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where `key` is in `run`, gone or not. Tasks mostly leave at the head (or have left it
    /// already, taken by the chooser), so the ends are looked at before searching.
    fn find(&self, key: &QueueKey) -> Result<usize, usize> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let (Some(first), Some(last)) = (self.run.front(), self.run.back()) else {
            return Err(0);
        };
        match first.key().cmp(key) {
            Equal => return Ok(0),
            Greater => return Err(0),
            Less => {}
        }
        match last.key().cmp(key) {
            Equal => return Ok(self.run.len() - 1),
            Less => return Err(self.run.len()),
            Greater => {}
        }
        self.run.binary_search_by(|e| e.key().cmp(key))
    }

    /// The needs of entry `i` of `run`.
    fn needs_at(&self, i: usize) -> &Option<Needs> {
        self.needs.get(i).unwrap_or(&NO_NEEDS)
    }

    /// Gives `run` its array of needs, if it has none yet (all `None`).
    fn with_needs(&mut self) -> &mut VecDeque<Option<Needs>> {
        if self.needs.is_empty() {
            self.needs.resize(self.run.len(), None);
        }
        &mut self.needs
    }

    /// Adds a task; false (changing nothing) if it is already there.
    pub(super) fn insert(&mut self, key: QueueKey, needs: Option<Needs>) -> bool {
        let at_end = self.run.back().is_none_or(|last| last.key() < key);
        if at_end && !self.others.contains_key(&key) {
            if needs.is_some() || !self.needs.is_empty() {
                self.with_needs().push_back(needs);
            }
            self.run.push_back(Entry {
                priority: key.0.0,
                gone: false,
                id: key.1,
            });
            self.live += 1;
            return true;
        }
        match self.find(&key) {
            Ok(i) => {
                let e = &mut self.run[i];
                if !e.gone {
                    return false;
                }
                e.gone = false;
                if needs.is_some() {
                    self.with_needs()[i] = needs;
                }
                self.live += 1;
                true
            }
            Err(_) => {
                if self.others.contains_key(&key) {
                    return false;
                }
                self.others.insert(key, needs);
                true
            }
        }
    }

    /// Removes a task; false if it is not there.
    pub(super) fn remove(&mut self, key: &QueueKey) -> bool {
        match self.find(key) {
            Ok(i) if !self.run[i].gone => {
                self.run[i].gone = true;
                if let Some(n) = self.needs.get_mut(i) {
                    *n = None;
                }
                self.live -= 1;
                self.tidy();
                true
            }
            Ok(_) => false,
            Err(_) => self.others.remove(key).is_some(),
        }
    }

    /// Drops gone entries at both ends, sweeps them when they outnumber the tasks, and gives
    /// memory back when the array is mostly empty.
    fn tidy(&mut self) {
        while self.run.front().is_some_and(|e| e.gone) {
            self.run.pop_front();
            self.needs.pop_front();
        }
        while self.run.back().is_some_and(|e| e.gone) {
            self.run.pop_back();
            self.needs.pop_back();
        }
        let gone = self.run.len() - self.live;
        if gone > self.live.max(32) {
            if !self.needs.is_empty() {
                let mut kept = self.run.iter().map(|e| !e.gone);
                self.needs
                    .retain(|_| kept.next().expect("as long as the entries"));
            }
            self.run.retain(|e| !e.gone);
        }
        if self.run.is_empty() {
            self.needs = VecDeque::new();
        }
        if self.run.capacity() > 4 * self.run.len() + 64 {
            self.run.shrink_to_fit();
            self.needs.shrink_to_fit();
        }
    }

    pub(super) fn contains(&self, key: &QueueKey) -> bool {
        self.get(key).is_some()
    }

    /// The needs of a task, if it is there.
    pub(super) fn get(&self, key: &QueueKey) -> Option<&Option<Needs>> {
        match self.find(key) {
            Ok(i) => (!self.run[i].gone).then_some(self.needs_at(i)),
            Err(_) => self.others.get(key),
        }
    }

    /// The first task's key.
    pub(super) fn first(&self) -> Option<QueueKey> {
        let run = self.run.front().map(Entry::key);
        let other = self.others.first_key_value().map(|(k, _)| *k);
        match (run, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes the first task.
    pub(super) fn pop_first(&mut self) {
        let Some(first) = self.first() else {
            return;
        };
        if self.run.front().is_some_and(|e| e.key() == first) {
            self.run.pop_front();
            self.needs.pop_front();
            self.live -= 1;
            self.tidy();
        } else {
            self.others.remove(&first);
        }
    }

    /// Keys in order.
    pub(super) fn keys(&self) -> impl Iterator<Item = QueueKey> + '_ {
        self.entries().map(|(k, _)| k)
    }

    /// Tasks with their needs, in order.
    fn entries(&self) -> impl Iterator<Item = (QueueKey, &Option<Needs>)> + '_ {
        let run = self
            .run
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.gone)
            .map(|(i, e)| (e.key(), self.needs_at(i)));
        let others = self.others.iter().map(|(k, n)| (*k, n));
        crate::sorted::merge_sorted(run, others, |(k, _)| *k)
    }

    /// Checks the layout's invariants.
    pub(super) fn check(&self) -> Result<(), String> {
        if let Some((a, b)) = self
            .run
            .iter()
            .zip(self.run.iter().skip(1))
            .find(|(a, b)| a.key() >= b.key())
        {
            return Err(format!(
                "queue out of order: task {} before task {}",
                a.id, b.id
            ));
        }
        if self.run.front().is_some_and(|e| e.gone) || self.run.back().is_some_and(|e| e.gone) {
            return Err("queue ends in a task that left".into());
        }
        if self.run.iter().filter(|e| !e.gone).count() != self.live {
            return Err("queue count differs from its tasks".into());
        }
        if !self.needs.is_empty() && self.needs.len() != self.run.len() {
            return Err(format!(
                "queue has {} needs for {} entries",
                self.needs.len(),
                self.run.len()
            ));
        }
        if let Some(e) = self
            .run
            .iter()
            .zip(&self.needs)
            .find_map(|(e, n)| (e.gone && n.is_some()).then_some(e))
        {
            return Err(format!("task {} left the queue but its needs stayed", e.id));
        }
        if let Some(k) = self.others.keys().find(|k| self.find(k).is_ok()) {
            return Err(format!("task {} queued twice", k.1));
        }
        Ok(())
    }
}

impl PartialEq for Queue {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.entries().eq(other.entries())
    }
}

impl Eq for Queue {}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(priority: i32, id: u64) -> QueueKey {
        (Reverse(priority), TaskId(id))
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(i32, u64),
        Remove(i32, u64),
        PopFirst,
    }

    proptest! {
        #[test]
        fn a_queue_behaves_like_one_ordered_map(ops in proptest::collection::vec(
            prop_oneof![
                // Mostly increasing ids at the default priority, as tasks come.
                6 => (0i32..1, 0u64..400).prop_map(|(p, id)| Op::Insert(p, id)),
                1 => (-2i32..3, 0u64..400).prop_map(|(p, id)| Op::Insert(p, id)),
                3 => (-2i32..3, 0u64..400).prop_map(|(p, id)| Op::Remove(p, id)),
                2 => Just(Op::PopFirst),
            ],
            0..400,
        )) {
            // Goal: whatever the order tasks join and leave in, the queue lists, finds and pops
            // exactly what an ordered map would.
            let mut q = Queue::default();
            let mut model: BTreeMap<QueueKey, Option<Needs>> = BTreeMap::new();
            let needs: Needs = vec![(std::sync::Arc::from("cpu"), 5)].into();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Insert(p, skew) => {
                        // Ids mostly grow: the next one, or one from the past.
                        next += 1;
                        let id = if skew % 5 == 0 { skew } else { next };
                        let k = key(p, id);
                        let n = (id % 3 == 0).then(|| needs.clone());
                        let fresh = !model.contains_key(&k);
                        prop_assert_eq!(q.insert(k, n.clone()), fresh);
                        if fresh {
                            model.insert(k, n);
                        }
                    }
                    Op::Remove(p, id) => {
                        let k = key(p, id % (next + 1));
                        prop_assert_eq!(q.remove(&k), model.remove(&k).is_some());
                    }
                    Op::PopFirst => {
                        prop_assert_eq!(q.first(), model.keys().next().copied());
                        q.pop_first();
                        model.pop_first();
                    }
                }
                q.check().map_err(TestCaseError::fail)?;
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.keys().collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());
                for (k, n) in &model {
                    prop_assert_eq!(q.get(k), Some(n));
                }
                prop_assert!(!q.contains(&key(7, next + 1)));
            }
        }
    }

    #[test]
    fn tasks_leaving_from_the_middle_are_swept() {
        // Goal: marks left by tasks leaving from the middle do not pile up.
        let mut q = Queue::default();
        for id in 1..=1000 {
            assert!(q.insert(key(0, id), None));
        }
        for id in (2..1000).filter(|id| id % 10 != 0) {
            assert!(q.remove(&key(0, id)));
        }
        q.check().unwrap();
        assert_eq!(q.len(), 101);
        assert!(
            q.run.len() <= 2 * q.len() + 33,
            "{} entries kept",
            q.run.len()
        );
        assert_eq!(q.first(), Some(key(0, 1)));
    }
}
