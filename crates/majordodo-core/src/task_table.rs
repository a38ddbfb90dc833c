//! The tasks by id. Ids are handed out in sequence, so tasks live in chunks of consecutive ids:
//! finding one costs a search among the chunks (a small tree, one entry per [`CHUNK`] ids, that
//! stays in cache) and an index, and tasks of neighbouring ids sit side by side, which is what
//! scheduling touches (the oldest tasks of each tenant). A chunk goes when its last task does,
//! so ids far apart (a task kept for days among millions purged) cost one chunk each, never the
//! ids between them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{Task, TaskId};

/// Consecutive ids per chunk.
const CHUNK: u64 = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Chunk {
    /// Tasks present.
    live: u32,
    /// By id modulo [`CHUNK`].
    slots: [Option<Arc<Task>>; CHUNK as usize],
}

impl Chunk {
    fn new() -> Box<Chunk> {
        Box::new(Chunk {
            live: 0,
            slots: std::array::from_fn(|_| None),
        })
    }
}

fn place(id: TaskId) -> (u64, usize) {
    (id.0 / CHUNK, (id.0 % CHUNK) as usize)
}

/// Tasks by id, iterated in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskTable {
    chunks: BTreeMap<u64, Box<Chunk>>,
    len: usize,
}

impl TaskTable {
    pub(crate) fn new() -> TaskTable {
        TaskTable::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn get(&self, id: &TaskId) -> Option<&Arc<Task>> {
        let (chunk, slot) = place(*id);
        self.chunks.get(&chunk)?.slots[slot].as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Arc<Task>> {
        let (chunk, slot) = place(*id);
        self.chunks.get_mut(&chunk)?.slots[slot].as_mut()
    }

    pub(crate) fn contains_key(&self, id: &TaskId) -> bool {
        self.get(id).is_some()
    }

    /// Puts `task` at `id`; returns the task it replaces.
    pub(crate) fn insert(&mut self, id: TaskId, task: Arc<Task>) -> Option<Arc<Task>> {
        let (chunk, slot) = place(id);
        let chunk = self.chunks.entry(chunk).or_insert_with(Chunk::new);
        let old = chunk.slots[slot].replace(task);
        if old.is_none() {
            chunk.live += 1;
            self.len += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, id: &TaskId) -> Option<Arc<Task>> {
        let (at, slot) = place(*id);
        let chunk = self.chunks.get_mut(&at)?;
        let old = chunk.slots[slot].take()?;
        chunk.live -= 1;
        self.len -= 1;
        if chunk.live == 0 {
            self.chunks.remove(&at);
        }
        Some(old)
    }

    /// Every task, in id order.
    pub(crate) fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<Task>> + '_ {
        self.chunks.values().flat_map(|c| c.slots.iter().flatten())
    }

    /// Tasks with id ≥ `from`, in id order.
    pub(crate) fn from(&self, from: TaskId) -> impl Iterator<Item = &Arc<Task>> + '_ {
        let (chunk, _) = place(from);
        self.chunks
            .range(chunk..)
            .flat_map(|(_, c)| c.slots.iter().flatten())
            .filter(move |t| t.id >= from)
    }
}

impl std::ops::Index<&TaskId> for TaskTable {
    type Output = Arc<Task>;

    fn index(&self, id: &TaskId) -> &Arc<Task> {
        self.get(id).expect("no task with this id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn task(id: u64) -> Arc<Task> {
        Arc::new(Task {
            id: TaskId(id),
            task_type: "t".into(),
            user_id: "u".into(),
            data: format!("{id}").into(),
            status: crate::model::TaskStatus::Waiting,
            priority: 0,
            attempts: 0,
            max_attempts: 1,
            result: None,
            worker_id: None,
            created: 1,
            deadline: 0,
            requested_start_time: 0,
            extra: None,
            slot_hash: 0,
            holds_pool: false,
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        From(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Ids in a few clusters, some far apart, as sequences and purges make them.
        let id = prop_oneof![
            0u64..300,
            10_000u64..10_200,
            Just(u64::MAX),
            Just(u64::MAX - 70)
        ];
        prop_oneof![
            3 => id.clone().prop_map(Op::Insert),
            2 => id.clone().prop_map(Op::Remove),
            1 => id.prop_map(Op::From),
        ]
    }

    proptest! {
        /// The table behaves as an ordered map of id to task, and keeps no empty chunk.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 0..400)) {
            let mut table = TaskTable::new();
            let mut model: BTreeMap<TaskId, Arc<Task>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(id) => {
                        let t = task(id);
                        prop_assert_eq!(
                            table.insert(TaskId(id), t.clone()).map(|t| t.id),
                            model.insert(TaskId(id), t).map(|t| t.id)
                        );
                    }
                    Op::Remove(id) => prop_assert_eq!(
                        table.remove(&TaskId(id)).map(|t| t.id),
                        model.remove(&TaskId(id)).map(|t| t.id)
                    ),
                    Op::From(id) => {
                        let got: Vec<TaskId> = table.from(TaskId(id)).map(|t| t.id).collect();
                        let want: Vec<TaskId> = model.range(TaskId(id)..).map(|(i, _)| *i).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(table.is_empty(), model.is_empty());
                prop_assert!(table.chunks.values().all(|c| c.live > 0));
            }
            let got: Vec<TaskId> = table.values().map(|t| t.id).collect();
            let want: Vec<TaskId> = model.keys().copied().collect();
            prop_assert_eq!(&got, &want);
            let back: Vec<TaskId> = table.values().rev().map(|t| t.id).collect();
            prop_assert_eq!(back, want.iter().rev().copied().collect::<Vec<_>>());
            for (id, t) in &model {
                prop_assert_eq!(&table[id].data, &t.data);
                prop_assert!(table.contains_key(id));
            }
        }
    }
}
