//! The leader's decisions about code pools: creation (chunked), deletion, use by submissions,
//! and expiry (see [`crate::codepool`] for the rules).

use crate::{HashMap, HashSet};

use super::Leader;
use crate::codepool::pool_entries;
use crate::entry::LogEntry;
use crate::model::Millis;

/// Why the leader refuses a code-pool request; nothing was decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodePoolRefusal {
    /// A pool with this id exists (or is being created). Delete it first, or pick another id.
    #[error("code pool {0} already exists")]
    Exists(String),
    /// No pool has this id. Create it first.
    #[error("code pool {0} does not exist")]
    Unknown(String),
    /// Tasks that are waiting, delayed or running (or being submitted) name the pool. Retry once
    /// they ended.
    #[error("code pool {id} is used by {tasks} waiting, delayed or running tasks")]
    InUse {
        /// The pool.
        id: String,
        /// How many tasks use it.
        tasks: u32,
    },
    /// The pool is being created or deleted by entries not yet durable. Retry shortly.
    #[error("code pool {0} is being created or deleted")]
    Busy(String),
}

/// Code-pool decisions in flight.
#[derive(Debug, Default)]
pub(crate) struct PoolReservations {
    /// Pools whose creation entries are in flight (until the last chunk is applied).
    creating: HashSet<String>,
    /// Pools whose deletion is in flight.
    deleting: HashSet<String>,
    /// Submissions in flight per pool they name.
    submits: HashMap<String, u32>,
    /// Set when this leader took over: the first tick deletes incomplete pools (a creation the
    /// previous leader did not finish writing), decided at this time.
    sweep_at: Option<Millis>,
}

impl PoolReservations {
    /// Reservations of a leader taking over `state` at `now`.
    pub(crate) fn new(state: &crate::state::BrokerState, now: Millis) -> PoolReservations {
        PoolReservations {
            sweep_at: state
                .incomplete_code_pools()
                .next()
                .is_some()
                .then_some(now),
            ..PoolReservations::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.creating.is_empty() && self.deleting.is_empty() && self.submits.is_empty()
    }
}

/// What an entry releases once applied.
pub(crate) enum PoolRelease {
    Submit(String),
    Created(String),
    Deleted(String),
    Nothing,
}

impl PoolRelease {
    pub(crate) fn of(entry: &LogEntry, leader: &Leader) -> PoolRelease {
        match entry {
            LogEntry::AddTask(t) | LogEntry::PrepareAddTask { task: t, .. } => t
                .codepool
                .clone()
                .map_or(PoolRelease::Nothing, PoolRelease::Submit),
            LogEntry::CodePoolChunk { id, index, .. }
                if leader
                    .state
                    .codepool(id)
                    .is_some_and(|p| index + 1 == p.chunk_count) =>
            {
                PoolRelease::Created(id.clone())
            }
            LogEntry::DeleteCodePool { id, .. } => PoolRelease::Deleted(id.clone()),
            _ => PoolRelease::Nothing,
        }
    }
}

impl Leader {
    /// Decides the creation of pool `id` holding archive `data` (checked by the caller), with
    /// `ttl` ms to live (0 = forever). Returns the entries to log: a header, then chunks of at
    /// most `chunk_size` bytes, so every record stays within the log's limit.
    ///
    /// # Errors
    /// [`CodePoolRefusal::Exists`] when the id is taken (or being created).
    pub fn create_code_pool(
        &mut self,
        now: Millis,
        id: &str,
        ttl: Millis,
        data: &[u8],
        chunk_size: usize,
    ) -> Result<Vec<LogEntry>, CodePoolRefusal> {
        if self.state.codepool(id).is_some() || self.pools.creating.contains(id) {
            return Err(CodePoolRefusal::Exists(id.to_owned()));
        }
        self.pools.creating.insert(id.to_owned());
        Ok(pool_entries(id, now, ttl, data, chunk_size))
    }

