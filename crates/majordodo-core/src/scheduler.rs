//! Indexed scheduling: waiting tasks live in queues keyed by (group, task type), each in age order,
//! so choosing tasks for a worker costs about O(queues + chosen × log) and does not grow with the
//! number of waiting tasks.
//!
//! Ordering, as in the original Majordodo: the worker's groups in its priority order, groups matched only through
//! group 0 ("any group") last; inside one tier the oldest task first (task ids grow with age, and a
//! retried task keeps its id, so it goes back to its place at the front).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use crate::model::{ANY_GROUP, ANY_TASK_TYPE, GroupId, TaskId};

/// What a worker can run at once, as it declared it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCapacity {
    /// Total concurrent tasks.
    pub max_threads: u32,
    /// Concurrent tasks per task type. The key [`ANY_TASK_TYPE`] limits every type without its own
    /// entry, counted together. Entries of 0 are ignored. An empty map means "any type, up to
    /// `max_threads`".
    pub max_threads_by_task_type: BTreeMap<String, u32>,
    /// Groups served, in priority order; [`ANY_GROUP`] (0) means every group not excluded, served
    /// after the listed ones.
    pub groups: Vec<GroupId>,
    /// Groups never served through [`ANY_GROUP`].
    pub excluded_groups: Vec<GroupId>,
}

impl WorkerCapacity {
    /// A capacity of `max_threads` for any type and any group.
    pub fn any(max_threads: u32) -> WorkerCapacity {
        WorkerCapacity {
            max_threads,
            max_threads_by_task_type: BTreeMap::new(),
            groups: vec![ANY_GROUP],
            excluded_groups: Vec::new(),
        }
    }
}

impl WorkerCapacity {
    /// Whether one more task of `task_type` in `group` fits, given what already runs on the
    /// worker (`running`, all sets counted together). The same rules as [`WaitingIndex::choose`].
    pub fn admits(&self, running: &[&RunningSet], task_type: &str, group: GroupId) -> bool {
        let busy: usize = running.iter().map(|r| r.len()).sum();
        if busy >= self.max_threads as usize {
            return false;
        }
        let listed = group != ANY_GROUP && self.groups.contains(&group);
        let through_any =
            self.groups.contains(&ANY_GROUP) && !self.excluded_groups.contains(&group);
        (listed || through_any) && TypeLimits::new(self, running).available(task_type)
    }
}

/// Tasks running (or being assigned) on one worker, counted by type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunningSet {
    tasks: HashSet<TaskId>,
    by_type: HashMap<Arc<str>, u32>,
}

impl RunningSet {
    /// Adds a task; returns false if it was already there.
    pub fn insert(&mut self, id: TaskId, task_type: &Arc<str>) -> bool {
        if !self.tasks.insert(id) {
            return false;
        }
        *self.by_type.entry(task_type.clone()).or_default() += 1;
        true
    }

    /// Removes a task; returns false if it was not there.
    pub fn remove(&mut self, id: TaskId, task_type: &str) -> bool {
        if !self.tasks.remove(&id) {
            return false;
        }
        if let Some(n) = self.by_type.get_mut(task_type) {
            *n -= 1;
            if *n == 0 {
                self.by_type.remove(task_type);
            }
        }
        true
    }

    /// Whether the task is in the set.
    pub fn contains(&self, id: TaskId) -> bool {
        self.tasks.contains(&id)
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there are no tasks.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Number of tasks of one type.
    pub fn count_of(&self, task_type: &str) -> u32 {
        self.by_type.get(task_type).copied().unwrap_or(0)
    }

    /// The tasks, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.tasks.iter().copied()
    }

    fn types(&self) -> impl Iterator<Item = (&Arc<str>, u32)> + '_ {
        self.by_type.iter().map(|(t, n)| (t, *n))
    }
}

/// A task picked for a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The task.
    pub id: TaskId,
    /// Its group.
    pub group: GroupId,
    /// Its type.
    pub task_type: Arc<str>,
}

/// Waiting tasks, indexed by group then task type, each queue in id (age) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitingIndex {
    groups: BTreeMap<GroupId, HashMap<Arc<str>, BTreeSet<TaskId>>>,
    len: usize,
}

