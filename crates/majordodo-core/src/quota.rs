//! Resource quotas per tenant: what a task needs, what a tenant (a user or a group) may use at
//! once, and what its running tasks use now.
//!
//! Every amount is an unsigned integer in a dimension named by a string. Three names are
//! reserved: [`CPU`] (millicores), [`MEMORY`] (MiB) and, in quotas only, [`TASKS`] (running
//! tasks: every task needs one). Any other name is a named amount (`db:orders`, `storage-iops`).
//! A task's needs are charged to its owner and to the owner's group when it is assigned and
//! released when that attempt ends in any way; a quota is checked only when a task is placed, so
//! lowering it below the current use lets running tasks finish and starts no new task that
//! needs the dimension.

use std::collections::BTreeMap;

use crate::HashMap;
use std::sync::Arc;

use crate::model::GroupId;

/// Millicores of CPU.
pub const CPU: &str = "cpu";
/// MiB of memory.
pub const MEMORY: &str = "memory";
/// Running tasks (quotas only: each task needs one).
pub const TASKS: &str = "tasks";
/// Most dimensions one task, worker or quota may name.
pub const MAX_DIMENSIONS: usize = 32;
/// Largest amount in any dimension.
pub const MAX_AMOUNT: u64 = 1 << 40;
/// Longest dimension name, in bytes.
pub const MAX_DIMENSION_NAME: usize = 128;

/// Amounts per dimension: sorted by name, names unique, no zero amount. Shared: every copy of a
/// task's needs points at the same slice.
pub type Needs = Arc<[(Arc<str>, u64)]>;

/// A tenant that can have a quota.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaTenant {
    /// One user.
    User(String),
    /// Every user of a group together.
    Group(GroupId),
}

impl std::fmt::Display for QuotaTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaTenant::User(u) => write!(f, "user {u}"),
            QuotaTenant::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// Why a set of amounts is refused: the dimension at fault and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{dimension}: {problem}")]
pub struct AmountError {
    /// The dimension (empty when the set as a whole is at fault).
    pub dimension: String,
    /// What is wrong.
    pub problem: String,
}

/// Checks and sorts a set of amounts: at most [`MAX_DIMENSIONS`] names of 1 to
/// [`MAX_DIMENSION_NAME`] bytes without control characters, no name twice, amounts up to
/// [`MAX_AMOUNT`]; zero amounts are dropped. `tasks` is refused unless `allow_tasks` (only a quota
/// may limit running tasks).
///
/// # Errors
/// [`AmountError`] naming the dimension.
pub fn normalize(
    amounts: Vec<(String, u64)>,
    allow_tasks: bool,
) -> Result<Vec<(String, u64)>, AmountError> {
    if amounts.len() > MAX_DIMENSIONS {
        return Err(AmountError {
            dimension: String::new(),
            problem: format!(
                "{} dimensions; at most {MAX_DIMENSIONS} are accepted",
                amounts.len()
            ),
        });
    }
    let mut out: Vec<(String, u64)> = Vec::with_capacity(amounts.len());
    for (name, amount) in amounts {
        let bad = |problem: String| AmountError {
            dimension: name.clone(),
            problem,
        };
        if name.is_empty() || name.len() > MAX_DIMENSION_NAME || name.chars().any(char::is_control)
        {
            return Err(bad(format!(
                "a dimension name must be 1 to {MAX_DIMENSION_NAME} bytes without control \
                 characters"
            )));
        }
        if name == TASKS && !allow_tasks {
            return Err(bad(
                "is a quota dimension (running tasks); a task always needs one".into(),
            ));
        }
        if amount > MAX_AMOUNT {
            return Err(bad(format!(
                "{amount} is more than the largest amount, {MAX_AMOUNT}"
            )));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(bad("is given twice".into()));
        }
        out.push((name, amount));
    }
    out.retain(|(_, a)| *a > 0);
    out.sort();
    Ok(out)
}

/// What a task needs in `dimension` (`tasks`: always 1).
pub fn need_of(needs: &[(Arc<str>, u64)], dimension: &str) -> u64 {
    if dimension == TASKS {
        return 1;
    }
    // Needs are sorted by name, as the amounts in use are.
    amount_in(needs, dimension)
}

/// Where `dimension` is in a sorted list of amounts (Ok) or would go (Err). Names come
/// interned, so the same text is usually the same address; the comparison by text decides
/// otherwise. Inlined: a task's assignment and end search these short lists a few dozen
/// times between them.
#[inline]
fn find_amount(amounts: &[(Arc<str>, u64)], dimension: &str) -> Result<usize, usize> {
    if let Some(i) = amounts.iter().position(|(name, _)| {
        std::ptr::eq(name.as_ptr(), dimension.as_ptr()) && name.len() == dimension.len()
    }) {
        return Ok(i);
    }
    amounts.binary_search_by(|(name, _)| (**name).cmp(dimension))
}

/// The amount of `dimension` in a sorted list of amounts (0 when absent).
#[inline]
pub(crate) fn amount_in(amounts: &[(Arc<str>, u64)], dimension: &str) -> u64 {
    find_amount(amounts, dimension).map_or(0, |i| amounts[i].1)
}

