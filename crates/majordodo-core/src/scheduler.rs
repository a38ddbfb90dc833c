//! Indexed scheduling: waiting tasks live in queues keyed by tenant (user) and task type, tenants
//! grouped by their group, so choosing tasks for a worker costs about
//! O(queues + chosen × log) and does not grow with the number of waiting tasks.
//!
//! Ordering, as in the original Majordodo: the worker's groups in its priority order, groups
//! matched only through group 0 ("any group") last. Inside one tier, tenants take turns by the
//! age of the task each would give next (task ids grow with age, and a retried task keeps its
//! id, so it goes back to its place at the front); inside a tenant, higher task priority first,
//! then age.
//!
//! Fair share: inside a tier, the next task goes to the tenant with the fewest running tasks
//! (cluster-wide, assignments in flight included) relative to its weight, the age of its next
//! task breaking ties. It is work-conserving: a tenant alone in a tier gets every free thread,
//! and a tenant that starts submitting gets the next free threads until its share is reached.
//!
//! Limits are counters checked per candidate: the worker's total and per-type threads, its
//! per-user share of each task type, its named-resource limits and the global resource limits,
//! the worker's amounts (cpu, memory, named) against the task's needs, and the quotas of the
//! task's owner and group. A queue (or a tenant) that hits a limit is dropped for the rest of
//! the choice, since a choice only consumes room.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::HashMap;
use std::sync::Arc;

use crate::model::{ANY_GROUP, ANY_TASK_TYPE, GroupId, TaskId};
use crate::quota::{Needs, Quotas, TenantBook, Usage};

mod queue;
use queue::Queue;

/// The resources a task uses while it runs, shared by every task of a tenant.
pub type Resources = Arc<[Arc<str>]>;

/// What a worker can run at once, as it declared it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// Most tasks of one task type one user may run on this worker, in percent of that type's
    /// limit (its own entry, else `any`, else `max_threads`), at least 1; 0 = no per-user share.
    pub max_thread_per_user_per_task_type_percent: u32,
    /// Named resource → most tasks using it that may run at once on this worker.
    pub resource_limits: BTreeMap<String, u32>,
    /// What the worker has per dimension (`cpu` in millicores, `memory` in MiB, named
    /// amounts): the needs of the tasks running on it never add up beyond these. A task needing
    /// a dimension the worker does not declare does not run on it.
    pub amounts: BTreeMap<String, u64>,
    /// How the worker enforces declared cpu and memory, as it states it (shown, never decided
    /// on).
    pub enforcement: String,
}

impl WorkerCapacity {
    /// A capacity of `max_threads` for any type and any group.
    pub fn any(max_threads: u32) -> WorkerCapacity {
        WorkerCapacity {
            max_threads,
            groups: vec![ANY_GROUP],
            ..WorkerCapacity::default()
        }
    }

    /// Whether the worker serves `group` at all.
    pub fn serves(&self, group: GroupId) -> bool {
        let listed = group != ANY_GROUP && self.groups.contains(&group);
        let through_any =
            self.groups.contains(&ANY_GROUP) && !self.excluded_groups.contains(&group);
        listed || through_any
    }

    /// The configured limit of a task type on this worker (its own entry, else `any`, else
    /// `max_threads`), or None when the worker does not run the type.
    pub fn type_limit(&self, task_type: &str) -> Option<u32> {
        let positive = |t: &str| {
            self.max_threads_by_task_type
                .get(t)
                .copied()
                .filter(|n| *n > 0)
        };
        if let Some(n) = positive(task_type) {
            return Some(n);
        }
        if let Some(n) = positive(ANY_TASK_TYPE) {
            return Some(n);
        }
        if self.max_threads_by_task_type.values().any(|n| *n > 0) {
            None
        } else {
            Some(self.max_threads)
        }
    }

    /// The most tasks of `task_type` one user may run here (None: no per-user share).
    pub fn user_share(&self, task_type: &str) -> Option<u32> {
        let pct = self.max_thread_per_user_per_task_type_percent;
        if pct == 0 {
            return None;
        }
        let limit = self.type_limit(task_type)?;
        Some(((u64::from(limit) * u64::from(pct.min(100))) / 100).max(1) as u32)
    }

    /// Whether one more task fits, given what already runs on the worker (`running`, all sets
    /// counted together) and the global resource use. The same rules as [`WaitingIndex::choose`].
    pub fn admits(
        &self,
        running: &[&RunningSet],
        global: &GlobalResources<'_>,
        task: &Candidate<'_>,
    ) -> bool {
        if !self.serves(task.group) {
            return false;
        }
        let mut room = Room::new(self, running, global);
        room.fits(task) == Fit::Yes
    }

    /// Whether the worker has enough of every dimension `needs` names, with nothing running.
    pub fn could_hold(&self, needs: &[(Arc<str>, u64)]) -> bool {
        needs
            .iter()
            .all(|(d, n)| self.amounts.get(&**d).is_some_and(|have| have >= n))
    }
}

/// What [`WorkerCapacity::admits`] asks about one task.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The tenant's group.
    pub group: GroupId,
    /// The owner.
    pub user: &'a str,
    /// The type.
    pub task_type: &'a str,
    /// The resources it would use.
    pub resources: &'a [Arc<str>],
    /// What it needs (cpu, memory, named amounts).
    pub needs: &'a [(Arc<str>, u64)],
}

/// Cluster-wide limits and use: global resource limits (broker configuration) and tenants'
/// quotas, with the use charged against them (running tasks plus assignments in flight).
#[derive(Clone, Copy, Debug)]
pub struct GlobalResources<'a> {
    /// Resource → most tasks using it at once in the whole cluster.
    pub limits: &'a BTreeMap<String, u32>,
    /// Use now, summed over the maps.
    pub used: &'a [&'a HashMap<Arc<str>, u32>],
    /// Quotas of users and groups.
    pub quotas: &'a Quotas,
    /// Tenants' use now (running tasks, assignments in flight), summed over the books; also
    /// what fair share counts.
    pub tenants: &'a [&'a TenantBook],
}

impl GlobalResources<'_> {
    /// No global limit, no quota, nothing running elsewhere.
    pub const NONE: GlobalResources<'static> = GlobalResources {
        limits: &EMPTY_LIMITS,
        used: &[],
        quotas: &NO_QUOTAS,
        tenants: &[],
    };

    fn user_use(&self, user: &str, dimension: &str) -> u64 {
        self.tenants
            .iter()
            .map(|b| b.user(user).map_or(0, |u| u.get(dimension)))
            .sum()
    }

    fn used(&self, resource: &str) -> u32 {
        self.used
            .iter()
            .map(|m| m.get(resource).copied().unwrap_or(0))
            .sum()
    }
}