impl WaitingIndex {
    /// Number of indexed tasks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no task is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a task; returns false if it was already indexed.
    pub fn insert(&mut self, group: GroupId, task_type: &Arc<str>, id: TaskId) -> bool {
        let queue = self
            .groups
            .entry(group)
            .or_default()
            .entry(task_type.clone())
            .or_default();
        let added = queue.insert(id);
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes a task; returns false if it was not indexed (removing twice is harmless).
    pub fn remove(&mut self, group: GroupId, task_type: &str, id: TaskId) -> bool {
        let Some(types) = self.groups.get_mut(&group) else {
            return false;
        };
        let Some(queue) = types.get_mut(task_type) else {
            return false;
        };
        let removed = queue.remove(&id);
        if removed {
            self.len -= 1;
            if queue.is_empty() {
                types.remove(task_type);
                if types.is_empty() {
                    self.groups.remove(&group);
                }
            }
        }
        removed
    }

    /// Whether a task is indexed.
    pub fn contains(&self, group: GroupId, task_type: &str, id: TaskId) -> bool {
        self.groups
            .get(&group)
            .and_then(|t| t.get(task_type))
            .is_some_and(|q| q.contains(&id))
    }

    /// Indexed tasks as (task id, group, task type), in group then type order (for views).
    pub fn iter(&self) -> impl Iterator<Item = (TaskId, GroupId, &Arc<str>)> + '_ {
        self.groups.iter().flat_map(|(g, types)| {
            types
                .iter()
                .flat_map(move |(t, q)| q.iter().map(move |id| (*id, *g, t)))
        })
    }

    /// Picks and removes up to `budget` tasks that `capacity` allows, given what already runs on
    /// the worker (`running`, all sets counted together), in priority order.
    pub fn choose(
        &mut self,
        capacity: &WorkerCapacity,
        running: &[&RunningSet],
        budget: usize,
    ) -> Vec<Chosen> {
        let mut chosen = Vec::new();
        let running_total: usize = running.iter().map(|r| r.len()).sum();
        let mut free = (capacity.max_threads as usize)
            .saturating_sub(running_total)
            .min(budget);
        if free == 0 || self.len == 0 {
            return chosen;
        }
        let mut limits = TypeLimits::new(capacity, running);
        if !limits.any_type_possible() {
            return chosen;
        }

        for tier in self.tiers(capacity) {
            if free == 0 {
                break;
            }
            // Heads of every eligible queue of this tier, oldest first.
            let mut heads: BinaryHeap<Reverse<(TaskId, GroupId, Arc<str>)>> = BinaryHeap::new();
            for group in &tier {
                if let Some(types) = self.groups.get(group) {
                    for (task_type, queue) in types {
                        if limits.available(task_type)
                            && let Some(first) = queue.first()
                        {
                            heads.push(Reverse((*first, *group, task_type.clone())));
                        }
                    }
                }
            }
            while free > 0 {
                let Some(Reverse((id, group, task_type))) = heads.pop() else {
                    break;
                };
                if !limits.available(&task_type) {
                    continue; // this type ran out while the tier was being served
                }
                let types = self
                    .groups
                    .get_mut(&group)
                    .expect("a queue in the heap belongs to an indexed group");
                let queue = types
                    .get_mut(&task_type)
                    .expect("a queue in the heap is indexed");
                let taken = queue.pop_first();
                debug_assert_eq!(taken, Some(id), "queue head moved under the chooser");
                self.len -= 1;
                if let Some(next) = queue.first() {
                    heads.push(Reverse((*next, group, task_type.clone())));
                } else {
                    types.remove(&task_type);
                    if types.is_empty() {
                        self.groups.remove(&group);
                    }
                }
                limits.take(&task_type);
                free -= 1;
                chosen.push(Chosen {
                    id,
                    group,
                    task_type,
                });
            }
        }
        chosen
    }

    /// The groups to serve, tier by tier: each listed group alone, in order, then every other
    /// non-excluded group together if the worker serves [`ANY_GROUP`].
    fn tiers(&self, capacity: &WorkerCapacity) -> Vec<Vec<GroupId>> {
        let mut tiers = Vec::new();
        let mut listed = Vec::new();
        for &g in &capacity.groups {
            if g != ANY_GROUP && !listed.contains(&g) {
                listed.push(g);
                tiers.push(vec![g]);
            }
        }
        if capacity.groups.contains(&ANY_GROUP) {
            let rest: Vec<GroupId> = self
                .groups
                .keys()
                .copied()
                .filter(|g| !listed.contains(g) && !capacity.excluded_groups.contains(g))
                .collect();
            if !rest.is_empty() {
                tiers.push(rest);
            }
        }
        tiers
    }
}

