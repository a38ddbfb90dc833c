//! Replicated Majordodo brokers: ZooKeeper coordination and the BookKeeper commit log.
//!
//! A group of brokers shares nothing but ZooKeeper and BookKeeper:
//! - [`Coordinator`]: one ZooKeeper session: leader election on an ephemeral znode, discovery
//!   of live brokers, and the ledger list, changed only by compare-and-set.
//! - [`BookKeeperLog`]: the leader's [`majordodo_log::CommitLog`] on BookKeeper ledgers; opening
//!   it fences the previous leader.
//! - [`LogFollower`]: how followers tail the ledgers the leader writes.
//!
//! Formats (znode JSON, ledger entries) are in [`majordodo_proto::cluster`].

mod bklog;
mod coord;
mod error;
mod tail;

pub use bklog::{
    BkLogConfig, BookKeeperLog, DEFAULT_MAX_ENTRIES_IN_FLIGHT, DEFAULT_MAX_UNACKED_BYTES,
    DEFAULT_RETENTION, DEFAULT_ROLL_AGE, DEFAULT_ROLL_SIZE, TakeOver,
};
pub use coord::{
    CoordConfig, Coordinator, DISCOVERY_DIR, DISCOVERY_PREFIX, LEADER_NODE, LEDGERS_NODE,
    Leadership, PROTECTED_ACL, Registration, VersionedLedgers, ZkDigest,
};
pub use error::CoordError;
pub use tail::LogFollower;