static EMPTY_LIMITS: BTreeMap<String, u32> = BTreeMap::new();
static NO_QUOTAS: Quotas = Quotas {
    users: BTreeMap::new(),
    groups: BTreeMap::new(),
};

/// What a running task counts against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunKey {
    /// Its type.
    pub task_type: Arc<str>,
    /// Its owner.
    pub user: Arc<str>,
    /// The resources charged to it.
    pub resources: Resources,
    /// What it needs (None: nothing declared).
    pub needs: Option<Needs>,
}

impl RunKey {
    /// What it needs (empty: nothing declared).
    pub fn needs(&self) -> &[(Arc<str>, u64)] {
        self.needs.as_deref().unwrap_or(&[])
    }
}

/// Tasks running (or being assigned) on one worker, counted by type, by (user, type) and by
/// resource. Counters are only changed together with the task set, so they always equal the sums
/// over its tasks and never go below zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunningSet {
    tasks: HashMap<TaskId, RunKey>,
    by_type: HashMap<Arc<str>, u32>,
    by_user_type: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    by_resource: HashMap<Arc<str>, u32>,
    /// Sorted by dimension (few: a worker declares at most a few dozen).
    by_amount: Vec<(Arc<str>, u64)>,
}

/// Adds `n` to a counter; the key is copied only when the counter is new.
pub(crate) fn add_to<N: std::ops::AddAssign>(map: &mut HashMap<Arc<str>, N>, key: &Arc<str>, n: N) {
    match map.get_mut(&**key) {
        Some(count) => *count += n,
        None => {
            map.insert(key.clone(), n);
        }
    }
}

fn incr(map: &mut HashMap<Arc<str>, u32>, key: &Arc<str>) {
    add_to(map, key, 1);
}

fn decr(map: &mut HashMap<Arc<str>, u32>, key: &str) {
    let n = map
        .get_mut(key)
        .expect("a counter is charged before it is released");
    *n -= 1;
    if *n == 0 {
        map.remove(key);
    }
}

impl RunningSet {
    /// Adds a task; returns false if it was already there.
    pub fn insert(&mut self, id: TaskId, key: RunKey) -> bool {
        if self.tasks.contains_key(&id) {
            return false;
        }
        incr(&mut self.by_type, &key.task_type);
        match self.by_user_type.get_mut(&*key.user) {
            Some(per_type) => incr(per_type, &key.task_type),
            None => {
                let mut per_type = HashMap::default();
                incr(&mut per_type, &key.task_type);
                self.by_user_type.insert(key.user.clone(), per_type);
            }
        }
        for r in key.resources.iter() {
            incr(&mut self.by_resource, r);
        }
        for (d, n) in key.needs() {
            crate::quota::add_amount(&mut self.by_amount, d, *n);
        }
        self.tasks.insert(id, key);
        true
    }

    /// Removes a task; returns what it counted against, or None if it was not there.
    pub fn remove(&mut self, id: TaskId) -> Option<RunKey> {
        let key = self.tasks.remove(&id)?;
        decr(&mut self.by_type, &key.task_type);
        let per_type = self
            .by_user_type
            .get_mut(&key.user)
            .expect("a counter is charged before it is released");
        decr(per_type, &key.task_type);
        if per_type.is_empty() {
            self.by_user_type.remove(&key.user);
        }
        for r in key.resources.iter() {
            decr(&mut self.by_resource, r);
        }
        for (d, n) in key.needs() {
            crate::quota::sub_amount(
                &mut self.by_amount,
                d,
                *n,
                "a counter is charged before it is released",
            );
        }
        Some(key)
    }

    /// Whether the task is in the set.
    pub fn contains(&self, id: TaskId) -> bool {
        self.tasks.contains_key(&id)
    }

    /// What a task counts against, if it is in the set.
    pub fn key(&self, id: TaskId) -> Option<&RunKey> {
        self.tasks.get(&id)
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

    /// Number of tasks of one type owned by one user.
    pub fn count_of_user(&self, user: &str, task_type: &str) -> u32 {
        self.by_user_type
            .get(user)
            .and_then(|m| m.get(task_type))
            .copied()
            .unwrap_or(0)
    }

    /// Number of tasks using a resource.
    pub fn count_of_resource(&self, resource: &str) -> u32 {
        self.by_resource.get(resource).copied().unwrap_or(0)
    }

    /// The running tasks' needs summed in one dimension.
    pub fn amount_of(&self, dimension: &str) -> u64 {
        crate::quota::amount_in(&self.by_amount, dimension)
    }

    /// The running tasks' needs summed per dimension.
    pub fn amounts(&self) -> impl Iterator<Item = (&Arc<str>, u64)> + '_ {
        self.by_amount.iter().map(|(d, n)| (d, *n))
    }

    /// Tasks per resource.
    pub fn resources(&self) -> impl Iterator<Item = (&Arc<str>, u32)> + '_ {
        self.by_resource.iter().map(|(r, n)| (r, *n))
    }

    /// The tasks, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.tasks.keys().copied()
    }

    /// Tasks with what they count against, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (TaskId, &RunKey)> + '_ {
        self.tasks.iter().map(|(id, k)| (*id, k))
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
    /// Its owner.
    pub user: Arc<str>,
    /// Its type.
    pub task_type: Arc<str>,
    /// The resources charged to this execution (the owner's at the time of the choice).
    pub resources: Resources,
    /// What it needs.
    pub needs: Option<Needs>,
}

/// Order of a task inside its tenant's queue: higher priority first, then older.
pub type QueueKey = (Reverse<i32>, TaskId);

/// The heads of one tenant's queues during a choice, best first, with their task type.
type QueueHeads = BinaryHeap<Reverse<(QueueKey, Arc<str>)>>;

/// The waiting tasks of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tenant {
    group: GroupId,
    resources: Resources,
    weight: u32,
    /// Per task type, the waiting tasks in order, each with its needs.
    queues: BTreeMap<Arc<str>, Queue>,
}

/// Waiting tasks, indexed by tenant then task type (each queue in priority then age order), with
/// the tenants of each group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitingIndex {
    tenants: HashMap<Arc<str>, Tenant>,
    groups: BTreeMap<GroupId, BTreeSet<Arc<str>>>,
    len: usize,
}