/// Remaining room per task type for one choice.
struct TypeLimits {
    /// Remaining room of each type with its own entry.
    explicit: HashMap<String, u32>,
    /// Remaining room shared by every other type, if the worker accepts other types.
    any: Option<u32>,
}

impl TypeLimits {
    fn new(capacity: &WorkerCapacity, running: &[&RunningSet]) -> TypeLimits {
        let positive: Vec<(&String, u32)> = capacity
            .max_threads_by_task_type
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t, *n))
            .collect();
        let mut explicit = HashMap::new();
        let mut any_limit = if positive.is_empty() {
            Some(capacity.max_threads)
        } else {
            None
        };
        for (task_type, limit) in positive {
            if task_type == ANY_TASK_TYPE {
                any_limit = Some(limit);
            } else {
                let busy: u32 = running.iter().map(|r| r.count_of(task_type)).sum();
                explicit.insert(task_type.clone(), limit.saturating_sub(busy));
            }
        }
        let any = any_limit.map(|limit| {
            let busy: u32 = running
                .iter()
                .flat_map(|r| r.types())
                .filter(|(t, _)| !explicit.contains_key(&***t))
                .map(|(_, n)| n)
                .sum();
            limit.saturating_sub(busy)
        });
        TypeLimits { explicit, any }
    }

    fn any_type_possible(&self) -> bool {
        self.any.is_some_and(|n| n > 0) || self.explicit.values().any(|n| *n > 0)
    }

    fn available(&self, task_type: &str) -> bool {
        match self.explicit.get(task_type) {
            Some(n) => *n > 0,
            None => self.any.is_some_and(|n| n > 0),
        }
    }

    fn take(&mut self, task_type: &str) {
        match self.explicit.get_mut(task_type) {
            Some(n) => *n -= 1,
            None => {
                if let Some(n) = self.any.as_mut() {
                    *n -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn cap(max: u32, types: &[(&str, u32)], groups: &[GroupId]) -> WorkerCapacity {
        WorkerCapacity {
            max_threads: max,
            max_threads_by_task_type: types.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            groups: groups.to_vec(),
            excluded_groups: vec![],
        }
    }

    fn ids(chosen: &[Chosen]) -> Vec<u64> {
        chosen.iter().map(|c| c.id.0).collect()
    }

    #[test]
    fn oldest_tasks_come_first_within_a_group() {
        // Goal: inside one group tasks are chosen in id (age) order across task types.
        let mut idx = WaitingIndex::default();
        idx.insert(1, &t("a"), TaskId(3));
        idx.insert(1, &t("b"), TaskId(1));
        idx.insert(1, &t("a"), TaskId(2));
        let got = idx.choose(&WorkerCapacity::any(10), &[], 10);
        assert_eq!(ids(&got), vec![1, 2, 3]);
        assert!(idx.is_empty());
    }

    #[test]
    fn max_threads_counts_running_tasks() {
        // Goal: a worker never gets more than max_threads minus what it already runs.
        let mut idx = WaitingIndex::default();
        for i in 1..=10 {
            idx.insert(1, &t("a"), TaskId(i));
        }
        let mut running = RunningSet::default();
        running.insert(TaskId(100), &t("a"));
        running.insert(TaskId(101), &t("z"));
        let got = idx.choose(&WorkerCapacity::any(5), &[&running], 100);
        assert_eq!(ids(&got), vec![1, 2, 3]);
        assert_eq!(idx.len(), 7);
    }

    #[test]
    fn per_type_limit_and_any_bucket_are_respected() {
        // Goal: explicit type limits count running tasks of that type; `any` caps the other types
        // together; a type with no entry and no `any` is never chosen.
        let mut idx = WaitingIndex::default();
        for i in 1..=5 {
            idx.insert(1, &t("mail"), TaskId(i));
            idx.insert(1, &t("batch"), TaskId(10 + i));
            idx.insert(1, &t("other"), TaskId(20 + i));
        }
        let mut running = RunningSet::default();
        running.insert(TaskId(100), &t("mail"));
        let c = cap(100, &[("mail", 3), ("any", 2)], &[0]);
        let got = idx.choose(&c, &[&running], 100);
        let mails = got.iter().filter(|c| &*c.task_type == "mail").count();
        let others = got.iter().filter(|c| &*c.task_type != "mail").count();
        assert_eq!(mails, 2, "3 allowed, 1 already running");
        assert_eq!(others, 2, "any = 2 for batch and other together");

        let mut idx = WaitingIndex::default();
        idx.insert(1, &t("other"), TaskId(1));
        let c = cap(100, &[("mail", 3)], &[0]);
        assert!(idx.choose(&c, &[], 100).is_empty());
    }

    #[test]
    fn zero_entries_are_ignored_and_empty_map_means_any() {
        // Goal: entries of 0 do not forbid a type; an empty map accepts every type.
        let mut idx = WaitingIndex::default();
        idx.insert(1, &t("x"), TaskId(1));
        let c = cap(4, &[("x", 0), ("any", 1)], &[0]);
        assert_eq!(ids(&idx.choose(&c, &[], 10)), vec![1]);
        idx.insert(1, &t("y"), TaskId(2));
        let c = cap(4, &[], &[0]);
        assert_eq!(ids(&idx.choose(&c, &[], 10)), vec![2]);
    }

    #[test]
    fn listed_groups_come_first_in_priority_order() {
        // Goal: groups are served in the worker's order, groups reached through 0 last, excluded
        // groups never through 0.
        let mut idx = WaitingIndex::default();
        idx.insert(7, &t("a"), TaskId(1));
        idx.insert(2, &t("a"), TaskId(2));
        idx.insert(3, &t("a"), TaskId(3));
        idx.insert(9, &t("a"), TaskId(4));
        let mut c = cap(10, &[], &[3, 2, 0]);
        c.excluded_groups = vec![9];
        let got = idx.choose(&c, &[], 10);
        assert_eq!(ids(&got), vec![3, 2, 1]);
        assert_eq!(idx.len(), 1);

        let c = cap(10, &[], &[2]);
        let mut idx2 = WaitingIndex::default();
        idx2.insert(1, &t("a"), TaskId(1));
        assert!(idx2.choose(&c, &[], 10).is_empty(), "group 1 not served");
    }

    #[test]
    fn budget_caps_one_choice() {
        // Goal: a choice never exceeds its budget even with more room.
        let mut idx = WaitingIndex::default();
        for i in 1..=10 {
            idx.insert(1, &t("a"), TaskId(i));
        }
        assert_eq!(idx.choose(&WorkerCapacity::any(10), &[], 4).len(), 4);
        assert_eq!(idx.len(), 6);
    }

    #[test]
    fn remove_is_idempotent_and_cleans_empty_queues() {
        // Goal: removing twice is harmless and empty queues do not linger.
        let mut idx = WaitingIndex::default();
        idx.insert(1, &t("a"), TaskId(1));
        assert!(idx.remove(1, "a", TaskId(1)));
        assert!(!idx.remove(1, "a", TaskId(1)));
        assert!(idx.groups.is_empty());
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn admits_agrees_with_choose() {
        // Goal: `admits` says yes exactly when `choose` would pick a lone task.
        let mut running = RunningSet::default();
        running.insert(TaskId(100), &t("a"));
        let caps = [
            cap(1, &[], &[0]),
            cap(2, &[], &[0]),
            cap(2, &[("a", 1)], &[0]),
            cap(2, &[("a", 2)], &[0]),
            cap(3, &[("a", 1), ("any", 1)], &[0]),
            cap(3, &[], &[2]),
            cap(3, &[], &[1]),
        ];
        for c in caps {
            for (task_type, group) in [("a", 1), ("b", 1), ("a", 2), ("b", 3)] {
                let mut idx = WaitingIndex::default();
                idx.insert(group, &t(task_type), TaskId(1));
                let chosen = !idx.choose(&c, &[&running], 10).is_empty();
                assert_eq!(
                    c.admits(&[&running], task_type, group),
                    chosen,
                    "{c:?} {task_type} {group}"
                );
            }
        }
    }

    #[test]
    fn running_set_counts_by_type() {
        // Goal: counts follow inserts and removes.
        let mut r = RunningSet::default();
        assert!(r.insert(TaskId(1), &t("a")));
        assert!(!r.insert(TaskId(1), &t("a")));
        r.insert(TaskId(2), &t("a"));
        assert_eq!(r.count_of("a"), 2);
        assert!(r.remove(TaskId(1), "a"));
        assert!(!r.remove(TaskId(1), "a"));
        assert_eq!(r.count_of("a"), 1);
        assert_eq!(r.len(), 1);
    }
}
