//! Busy slots and their holders.
//!
//! A slot is looked up by name when a task asks for it, and freed when its holder ends. The
//! holder knows its slot's hash (kept in the task record, see [`crate::model::Task`]), so the
//! free at a task's end finds the entry by that hash and the holder's id alone: it reads neither
//! the slot's name nor the task's rarely used fields, which on a busy broker are cold in the
//! cache (each ending task would otherwise cost a miss for the name and another for the entry).

use std::fmt;
use std::hash::BuildHasher;

use compact_str::CompactString;
use hashbrown::HashTable;

use crate::model::TaskId;

/// A slot's hash as the table uses it: never 0, so that 0 can mean "no slot".
pub(crate) type SlotHash = u64;

/// Busy slots by name, each with its holder.
#[derive(Clone, Default)]
pub(crate) struct SlotTable {
    table: HashTable<(CompactString, TaskId)>,
    hasher: foldhash::fast::RandomState,
}

impl SlotTable {
    /// The hash of `slot` in this table (never 0).
    pub(crate) fn hash(&self, slot: &str) -> SlotHash {
        self.hasher.hash_one(slot).max(1)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The holder of `slot`, if it is busy.
    pub(crate) fn get(&self, slot: &str) -> Option<TaskId> {
        self.table
            .find(self.hash(slot), |(name, _)| name == slot)
            .map(|(_, holder)| *holder)
    }

    /// Makes `holder` hold `slot` (replacing any holder); returns the slot's hash.
    pub(crate) fn insert(&mut self, slot: &str, holder: TaskId) -> SlotHash {
        let hash = self.hash(slot);
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |(name, _)| name == slot,
            |(name, _)| hasher.hash_one(name.as_str()).max(1),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = holder,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((slot.into(), holder));
            }
        }
        hash
    }

    /// Frees `slot` if `holder` holds it.
    pub(crate) fn free(&mut self, slot: &str, holder: TaskId) {
        if let Ok(e) = self
            .table
            .find_entry(self.hash(slot), |(name, h)| *h == holder && name == slot)
        {
            e.remove();
        }
    }

    /// Frees the slot of hash `hash` that `holder` holds, if it holds one of that hash. A task
    /// holds at most one slot, so the hash and the holder name the entry without its name.
    pub(crate) fn free_held(&mut self, hash: SlotHash, holder: TaskId) {
        if let Ok(e) = self.table.find_entry(hash, |(_, h)| *h == holder) {
            e.remove();
        }
    }

    /// Every busy slot with its holder, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, TaskId)> + '_ {
        self.table
            .iter()
            .map(|(name, holder)| (name.as_str(), *holder))
    }
}

impl PartialEq for SlotTable {
    /// Equal when the same slots are busy with the same holders (the hash seeds may differ).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(s, h)| other.get(s) == Some(h))
    }
}

impl Eq for SlotTable {}

impl fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_held_replaced_and_freed_by_name_or_by_hash_and_holder() {
        let mut t = SlotTable::default();
        let h1 = t.insert("a", TaskId(1));
        t.insert("b", TaskId(2));
        assert_ne!(h1, 0);
        assert_eq!(h1, t.hash("a"));
        assert_eq!(
            (t.get("a"), t.get("b"), t.get("c")),
            (Some(TaskId(1)), Some(TaskId(2)), None)
        );
        // Only the holder frees a slot, by name or by hash.
        t.free("a", TaskId(2));
        t.free_held(h1, TaskId(2));
        assert_eq!(t.get("a"), Some(TaskId(1)));
        t.free_held(h1, TaskId(1));
        assert_eq!(t.get("a"), None);
        t.free("b", TaskId(2));
        assert_eq!(t.len(), 0);
        // A slot taken again gets the same hash; a new holder replaces the old one.
        assert_eq!(t.insert("a", TaskId(3)), h1);
        t.insert("a", TaskId(4));
        assert_eq!((t.get("a"), t.len()), (Some(TaskId(4)), 1));
    }

    #[test]
    fn many_slots_survive_growth_and_equality_ignores_the_seed() {
        let (mut a, mut b) = (SlotTable::default(), SlotTable::default());
        let mut hashes = Vec::new();
        for i in 0..5_000_u64 {
            hashes.push(a.insert(&format!("slot-{i}"), TaskId(i)));
            b.insert(&format!("slot-{i}"), TaskId(i));
        }
        assert_eq!(a, b);
        for (i, h) in hashes.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            a.free_held(*h, TaskId(i as u64));
        }
        assert_eq!(a.len(), 2_500);
        assert_ne!(a, b);
        for i in (0..5_000_u64).filter(|i| i % 2 == 0) {
            b.free(&format!("slot-{i}"), TaskId(i));
        }
        assert_eq!(a, b);
        assert_eq!(a.get("slot-1"), Some(TaskId(1)));
        assert_eq!(a.get("slot-2"), None);
    }
}