/// Adds to a sorted list of amounts; the name is copied only when it is new there.
#[inline]
pub(crate) fn add_amount(amounts: &mut Vec<(Arc<str>, u64)>, name: &Arc<str>, amount: u64) {
    match find_amount(amounts, name) {
        Ok(i) => amounts[i].1 += amount,
        Err(i) => amounts.insert(i, (name.clone(), amount)),
    }
}

/// Takes back what [`add_amount`] added (panics with `why` if it was not there); a dimension
/// that reaches 0 leaves the list.
#[inline]
pub(crate) fn sub_amount(amounts: &mut Vec<(Arc<str>, u64)>, name: &str, amount: u64, why: &str) {
    let i = find_amount(amounts, name).expect(why);
    let used = &mut amounts[i].1;
    *used = used.checked_sub(amount).expect(why);
    if *used == 0 {
        amounts.remove(i);
    }
}

/// What running tasks use: their number and their needs summed per dimension.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Running tasks.
    pub tasks: u64,
    /// Summed needs per dimension: sorted by name, names unique, no zero entry. A short list
    /// (a few dimensions at most), searched by the interned name's address first.
    pub amounts: Vec<(Arc<str>, u64)>,
}

impl Usage {
    /// Use in one dimension (`tasks`: the number of tasks).
    pub fn get(&self, dimension: &str) -> u64 {
        if dimension == TASKS {
            self.tasks
        } else {
            amount_in(&self.amounts, dimension)
        }
    }

    /// Whether nothing is used.
    pub fn is_empty(&self) -> bool {
        self.tasks == 0 && self.amounts.is_empty()
    }

    /// Several uses summed.
    pub(crate) fn summed<'u>(usages: impl Iterator<Item = &'u Usage>) -> Usage {
        let mut sum = Usage::default();
        for u in usages {
            sum.merge(u);
        }
        sum
    }

    /// One more running task with `needs`.
    pub(crate) fn add(&mut self, needs: &[(Arc<str>, u64)]) {
        self.tasks += 1;
        for (name, amount) in needs {
            add_amount(&mut self.amounts, name, *amount);
        }
    }

    fn sub(&mut self, needs: &[(Arc<str>, u64)]) {
        const WHY: &str = "a tenant's use is charged before it is released";
        self.tasks = self.tasks.checked_sub(1).expect(WHY);
        for (name, amount) in needs {
            sub_amount(&mut self.amounts, name, *amount, WHY);
        }
    }

    fn merge(&mut self, other: &Usage) {
        self.tasks += other.tasks;
        for (name, amount) in &other.amounts {
            add_amount(&mut self.amounts, name, *amount);
        }
    }

    fn unmerge(&mut self, other: &Usage) {
        self.tasks -= other.tasks;
        for (name, amount) in &other.amounts {
            sub_amount(&mut self.amounts, name, *amount, "merged before");
        }
    }
}

/// Use per user and per group. Counters only change together, so they never go below zero and
/// a group's use is the sum of its users'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantBook {
    users: HashMap<Arc<str>, Usage>,
    groups: HashMap<GroupId, Usage>,
}

impl TenantBook {
    /// Charges one running task of `user` (in `group`).
    pub fn charge(&mut self, user: &Arc<str>, group: GroupId, needs: &[(Arc<str>, u64)]) {
        // Looked up by name first: the name is copied only for a user not in the book yet.
        match self.users.get_mut(&**user) {
            Some(usage) => usage.add(needs),
            None => {
                let mut usage = Usage::default();
                usage.add(needs);
                self.users.insert(user.clone(), usage);
            }
        }
        self.groups.entry(group).or_default().add(needs);
    }

    /// Releases what [`TenantBook::charge`] charged.
    pub fn release(&mut self, user: &str, group: GroupId, needs: &[(Arc<str>, u64)]) {
        let u = self
            .users
            .get_mut(user)
            .expect("a user's use is charged before it is released");
        u.sub(needs);
        if u.is_empty() {
            self.users.remove(user);
        }
        let g = self
            .groups
            .get_mut(&group)
            .expect("a group's use is charged before it is released");
        g.sub(needs);
        if g.is_empty() {
            self.groups.remove(&group);
        }
    }

    /// Moves a user's whole use from one group to another (its service level changed).
    pub fn move_user(&mut self, user: &str, from: GroupId, to: GroupId) {
        if from == to {
            return;
        }
        let Some(usage) = self.users.get(user) else {
            return;
        };
        let g = self
            .groups
            .get_mut(&from)
            .expect("a user's group holds its use");
        g.unmerge(usage);
        if g.is_empty() {
            self.groups.remove(&from);
        }
        self.groups.entry(to).or_default().merge(usage);
    }

    /// A user's use (None: nothing runs).
    pub fn user(&self, user: &str) -> Option<&Usage> {
        self.users.get(user)
    }

    /// A group's use (None: nothing runs).
    pub fn group(&self, group: GroupId) -> Option<&Usage> {
        self.groups.get(&group)
    }