    /// Decides the deletion of pool `id`.
    ///
    /// # Errors
    /// [`CodePoolRefusal`]: unknown, in use by live tasks, or being created or deleted.
    pub fn delete_code_pool(&mut self, now: Millis, id: &str) -> Result<LogEntry, CodePoolRefusal> {
        if self.pools.creating.contains(id) || self.pools.deleting.contains(id) {
            return Err(CodePoolRefusal::Busy(id.to_owned()));
        }
        if self.state.codepool(id).is_none() {
            return Err(CodePoolRefusal::Unknown(id.to_owned()));
        }
        let tasks = self.code_pool_users(id);
        if tasks > 0 {
            return Err(CodePoolRefusal::InUse {
                id: id.to_owned(),
                tasks,
            });
        }
        self.pools.deleting.insert(id.to_owned());
        Ok(LogEntry::DeleteCodePool {
            id: id.to_owned(),
            timestamp: now,
        })
    }

    /// Whether a task may name pool `id` now: it exists, is complete, and is not being deleted.
    ///
    /// # Errors
    /// [`CodePoolRefusal::Unknown`] or [`CodePoolRefusal::Busy`].
    pub fn code_pool_usable(&self, id: &str) -> Result<(), CodePoolRefusal> {
        if self.pools.creating.contains(id) || self.pools.deleting.contains(id) {
            return Err(CodePoolRefusal::Busy(id.to_owned()));
        }
        match self.state.codepool(id) {
            Some(pool) if pool.is_complete() => Ok(()),
            _ => Err(CodePoolRefusal::Unknown(id.to_owned())),
        }
    }

    /// Live tasks naming pool `id`, submissions in flight included.
    /// Live tasks naming pool `id`, submissions of it in flight, and tasks prepared in open
    /// transactions that name it (a commit would make them live: the pool must stay).
    fn code_pool_users(&self, id: &str) -> u32 {
        let prepared = self
            .state
            .transactions()
            .flat_map(|t| t.prepared.iter())
            .filter(|t| t.codepool.as_deref() == Some(id))
            .count() as u32;
        self.state.code_pool_users(id) + self.pools.submits.get(id).copied().unwrap_or(0) + prepared
    }

    /// Reserves a use of pool `id` by a submission being decided.
    pub(crate) fn reserve_pool_use(&mut self, id: &str) {
        *self.pools.submits.entry(id.to_owned()).or_default() += 1;
    }

    pub(crate) fn release_pool(&mut self, release: PoolRelease) {
        match release {
            PoolRelease::Submit(id) => {
                if let Some(n) = self.pools.submits.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        self.pools.submits.remove(&id);
                    }
                }
            }
            PoolRelease::Created(id) => {
                self.pools.creating.remove(&id);
            }
            PoolRelease::Deleted(id) => {
                self.pools.deleting.remove(&id);
            }
            PoolRelease::Nothing => {}
        }
    }

    /// Whether pool `id` may be deleted by a timer: nothing uses it or changes it.
    fn pool_idle(&self, id: &str) -> bool {
        !self.pools.creating.contains(id)
            && !self.pools.deleting.contains(id)
            && self.code_pool_users(id) == 0
    }

    /// The timer's deletions: incomplete pools left by a previous leader (first tick only), and
    /// expired pools that no live task names, at most `budget`.
    pub(crate) fn expire_code_pools(
        &mut self,
        now: Millis,
        budget: usize,
        entries: &mut Vec<LogEntry>,
    ) {
        let mut doomed: Vec<String> = Vec::new();
        if self.pools.sweep_at.take().is_some() {
            doomed.extend(
                self.state
                    .incomplete_code_pools()
                    .filter(|p| !self.pools.creating.contains(&p.id))
                    .map(|p| p.id.clone()),
            );
        }
        for (at, id) in self.state.code_pools_by_expiry() {
            if at > now || doomed.len() >= budget {
                break;
            }
            if self.pool_idle(id) && !doomed.iter().any(|d| d == id) {
                doomed.push(id.to_owned());
            }
        }
        for id in doomed {
            self.pools.deleting.insert(id.clone());
            entries.push(LogEntry::DeleteCodePool { id, timestamp: now });
        }
    }

    /// When [`Leader::expire_code_pools`] next has something to do.
    pub(crate) fn next_pool_timer(&self) -> Option<Millis> {
        if let Some(at) = self.pools.sweep_at {
            return Some(at);
        }
        self.state
            .code_pools_by_expiry()
            .find(|(_, id)| self.pool_idle(id))
            .map(|(at, _)| at)
    }
}