/// A task as the waiting index holds it.
#[derive(Clone, Copy, Debug)]
pub struct Queued<'a> {
    /// The tenant's group and resources, as the state computes them now.
    pub group: GroupId,
    /// The tenant's resources.
    pub resources: &'a Resources,
    /// The owner.
    pub user: &'a Arc<str>,
    /// The type.
    pub task_type: &'a Arc<str>,
    /// Its priority.
    pub priority: i32,
    /// The task.
    pub id: TaskId,
    /// The tenant's weight in fair share (at least 1).
    pub weight: u32,
    /// What it needs.
    pub needs: Option<&'a Needs>,
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

    /// Adds a task; returns false if it was already indexed. The tenant's group and resources are
    /// updated to those given (they are the same for every task of a tenant).
    pub fn insert(&mut self, q: Queued<'_>) -> bool {
        self.set_level(q.user, q.group, q.resources, q.weight);
        let tenant = self
            .tenants
            .entry(q.user.clone())
            .or_insert_with(|| Tenant {
                group: q.group,
                resources: q.resources.clone(),
                weight: q.weight.max(1),
                queues: BTreeMap::new(),
            });
        if tenant.queues.is_empty() {
            self.groups
                .entry(q.group)
                .or_default()
                .insert(q.user.clone());
        }
        let added = tenant
            .queues
            .entry(q.task_type.clone())
            .or_default()
            .insert((Reverse(q.priority), q.id), q.needs.cloned());
        if added {
            self.len += 1;
        }
        added
    }

    /// Changes the group and resources of a tenant's waiting tasks at once (a service-level
    /// change); nothing happens if the tenant has no waiting task.
    pub fn set_level(&mut self, user: &str, group: GroupId, resources: &Resources, weight: u32) {
        let Some(tenant) = self.tenants.get_mut(user) else {
            return;
        };
        tenant.resources = resources.clone();
        tenant.weight = weight.max(1);
        if tenant.group != group {
            let old = tenant.group;
            tenant.group = group;
            if let Some(users) = self.groups.get_mut(&old) {
                let (key, _) = self.tenants.get_key_value(user).expect("looked up above");
                users.remove(key);
                if users.is_empty() {
                    self.groups.remove(&old);
                }
                let key = key.clone();
                self.groups.entry(group).or_default().insert(key);
            }
        }
    }

    /// Removes a task; returns false if it was not indexed (removing twice is harmless).
    pub fn remove(&mut self, user: &str, task_type: &str, priority: i32, id: TaskId) -> bool {
        let Some(tenant) = self.tenants.get_mut(user) else {
            return false;
        };
        let Some(queue) = tenant.queues.get_mut(task_type) else {
            return false;
        };
        if !queue.remove(&(Reverse(priority), id)) {
            return false;
        }
        self.len -= 1;
        if queue.is_empty() {
            tenant.queues.remove(task_type);
            if tenant.queues.is_empty() {
                let group = tenant.group;
                self.drop_tenant(user, group);
            }
        }
        true
    }

    fn drop_tenant(&mut self, user: &str, group: GroupId) {
        self.tenants.remove(user);
        if let Some(users) = self.groups.get_mut(&group) {
            users.remove(user);
            if users.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    /// Checks every queue's layout, and that the queues hold `len` tasks with none empty.
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn check(&self) -> Result<(), String> {
        let mut total = 0;
        for (user, tenant) in &self.tenants {
            for (task_type, queue) in &tenant.queues {
                queue
                    .check()
                    .map_err(|e| format!("waiting queue of {user}, type {task_type}: {e}"))?;
                if queue.is_empty() {
                    return Err(format!(
                        "empty waiting queue of {user}, type {task_type} kept"
                    ));
                }
                total += queue.len();
            }
        }
        if total != self.len {
            return Err(format!(
                "waiting queues hold {total} tasks, the index counts {}",
                self.len
            ));
        }
        Ok(())
    }

    /// Whether a task is indexed.
    pub fn contains(&self, user: &str, task_type: &str, priority: i32, id: TaskId) -> bool {
        self.tenants
            .get(user)
            .and_then(|t| t.queues.get(task_type))
            .is_some_and(|q| q.contains(&(Reverse(priority), id)))
    }

    /// Tenants with waiting tasks, as (user, group, weight, waiting tasks), in no particular
    /// order.
    pub fn tenants(&self) -> impl Iterator<Item = (&Arc<str>, GroupId, u32, usize)> + '_ {
        self.tenants.iter().map(|(u, t)| {
            (
                u,
                t.group,
                t.weight,
                t.queues.values().map(Queue::len).sum(),
            )
        })
    }

    /// Every indexed task as (user, group, task type, priority, task id), tenant by tenant in no
    /// particular order, each queue in its order (for checks: no lookup per task).
    pub fn entries(
        &self,
    ) -> impl Iterator<Item = (&Arc<str>, GroupId, &Arc<str>, i32, TaskId)> + '_ {
        self.tenants.iter().flat_map(|(u, tenant)| {
            tenant.queues.iter().flat_map(move |(t, q)| {
                q.keys()
                    .map(move |(Reverse(priority), id)| (u, tenant.group, t, priority, id))
            })
        })
    }

    /// The group a tenant's waiting tasks are queued in, if it has any.
    pub fn group_of(&self, user: &str) -> Option<GroupId> {
        self.tenants.get(user).map(|t| t.group)
    }

    /// Indexed tasks as (task id, group, user, task type), group by group, tenant by tenant, each
    /// queue in its order (for views).
    pub fn iter(&self) -> impl Iterator<Item = (TaskId, GroupId, &Arc<str>, &Arc<str>)> + '_ {
        self.groups.iter().flat_map(move |(g, users)| {
            users.iter().flat_map(move |u| {
                let tenant = &self.tenants[u];
                tenant
                    .queues
                    .iter()
                    .flat_map(move |(t, q)| q.keys().map(move |(_, id)| (id, *g, u, t)))
            })
        })
    }

    /// Picks and removes up to `budget` tasks that `capacity` allows, given what already runs on
    /// the worker (`running`, all sets counted together) and the global resource use, in
    /// priority order.
    pub fn choose(
        &mut self,
        capacity: &WorkerCapacity,
        running: &[&RunningSet],
        global: &GlobalResources<'_>,
        budget: usize,
    ) -> Vec<Chosen> {
        let mut chosen = Vec::new();
        let running_total: usize = running.iter().map(|r| r.len()).sum();
        let free = (capacity.max_threads as usize)
            .saturating_sub(running_total)
            .min(budget);
        if free == 0 || self.len == 0 {
            return chosen;
        }
        let mut room = Room::new(capacity, running, global);
        if !room.types.any_type_possible() {
            return chosen;
        }
        room.free = free;

        for tier in self.tiers(capacity) {
            if room.free == 0 {
                break;
            }
            // Tenants of this tier by their share (running tasks over weight), then by the key of
            // the task each gives next; inside each tenant, its queues by their head.
            let mut tenants: BinaryHeap<Reverse<(u128, TaskId, Arc<str>)>> = BinaryHeap::new();
            let mut heads: HashMap<Arc<str>, QueueHeads> = HashMap::default();
            for group in &tier {
                let Some(users) = self.groups.get(group) else {
                    continue;
                };
                for user in users {
                    let tenant = &self.tenants[user];
                    let mut h = BinaryHeap::new();
                    for (task_type, queue) in &tenant.queues {
                        if room.types.available(task_type)
                            && let Some(first) = queue.first()
                        {
                            h.push(Reverse((first, task_type.clone())));
                        }
                    }
                    if let Some(Reverse(((_, id), _))) = h.peek() {
                        let share = room.share(user, tenant.weight);
                        tenants.push(Reverse((share, *id, user.clone())));
                        heads.insert(user.clone(), h);
                    }
                }
            }
            while room.free > 0 {
                let Some(Reverse((share, _, user))) = tenants.pop() else {
                    break;
                };
                let h = heads
                    .get_mut(&user)
                    .expect("every tenant in the heap has heads");
                let Some(Reverse((key, task_type))) = h.pop() else {
                    continue;
                };
                let tenant = self
                    .tenants
                    .get_mut(&user)
                    .expect("a tenant in the heap is indexed");
                let queue = tenant
                    .queues
                    .get_mut(&task_type)
                    .expect("a queue in the heap is indexed");
                let needs = queue
                    .get(&key)
                    .expect("queue head moved under the chooser")
                    .clone();
                let candidate = Candidate {
                    group: tenant.group,
                    user: &user,
                    task_type: &task_type,
                    resources: &tenant.resources,
                    needs: needs.as_deref().unwrap_or(&[]),
                };
                match room.fits(&candidate) {
                    Fit::Yes => {}
                    // This queue cannot take more in this choice; the tenant's other queues may.
                    Fit::NotThisQueue => {
                        if let Some(Reverse(((_, next), _))) = h.peek() {
                            tenants.push(Reverse((share, *next, user.clone())));
                        }
                        continue;
                    }
                    // Its resources or a quota are used up: none of its tasks fits in this
                    // choice.
                    Fit::NotThisTenant => continue,
                }
                let group = tenant.group;
                let weight = tenant.weight;
                let resources = tenant.resources.clone();
                queue.pop_first();
                self.len -= 1;
                if let Some(next) = queue.first() {
                    h.push(Reverse((next, task_type.clone())));
                } else {
                    tenant.queues.remove(&task_type);
                    if tenant.queues.is_empty() {
                        self.drop_tenant(&user, group);
                    }
                }
                room.take(&user, &task_type, group, &resources, needs.as_deref());
                if let Some(Reverse(((_, next), _))) = h.peek() {
                    tenants.push(Reverse((room.share(&user, weight), *next, user.clone())));
                }
                chosen.push(Chosen {
                    id: key.1,
                    group,
                    user,
                    task_type,
                    resources,
                    needs,
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

/// Whether a task fits the room left.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fit {
    Yes,
    /// The type or the user's share of it is used up.
    NotThisQueue,
    /// One of the tenant's resources, or its running tasks' quota, is used up.
    NotThisTenant,
}

/// Fair-share keys are running tasks × this / weight: exact for any two tenants with weights up
/// to [`MAX_WEIGHT`] (different shares differ by at least 1 / MAX_WEIGHT², far above one unit).
const SHARE_SCALE: u128 = 1 << 40;

/// Largest weight of a tenant in fair share.
pub const MAX_WEIGHT: u32 = 10_000;

/// The room left on one worker during one choice: every limit as a counter. Each counter is
/// found in the state once per choice, at the first candidate it concerns, and from then on kept
/// by [`Room::take`]; a choice only consumes room.
struct Room<'a> {
    capacity: &'a WorkerCapacity,
    running: &'a [&'a RunningSet],
    global: &'a GlobalResources<'a>,
    free: usize,
    types: TypeLimits,
    /// Per user seen in this choice.
    users: HashMap<Arc<str>, UserRoom>,
    /// Per group whose quota was checked in this choice: its use in the books plus what this
    /// choice took.
    groups: Vec<(GroupId, Usage)>,
    /// Per named resource seen in this choice.
    resources: Vec<ResourceRoom>,
    /// Per dimension needed in this choice: what is left of the worker's amount (running tasks'
    /// needs and this choice's taken off).
    amounts: Vec<(Arc<str>, u64)>,
}

/// One user's counters in a choice.
struct UserRoom {
    /// Its running tasks, cluster-wide (assignments in flight and this choice's included).
    running: u64,
    /// Its use in the books plus what this choice took: found at its first quota check.
    quota_use: Option<Usage>,
    /// Its tasks per type on this worker, this choice's included: found per type at the first
    /// check of its per-user share.
    by_type: Vec<(Arc<str>, u32)>,
}

/// One named resource's room in a choice (None: no limit).
struct ResourceRoom {
    name: Arc<str>,
    on_worker: Option<u32>,
    in_cluster: Option<u32>,
}

/// The entry of `key` in a short list searched by address first (names are interned), then by
/// text.
fn entry_of<T>(list: &[(Arc<str>, T)], key: &str) -> Option<usize> {
    list.iter()
        .position(|(k, _)| std::ptr::eq(k.as_ptr(), key.as_ptr()) && k.len() == key.len())
        .or_else(|| list.iter().position(|(k, _)| **k == *key))
}

impl<'a> Room<'a> {
    fn new(
        capacity: &'a WorkerCapacity,
        running: &'a [&'a RunningSet],
        global: &'a GlobalResources<'a>,
    ) -> Room<'a> {
        let busy: usize = running.iter().map(|r| r.len()).sum();
        Room {
            capacity,
            running,
            global,
            free: (capacity.max_threads as usize).saturating_sub(busy),
            types: TypeLimits::new(capacity, running),
            users: HashMap::default(),
            groups: Vec::new(),
            resources: Vec::new(),
            amounts: Vec::new(),
        }
    }

    /// The counters of `user`, found in the books at its first use in this choice.
    fn user(&mut self, user: &str) -> &mut UserRoom {
        if !self.users.contains_key(user) {
            let running = self.global.user_use(user, crate::quota::TASKS);
            self.users.insert(
                Arc::from(user),
                UserRoom {
                    running,
                    quota_use: None,
                    by_type: Vec::new(),
                },
            );
        }
        self.users.get_mut(user).expect("inserted above")
    }

    /// A tenant's fair-share key: its running tasks (cluster-wide, in flight and taken in this
    /// choice included) over its weight.
    fn share(&mut self, user: &str, weight: u32) -> u128 {
        let running = self.user(user).running;
        u128::from(running) * SHARE_SCALE / u128::from(weight.max(1))
    }

    /// The room of resource `r`, found at its first use in this choice.
    fn resource(&mut self, r: &Arc<str>) -> &mut ResourceRoom {
        let at = match self.resources.iter().position(|x| Arc::ptr_eq(&x.name, r)) {
            Some(at) => at,
            None => match self.resources.iter().position(|x| x.name == *r) {
                Some(at) => at,
                None => {
                    let on_worker = self.capacity.resource_limits.get(&**r).map(|limit| {
                        let here: u32 = self.running.iter().map(|s| s.count_of_resource(r)).sum();
                        limit.saturating_sub(here)
                    });
                    let in_cluster = self
                        .global
                        .limits
                        .get(&**r)
                        .map(|limit| limit.saturating_sub(self.global.used(r)));
                    self.resources.push(ResourceRoom {
                        name: r.clone(),
                        on_worker,
                        in_cluster,
                    });
                    self.resources.len() - 1
                }
            },
        };
        &mut self.resources[at]
    }

    /// What is left of the worker's amount of `d`, found at its first use in this choice.
    fn amount_left(&mut self, d: &Arc<str>) -> &mut u64 {
        let at = match entry_of(&self.amounts, d) {
            Some(at) => at,
            None => {
                let have = self.capacity.amounts.get(&**d).copied().unwrap_or(0);
                let used: u64 = self.running.iter().map(|s| s.amount_of(d)).sum();
                self.amounts.push((d.clone(), have.saturating_sub(used)));
                self.amounts.len() - 1
            }
        };
        &mut self.amounts[at].1
    }

    fn fits(&mut self, c: &Candidate<'_>) -> Fit {
        let (user, task_type, resources) = (c.user, c.task_type, c.resources);
        if self.free == 0 || !self.types.available(task_type) {
            return Fit::NotThisQueue;
        }
        if let Some(share) = self.capacity.user_share(task_type) {
            let running = self.running;
            let counts = &mut self.user(user).by_type;
            let here = match entry_of(counts, task_type) {
                Some(at) => counts[at].1,
                None => {
                    let n = running
                        .iter()
                        .map(|r| r.count_of_user(user, task_type))
                        .sum();
                    counts.push((Arc::from(task_type), n));
                    n
                }
            };
            if here >= share {
                return Fit::NotThisQueue;
            }
        }
        for r in resources {
            let room = self.resource(r);
            if room.on_worker == Some(0) || room.in_cluster == Some(0) {
                return Fit::NotThisTenant;
            }
        }
        // The worker's amounts: another queue's task may need less.
        for (d, n) in c.needs {
            if *n > *self.amount_left(d) {
                return Fit::NotThisQueue;
            }
        }
        // The owner's and the group's quotas.
        let quotas = self.global.quotas;
        if !quotas.is_empty() {
            let over = |dimension: &str| {
                if dimension == crate::quota::TASKS {
                    Fit::NotThisTenant
                } else {
                    Fit::NotThisQueue
                }
            };
            if let Some(q) = quotas.users.get(user) {
                let global = self.global;
                let used = self.user(user).quota_use.get_or_insert_with(|| {
                    Usage::summed(global.tenants.iter().filter_map(|b| b.user(user)))
                });
                if let Some((d, _)) = crate::quota::exceeded(q, c.needs, |d| used.get(d)) {
                    return over(d);
                }
            }
            if let Some(q) = quotas.groups.get(&c.group) {
                let used = match self.groups.iter().position(|(g, _)| *g == c.group) {
                    Some(at) => &self.groups[at].1,
                    None => {
                        let books = self.global.tenants.iter();
                        let usage = Usage::summed(books.filter_map(|b| b.group(c.group)));
                        self.groups.push((c.group, usage));
                        &self.groups[self.groups.len() - 1].1
                    }
                };
                if let Some((d, _)) = crate::quota::exceeded(q, c.needs, |d| used.get(d)) {
                    return over(d);
                }
            }
        }
        Fit::Yes
    }

    /// Takes the room of a task [`Room::fits`] accepted (so every counter it concerns is found).
    fn take(
        &mut self,
        user: &Arc<str>,
        task_type: &Arc<str>,
        group: GroupId,
        resources: &[Arc<str>],
        needs: Option<&[(Arc<str>, u64)]>,
    ) {
        let needs = needs.unwrap_or(&[]);
        self.free -= 1;
        self.types.take(task_type);
        let u = self.user(user);
        u.running += 1;
        if let Some(used) = u.quota_use.as_mut() {
            used.add(needs);
        }
        if let Some(at) = entry_of(&u.by_type, task_type) {
            u.by_type[at].1 += 1;
        }
        if let Some((_, used)) = self.groups.iter_mut().find(|(g, _)| *g == group) {
            used.add(needs);
        }
        for r in resources {
            let room = self.resource(r);
            for left in [&mut room.on_worker, &mut room.in_cluster] {
                if let Some(n) = left.as_mut() {
                    *n -= 1;
                }
            }
        }
        for (d, n) in needs {
            let left = self.amount_left(d);
            *left = left.checked_sub(*n).expect("fits checked the amount left");
        }
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
        let mut explicit = HashMap::default();
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

    fn none() -> Resources {
        Arc::from(Vec::new())
    }

    fn res(names: &[&str]) -> Resources {
        names.iter().map(|n| t(n)).collect::<Vec<_>>().into()
    }

    /// Indexes a task of user `u` with no resources and priority 0.
    fn put(idx: &mut WaitingIndex, group: GroupId, u: &str, task_type: &str, id: u64) {
        put_full(idx, group, u, task_type, id, 0, &none());
    }

    fn put_full(
        idx: &mut WaitingIndex,
        group: GroupId,
        u: &str,
        task_type: &str,
        id: u64,
        priority: i32,
        resources: &Resources,
    ) {
        idx.insert(Queued {
            group,
            resources,
            user: &t(u),
            task_type: &t(task_type),
            priority,
            id: TaskId(id),
            weight: 1,
            needs: None,
        });
    }

    fn key(task_type: &str, user: &str) -> RunKey {
        RunKey {
            task_type: t(task_type),
            user: t(user),
            resources: none(),
            needs: None,
        }
    }

    fn cap(max: u32, types: &[(&str, u32)], groups: &[GroupId]) -> WorkerCapacity {
        WorkerCapacity {
            max_threads: max,
            max_threads_by_task_type: types.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            groups: groups.to_vec(),
            ..WorkerCapacity::default()
        }
    }

    fn choose(
        idx: &mut WaitingIndex,
        c: &WorkerCapacity,
        running: &[&RunningSet],
        budget: usize,
    ) -> Vec<Chosen> {
        idx.choose(c, running, &GlobalResources::NONE, budget)
    }

    fn ids(chosen: &[Chosen]) -> Vec<u64> {
        chosen.iter().map(|c| c.id.0).collect()
    }

    #[test]
    fn oldest_tasks_come_first_within_a_group() {
        // Goal: inside one group tasks are chosen in id (age) order across task types and users.
        let mut idx = WaitingIndex::default();
        put(&mut idx, 1, "u", "a", 3);
        put(&mut idx, 1, "v", "b", 1);
        put(&mut idx, 1, "u", "a", 2);
        let got = choose(&mut idx, &WorkerCapacity::any(10), &[], 10);
        assert_eq!(ids(&got), vec![1, 2, 3]);
        assert!(idx.is_empty());
    }

    #[test]
    fn priority_orders_a_tenants_own_tasks() {
        // Goal: a higher priority goes first inside its tenant's queue; equal priorities keep age.
        let mut idx = WaitingIndex::default();
        put_full(&mut idx, 1, "u", "a", 1, 0, &none());
        put_full(&mut idx, 1, "u", "a", 2, 5, &none());
        put_full(&mut idx, 1, "u", "b", 3, 9, &none());
        put_full(&mut idx, 1, "u", "a", 4, 5, &none());
        let got = choose(&mut idx, &WorkerCapacity::any(10), &[], 10);
        assert_eq!(ids(&got), vec![3, 2, 4, 1]);
        // Removal needs the priority the task is queued with.
        put_full(&mut idx, 1, "u", "a", 5, 7, &none());
        assert!(!idx.remove("u", "a", 0, TaskId(5)));
        assert!(idx.remove("u", "a", 7, TaskId(5)));
    }

    #[test]
    fn max_threads_counts_running_tasks() {
        // Goal: a worker never gets more than max_threads minus what it already runs.
        let mut idx = WaitingIndex::default();
        for i in 1..=10 {
            put(&mut idx, 1, "u", "a", i);
        }
        let mut running = RunningSet::default();
        running.insert(TaskId(100), key("a", "u"));
        running.insert(TaskId(101), key("z", "u"));
        let got = choose(&mut idx, &WorkerCapacity::any(5), &[&running], 100);
        assert_eq!(ids(&got), vec![1, 2, 3]);
        assert_eq!(idx.len(), 7);
    }

    #[test]
    fn per_type_limit_and_any_bucket_are_respected() {
        // Goal: explicit type limits count running tasks of that type; `any` caps the other types
        // together; a type with no entry and no `any` is never chosen.
        let mut idx = WaitingIndex::default();
        for i in 1..=5 {
            put(&mut idx, 1, "u", "mail", i);
            put(&mut idx, 1, "u", "batch", 10 + i);
            put(&mut idx, 1, "u", "other", 20 + i);
        }
        let mut running = RunningSet::default();
        running.insert(TaskId(100), key("mail", "u"));
        let c = cap(100, &[("mail", 3), ("any", 2)], &[0]);
        let got = choose(&mut idx, &c, &[&running], 100);
        let mails = got.iter().filter(|c| &*c.task_type == "mail").count();
        let others = got.iter().filter(|c| &*c.task_type != "mail").count();
        assert_eq!(mails, 2, "3 allowed, 1 already running");
        assert_eq!(others, 2, "any = 2 for batch and other together");

        let mut idx = WaitingIndex::default();
        put(&mut idx, 1, "u", "other", 1);
        let c = cap(100, &[("mail", 3)], &[0]);
        assert!(choose(&mut idx, &c, &[], 100).is_empty());
    }

    #[test]
    fn zero_entries_are_ignored_and_empty_map_means_any() {
        // Goal: entries of 0 do not forbid a type; an empty map accepts every type.
        let mut idx = WaitingIndex::default();
        put(&mut idx, 1, "u", "x", 1);
        let c = cap(4, &[("x", 0), ("any", 1)], &[0]);
        assert_eq!(ids(&choose(&mut idx, &c, &[], 10)), vec![1]);
        put(&mut idx, 1, "u", "y", 2);
        let c = cap(4, &[], &[0]);
        assert_eq!(ids(&choose(&mut idx, &c, &[], 10)), vec![2]);
    }

    #[test]
    fn listed_groups_come_first_in_priority_order() {
        // Goal: groups are served in the worker's order, groups reached through 0 last, excluded
        // groups never through 0.
        let mut idx = WaitingIndex::default();
        put(&mut idx, 7, "g7", "a", 1);
        put(&mut idx, 2, "g2", "a", 2);
        put(&mut idx, 3, "g3", "a", 3);
        put(&mut idx, 9, "g9", "a", 4);
        let mut c = cap(10, &[], &[3, 2, 0]);
        c.excluded_groups = vec![9];
        let got = choose(&mut idx, &c, &[], 10);
        assert_eq!(ids(&got), vec![3, 2, 1]);
        assert_eq!(idx.len(), 1);

        let c = cap(10, &[], &[2]);
        let mut idx2 = WaitingIndex::default();
        put(&mut idx2, 1, "u", "a", 1);
        assert!(
            choose(&mut idx2, &c, &[], 10).is_empty(),
            "group 1 not served"
        );
    }

    #[test]
    fn a_level_change_moves_a_tenant_at_once() {
        // Goal: changing a tenant's group moves its waiting tasks to the new group's tier.
        let mut idx = WaitingIndex::default();
        put(&mut idx, 1, "u", "a", 1);
        put(&mut idx, 1, "u", "a", 2);
        let only2 = cap(10, &[], &[2]);
        assert!(choose(&mut idx, &only2, &[], 10).is_empty());
        idx.set_level("u", 2, &none(), 1);
        assert_eq!(idx.group_of("u"), Some(2));
        assert_eq!(ids(&choose(&mut idx, &only2, &[], 10)), vec![1, 2]);
        assert!(idx.groups.is_empty() && idx.tenants.is_empty());
    }

    #[test]
    fn budget_caps_one_choice() {
        // Goal: a choice never exceeds its budget even with more room.
        let mut idx = WaitingIndex::default();
        for i in 1..=10 {
            put(&mut idx, 1, "u", "a", i);
        }
        assert_eq!(choose(&mut idx, &WorkerCapacity::any(10), &[], 4).len(), 4);
        assert_eq!(idx.len(), 6);
    }

    #[test]
    fn remove_is_idempotent_and_cleans_empty_queues() {
        // Goal: removing twice is harmless and empty queues do not linger.
        let mut idx = WaitingIndex::default();
        put(&mut idx, 1, "u", "a", 1);
        assert!(idx.remove("u", "a", 0, TaskId(1)));
        assert!(!idx.remove("u", "a", 0, TaskId(1)));
        assert!(idx.groups.is_empty());
        assert!(idx.tenants.is_empty());
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn user_share_caps_each_user_per_type() {
        // Goal: with 10 threads at 80 %, a user running 5 gets only 3 more; another user still
        // gets room; the share is at least 1 even when the percentage rounds down to 0.
        let mut c = cap(10, &[], &[0]);
        c.max_thread_per_user_per_task_type_percent = 80;
        let mut running = RunningSet::default();
        for i in 0..5 {
            running.insert(TaskId(100 + i), key("a", "u"));
        }
        let mut idx = WaitingIndex::default();
        for i in 1..=10 {
            put(&mut idx, 1, "u", "a", i);
        }
        put(&mut idx, 1, "v", "a", 50);
        let got = choose(&mut idx, &c, &[&running], 100);
        let of_u = got.iter().filter(|c| &*c.user == "u").count();
        assert_eq!(of_u, 3, "{got:?}");
        assert_eq!(got.len(), 4, "v gets the fourth free thread: {got:?}");

        let mut c = cap(10, &[("a", 1)], &[0]);
        c.max_thread_per_user_per_task_type_percent = 80;
        let mut idx = WaitingIndex::default();
        put(&mut idx, 1, "u", "a", 1);
        put(&mut idx, 1, "u", "a", 2);
        assert_eq!(ids(&choose(&mut idx, &c, &[], 10)), vec![1]);

        let mut c = cap(10, &[("any", 1)], &[0]);
        c.max_thread_per_user_per_task_type_percent = 80;
        let mut idx = WaitingIndex::default();
        put(&mut idx, 1, "u", "a", 1);
        put(&mut idx, 1, "u", "a", 2);
        assert_eq!(ids(&choose(&mut idx, &c, &[], 10)), vec![1]);
    }

    #[test]
    fn resource_limits_of_worker_and_cluster_both_bind() {
        // Goal: a task runs only while every resource of its tenant has room on the worker and in
        // the cluster; the stricter limit wins; a tenant without the resource is not held back.
        let r1 = res(&["db1"]);
        let mut idx = WaitingIndex::default();
        for i in 1..=10 {
            put_full(&mut idx, 1, "u", "a", i, 0, &r1);
        }
        put(&mut idx, 1, "free", "a", 20);
        let mut c = cap(100, &[], &[0]);
        c.resource_limits.insert("db1".into(), 2);
        let got = idx.choose(&c, &[], &GlobalResources::NONE, 100);
        // Fair share: once "u" runs one, "free" (running none) comes before its second.
        assert_eq!(ids(&got), vec![1, 20, 2]);
        assert_eq!(&*got[0].resources, &*r1);

        // Globally 3, 2 already used elsewhere: only 1 more, although the worker allows 2.
        let limits = BTreeMap::from([("db1".to_string(), 3)]);
        let used = HashMap::from_iter([(t("db1"), 2)]);
        let global = GlobalResources {
            quotas: &NO_QUOTAS,
            tenants: &[],
            limits: &limits,
            used: &[&used],
        };
        let got = idx.choose(&c, &[], &global, 100);
        assert_eq!(ids(&got), vec![3]);
        // Running tasks on the worker count against its limit.
        let mut running = RunningSet::default();
        running.insert(
            TaskId(99),
            RunKey {
                task_type: t("a"),
                user: t("u"),
                resources: r1.clone(),
                needs: None,
            },
        );
        running.insert(
            TaskId(98),
            RunKey {
                task_type: t("a"),
                user: t("u"),
                resources: r1.clone(),
                needs: None,
            },
        );
        assert!(
            idx.choose(&c, &[&running], &GlobalResources::NONE, 100)
                .is_empty()
        );
    }

    proptest::proptest! {
        #[test]
        fn fair_share_gives_each_free_thread_to_the_least_served_user(
            weights in proptest::collection::vec(1u32..6, 2..6),
            ends in proptest::collection::vec(proptest::prelude::any::<u16>(), 1..120),
            threads in 3u32..24,
        ) {
            // Goal: with every user backlogged, each thread a choice fills goes to a user whose
            // running tasks over its weight are the lowest at that moment (r_c / w_c <= r_v /
            // w_v for every v), as tasks end in any order; the worker is always full.
            let mut idx = WaitingIndex::default();
            let users: Vec<Arc<str>> = (0..weights.len()).map(|u| t(&format!("u{u}"))).collect();
            let mut next = 1u64;
            for (u, w) in users.iter().zip(&weights) {
                for _ in 0..200 {
                    idx.insert(Queued {
                        group: 1,
                        resources: &none(),
                        user: u,
                        task_type: &t("a"),
                        priority: 0,
                        id: TaskId(next),
                        weight: *w,
                        needs: None,
                    });
                    next += 1;
                }
            }
            let weight = |u: &Arc<str>| u64::from(weights[users.iter().position(|x| x == u).unwrap()]);
            let c = cap(threads, &[], &[0]);
            let mut book = TenantBook::default();
            let mut running: Vec<(TaskId, Arc<str>)> = Vec::new();
            let mut set = RunningSet::default();
            for end in ends {
                let global = GlobalResources {
                    tenants: &[&book],
                    ..GlobalResources::NONE
                };
                let chosen = idx.choose(&c, &[&set], &global, 100);
                for ch in chosen {
                    let count = |u: &Arc<str>| running.iter().filter(|(_, r)| r == u).count() as u64;
                    for v in &users {
                        proptest::prop_assert!(
                            count(&ch.user) * weight(v) <= count(v) * weight(&ch.user),
                            "{} (running {}, weight {}) chosen before {v} (running {}, weight {})",
                            ch.user,
                            count(&ch.user),
                            weight(&ch.user),
                            count(v),
                            weight(v)
                        );
                    }
                    book.charge(&ch.user, 1, &[]);
                    set.insert(ch.id, key("a", &ch.user));
                    running.push((ch.id, ch.user));
                }
                proptest::prop_assert_eq!(running.len() as u32, threads);
                let (id, user) = running.remove(usize::from(end) % running.len());
                set.remove(id);
                book.release(&user, 1, &[]);
            }
        }
    }

    #[test]
    fn a_lone_tenant_takes_every_thread_and_gives_them_back_as_others_arrive() {
        // Goal: work-conserving fair share. Alone, "big" (a million-task backlog in spirit)
        // fills the worker; once "small" submits, every thread freed goes to "small" until it
        // has its share, although "big"'s tasks are older.
        let mut idx = WaitingIndex::default();
        for i in 1..=50 {
            put(&mut idx, 1, "big", "a", i);
        }
        let c = cap(4, &[], &[0]);
        let mut book = TenantBook::default();
        let mut set = RunningSet::default();
        let run = |idx: &mut WaitingIndex, book: &mut TenantBook, set: &mut RunningSet| {
            let global = GlobalResources {
                tenants: &[&*book],
                ..GlobalResources::NONE
            };
            let got = idx.choose(&c, &[&*set], &global, 100);
            for ch in &got {
                book.charge(&ch.user, 1, &[]);
                set.insert(ch.id, key("a", &ch.user));
            }
            got
        };
        assert_eq!(ids(&run(&mut idx, &mut book, &mut set)), vec![1, 2, 3, 4]);
        for i in 100..=102 {
            put(&mut idx, 1, "small", "a", i);
        }
        let end = |id: u64, set: &mut RunningSet, book: &mut TenantBook| {
            let k = set.remove(TaskId(id)).unwrap();
            book.release(&k.user, 1, &[]);
        };
        end(1, &mut set, &mut book);
        assert_eq!(ids(&run(&mut idx, &mut book, &mut set)), vec![100]);
        end(2, &mut set, &mut book);
        assert_eq!(ids(&run(&mut idx, &mut book, &mut set)), vec![101]);
        // 2 each now: the next thread goes by age, to "big".
        end(3, &mut set, &mut book);
        assert_eq!(ids(&run(&mut idx, &mut book, &mut set)), vec![5]);
    }

    #[test]
    fn needs_and_quotas_bind_per_dimension() {
        // Goal: a task runs only where the worker has room in every dimension it needs and
        // within its owner's and its group's quotas; a task not needing a dimension is not held
        // back by it; the task-count quota stops the whole tenant.
        let needs = |list: &[(&str, u64)]| -> Needs {
            list.iter()
                .map(|(d, n)| (t(d), *n))
                .collect::<Vec<_>>()
                .into()
        };
        let big = needs(&[("cpu", 1500), ("memory", 100)]);
        let small = needs(&[("cpu", 500)]);
        let mut idx = WaitingIndex::default();
        let q = |idx: &mut WaitingIndex, u: &str, ty: &str, id: u64, n: &Needs| {
            idx.insert(Queued {
                group: 1,
                resources: &none(),
                user: &t(u),
                task_type: &t(ty),
                priority: 0,
                id: TaskId(id),
                weight: 1,
                needs: Some(n),
            });
        };
        q(&mut idx, "u", "big", 1, &big);
        q(&mut idx, "u", "big", 2, &big);
        q(&mut idx, "u", "small", 3, &small);
        q(&mut idx, "u", "small", 4, &small);
        let mut c = cap(10, &[], &[0]);
        c.amounts = BTreeMap::from([("cpu".into(), 2000), ("memory".into(), 1000)]);
        // 1500 + 500 millicores fill the worker.
        let got = idx.choose(&c, &[], &GlobalResources::NONE, 100);
        assert_eq!(ids(&got), vec![1, 3]);
        // A worker without memory takes only the small ones.
        let mut no_memory = cap(10, &[], &[0]);
        no_memory.amounts = BTreeMap::from([("cpu".into(), 8000)]);
        assert_eq!(
            ids(&idx.choose(&no_memory, &[], &GlobalResources::NONE, 100)),
            vec![4]
        );
        // The user's cpu quota (1000, 0 used) refuses the big one and lets two small ones
        // through, counting what this choice took; the group's task quota (1) lets exactly one
        // small one through.
        let mut idx = WaitingIndex::default();
        q(&mut idx, "u", "big", 1, &big);
        q(&mut idx, "u", "small", 3, &small);
        q(&mut idx, "u", "small", 4, &small);
        q(&mut idx, "u", "small", 5, &small);
        let mut quotas = Quotas::default();
        quotas.users.insert(t("u"), needs(&[("cpu", 1000)]));
        let mut roomy = cap(10, &[], &[0]);
        roomy.amounts = BTreeMap::from([("cpu".into(), 8000), ("memory".into(), 8000)]);
        let global = GlobalResources {
            quotas: &quotas,
            ..GlobalResources::NONE
        };
        assert_eq!(ids(&idx.choose(&roomy, &[], &global, 100)), vec![3, 4]);
        let mut idx = WaitingIndex::default();
        q(&mut idx, "u", "small", 3, &small);
        q(&mut idx, "u", "small", 4, &small);
        quotas.users.clear();
        quotas.groups.insert(1, needs(&[("tasks", 1)]));
        let global = GlobalResources {
            quotas: &quotas,
            ..GlobalResources::NONE
        };
        assert_eq!(ids(&idx.choose(&roomy, &[], &global, 100)), vec![3]);
    }

    #[test]
    fn admits_agrees_with_choose() {
        // Goal: `admits` says yes exactly when `choose` would pick a lone task.
        let mut running = RunningSet::default();
        running.insert(TaskId(100), key("a", "u"));
        let mut shared = cap(4, &[], &[0]);
        shared.max_thread_per_user_per_task_type_percent = 25;
        let mut limited = cap(4, &[], &[0]);
        limited.resource_limits.insert("r".into(), 1);
        let caps = [
            cap(1, &[], &[0]),
            cap(2, &[], &[0]),
            cap(2, &[("a", 1)], &[0]),
            cap(2, &[("a", 2)], &[0]),
            cap(3, &[("a", 1), ("any", 1)], &[0]),
            cap(3, &[], &[2]),
            cap(3, &[], &[1]),
            shared,
            limited,
        ];
        for c in caps {
            for (task_type, group, user, r) in [
                ("a", 1, "u", none()),
                ("b", 1, "u", none()),
                ("a", 2, "v", none()),
                ("b", 3, "u", none()),
                ("a", 1, "v", res(&["r"])),
            ] {
                let mut idx = WaitingIndex::default();
                put_full(&mut idx, group, user, task_type, 1, 0, &r);
                let chosen = !choose(&mut idx, &c, &[&running], 10).is_empty();
                let cand = Candidate {
                    group,
                    user,
                    task_type,
                    resources: &r,
                    needs: &[],
                };
                assert_eq!(
                    c.admits(&[&running], &GlobalResources::NONE, &cand),
                    chosen,
                    "{c:?} {task_type} {group} {user}"
                );
            }
        }
    }

    #[test]
    fn running_set_counts_by_type_user_and_resource() {
        // Goal: counts follow inserts and removes and never linger at zero.
        let mut r = RunningSet::default();
        let k = RunKey {
            task_type: t("a"),
            user: t("u"),
            resources: res(&["x", "y"]),
            needs: None,
        };
        assert!(r.insert(TaskId(1), k.clone()));
        assert!(!r.insert(TaskId(1), k.clone()));
        r.insert(TaskId(2), key("a", "v"));
        assert_eq!(r.count_of("a"), 2);
        assert_eq!(r.count_of_user("u", "a"), 1);
        assert_eq!(r.count_of_resource("x"), 1);
        assert_eq!(r.remove(TaskId(1)), Some(k));
        assert!(r.remove(TaskId(1)).is_none());
        assert_eq!(r.count_of("a"), 1);
        assert_eq!(r.count_of_user("u", "a"), 0);
        assert_eq!(r.count_of_resource("x"), 0);
        assert_eq!(r.len(), 1);
        r.remove(TaskId(2));
        assert_eq!(r, RunningSet::default());
    }
}
