//! The sans-I/O core of Majordodo.
//!
//! - [`model`]: tasks, workers, statuses.
//! - [`entry`]: the log-entry vocabulary; every state change is one [`LogEntry`].
//! - [`state`]: [`BrokerState`] and its single [`BrokerState::apply`], used identically by the
//!   leader, by replay at boot and by followers.
//! - [`scheduler`]: the waiting-task index and the capacity-aware choice of tasks for a worker.
//! - [`idempotency`]: client-chosen keys that make a submission sent twice create one task.
//! - [`leader`]: [`Leader`], which turns requests and events into entries, with reservations for
//!   entries still in flight so batches can be pipelined.
//! - [`quota`]: what tasks need, tenants' quotas and their use.
//! - [`credential`]: per-worker credentials (verifiers only), issued and revoked by entries.
//! - [`codepool`]: code pools in the state: chunks, checksums, references, expiry.
//! - [`snapshot`]: owned records of a whole state, and rebuilding a state from them.
//!
//! No I/O, no clock, no randomness: time is an argument of every call that needs it.

pub mod codepool;
pub mod credential;
pub mod entry;
pub mod idempotency;
pub mod leader;
pub mod model;
pub mod quota;
pub mod scheduler;
mod slot_table;
pub mod snapshot;
mod sorted;
pub mod state;
mod task_table;

/// The core's hash map: foldhash, several times faster than SipHash on the short keys the core
/// uses (user names, task ids). It is seeded per process, which keeps a client from computing
/// colliding keys in advance, but it resists flooding less than SipHash does. Nothing the core
/// decides depends on a map's iteration order.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The core's hash set (see [`HashMap`]).
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub use entry::{LogEntry, NewTask};
pub use idempotency::IdempotencyKey;
pub use leader::{Leader, LeaderConfig};
pub use model::{Millis, Task, TaskId, TaskStatus, TransactionId, WorkerStatus};
pub use scheduler::WorkerCapacity;
pub use state::{ApplyError, BrokerState, DefaultGroupMapper, GroupMapper};