    /// Every user with a use, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = (&Arc<str>, &Usage)> + '_ {
        self.users.iter()
    }

    /// Every group with a use, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &Usage)> + '_ {
        self.groups.iter().map(|(g, u)| (*g, u))
    }

    /// Whether nothing is charged.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Quotas set at runtime, per user and per group (amounts in the form [`normalize`] gives,
/// `tasks` allowed; a dimension without an entry is not limited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quotas {
    /// By user.
    pub users: BTreeMap<Arc<str>, Needs>,
    /// By group.
    pub groups: BTreeMap<GroupId, Needs>,
}

impl Quotas {
    /// Whether no quota is set.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// The quota of a tenant, if set.
    pub fn get(&self, tenant: &QuotaTenant) -> Option<&Needs> {
        match tenant {
            QuotaTenant::User(u) => self.users.get(u.as_str()),
            QuotaTenant::Group(g) => self.groups.get(g),
        }
    }

    /// Every quota, users first (by name), then groups (by number).
    pub fn iter(&self) -> impl Iterator<Item = (QuotaTenant, &Needs)> + '_ {
        self.users
            .iter()
            .map(|(u, q)| (QuotaTenant::User(u.to_string()), q))
            .chain(self.groups.iter().map(|(g, q)| (QuotaTenant::Group(*g), q)))
    }
}

/// The first dimension of `quota` that one more task with `needs` would exceed, given what is
/// used (`used(dimension)`), with the amount used; None when it fits. A dimension the task does
/// not need never refuses it.
pub fn exceeded<'q>(
    quota: &'q [(Arc<str>, u64)],
    needs: &[(Arc<str>, u64)],
    used: impl Fn(&str) -> u64,
) -> Option<(&'q str, u64)> {
    quota.iter().find_map(|(dimension, limit)| {
        let need = need_of(needs, dimension);
        let now = used(dimension);
        (need > 0 && now.saturating_add(need) > *limit).then_some((&**dimension, now))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(list: &[(&str, u64)]) -> Vec<(Arc<str>, u64)> {
        list.iter().map(|(n, a)| (Arc::from(*n), *a)).collect()
    }

    #[test]
    fn normalize_sorts_drops_zeros_and_refuses_bad_dimensions() {
        let ok = normalize(
            vec![
                ("memory".into(), 512),
                ("cpu".into(), 0),
                ("db:orders".into(), 1),
            ],
            false,
        )
        .unwrap();
        assert_eq!(ok, vec![("db:orders".into(), 1), ("memory".into(), 512)]);
        let twice = normalize(vec![("cpu".into(), 1), ("cpu".into(), 2)], false).unwrap_err();
        assert_eq!(twice.dimension, "cpu");
        let tasks = normalize(vec![("tasks".into(), 1)], false).unwrap_err();
        assert_eq!(tasks.dimension, "tasks");
        assert!(normalize(vec![("tasks".into(), 1)], true).is_ok());
        let huge = normalize(vec![("cpu".into(), MAX_AMOUNT + 1)], false).unwrap_err();
        assert!(huge.problem.contains("largest amount"), "{huge}");
        assert!(normalize(vec![(String::new(), 1)], false).is_err());
        assert!(normalize(vec![("a\nb".into(), 1)], false).is_err());
        let many = (0..=MAX_DIMENSIONS).map(|i| (format!("r{i}"), 1)).collect();
        assert!(normalize(many, false).is_err());
    }

    #[test]
    fn a_book_charges_users_and_groups_and_moves_a_user() {
        let mut book = TenantBook::default();
        let alice: Arc<str> = "alice".into();
        let n = needs(&[("cpu", 500), ("memory", 100)]);
        book.charge(&alice, 1, &n);
        book.charge(&alice, 1, &needs(&[("cpu", 250)]));
        assert_eq!(book.user("alice").unwrap().get("cpu"), 750);
        assert_eq!(book.user("alice").unwrap().get(TASKS), 2);
        assert_eq!(book.group(1).unwrap().get("memory"), 100);
        book.move_user("alice", 1, 2);
        assert!(book.group(1).is_none());
        assert_eq!(book.group(2).unwrap().get("cpu"), 750);
        book.release("alice", 2, &n);
        book.release("alice", 2, &needs(&[("cpu", 250)]));
        assert!(book.is_empty() && book.group(2).is_none());
    }

    #[test]
    fn a_quota_refuses_only_what_a_task_needs_beyond_it() {
        let quota = needs(&[("cpu", 1000), ("tasks", 3)]);
        let used = |d: &str| if d == "cpu" { 900 } else { 1 };
        assert_eq!(
            exceeded(&quota, &needs(&[("cpu", 200)]), used),
            Some(("cpu", 900))
        );
        assert_eq!(exceeded(&quota, &needs(&[("cpu", 100)]), used), None);
        // No cpu needed: only the task count binds.
        assert_eq!(exceeded(&quota, &needs(&[("memory", 5000)]), used), None);
        let full = |d: &str| if d == "tasks" { 3 } else { 0 };
        assert_eq!(exceeded(&quota, &[], full), Some(("tasks", 3)));
    }
}
