//! The error type of every client operation, and what a caller should do about each case.
//!
//! Errors are named after the BookKeeper condition they report, not after the layer that noticed
//! it. [`BkError::is_retryable`] tells whether the same operation may succeed if tried again
//! later (possibly on a rebuilt client or a new ledger, as each variant's documentation says).

use std::sync::Arc;

/// Status codes a bookie returns in v3 responses (`StatusCode` in `BookkeeperProtocol.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BookieStatus {
    /// EOK: success.
    Ok,
    /// ENOLEDGER: the bookie stores nothing for this ledger.
    NoLedger,
    /// ENOENTRY: the bookie does not store this entry.
    NoEntry,
    /// EBADREQ: the bookie rejected the request as malformed.
    BadRequest,
    /// EIO: the bookie failed to read or write its storage.
    Io,
    /// EUA: wrong master key (password) or unauthenticated connection.
    Unauthorized,
    /// EBADVERSION: unsupported protocol version.
    BadVersion,
    /// EFENCED: the ledger was fenced by a recovering client.
    Fenced,
    /// EREADONLY: the bookie is in read-only mode.
    ReadOnly,
    /// ETOOMANYREQUESTS: the bookie is throttling.
    TooManyRequests,
    /// EUNKNOWNLEDGERSTATE: the bookie cannot tell the ledger's state.
    UnknownLedgerState,
    /// A code this client does not know.
    Other(i32),
}

impl BookieStatus {
    /// Maps a wire status code to its meaning.
    pub fn from_code(code: i32) -> BookieStatus {
        match code {
            0 => BookieStatus::Ok,
            402 => BookieStatus::NoLedger,
            403 => BookieStatus::NoEntry,
            404 => BookieStatus::BadRequest,
            501 => BookieStatus::Io,
            502 => BookieStatus::Unauthorized,
            503 => BookieStatus::BadVersion,
            504 => BookieStatus::Fenced,
            505 => BookieStatus::ReadOnly,
            506 => BookieStatus::TooManyRequests,
            507 => BookieStatus::UnknownLedgerState,
            other => BookieStatus::Other(other),
        }
    }

    /// The wire code of this status.
    pub fn code(self) -> i32 {
        match self {
            BookieStatus::Ok => 0,
            BookieStatus::NoLedger => 402,
            BookieStatus::NoEntry => 403,
            BookieStatus::BadRequest => 404,
            BookieStatus::Io => 501,
            BookieStatus::Unauthorized => 502,
            BookieStatus::BadVersion => 503,
            BookieStatus::Fenced => 504,
            BookieStatus::ReadOnly => 505,
            BookieStatus::TooManyRequests => 506,
            BookieStatus::UnknownLedgerState => 507,
            BookieStatus::Other(code) => code,
        }
    }
}

impl std::fmt::Display for BookieStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BookieStatus::Ok => f.write_str("EOK"),
            BookieStatus::NoLedger => f.write_str("ENOLEDGER"),
            BookieStatus::NoEntry => f.write_str("ENOENTRY"),
            BookieStatus::BadRequest => f.write_str("EBADREQ"),
            BookieStatus::Io => f.write_str("EIO"),
            BookieStatus::Unauthorized => f.write_str("EUA"),
            BookieStatus::BadVersion => f.write_str("EBADVERSION"),
            BookieStatus::Fenced => f.write_str("EFENCED"),
            BookieStatus::ReadOnly => f.write_str("EREADONLY"),
            BookieStatus::TooManyRequests => f.write_str("ETOOMANYREQUESTS"),
            BookieStatus::UnknownLedgerState => f.write_str("EUNKNOWNLEDGERSTATE"),
            BookieStatus::Other(code) => write!(f, "status {code}"),
        }
    }
}

/// Every way a BookKeeper operation can fail.
///
/// The type is cheap to clone so that one failure can be reported to every pending append.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BkError {
    /// Another client opened the ledger with recovery (or closed it) while this writer was
    /// writing. The writer has lost the ledger: stop writing, do not touch its metadata, and step
    /// down. Not retryable.
    #[error("ledger {ledger_id} was fenced by another client")]
    Fenced {
        /// The ledger that was fenced.
        ledger_id: i64,
    },

    /// The ledger is closed: entries up to `last_add_confirmed` are durable and readable, nothing
    /// after it was or will be written. A writer closes its ledger by itself when a bookie fails
    /// (`cause` then says why); roll to a new ledger and re-submit what was not acknowledged.
    /// Not retryable on this ledger.
    #[error("ledger {ledger_id} is closed at entry {last_add_confirmed}{}", cause_suffix(.cause))]
    LedgerClosed {
        /// The closed ledger.
        ledger_id: i64,
        /// The last entry of the ledger (-1 when it is empty).
        last_add_confirmed: i64,
        /// What made the writer close the ledger, when it was not the caller's own `close`.
        cause: Option<Arc<BkError>>,
    },

    /// Fewer writable bookies are registered than the ensemble needs. Retryable once more
    /// bookies are up.
    #[error("not enough writable bookies: need {needed}, have {available}")]
    NotEnoughBookies {
        /// Bookies the ensemble needs.
        needed: usize,
        /// Writable bookies registered.
        available: usize,
    },

    /// A bookie could not be reached or dropped the connection. Retryable.
    #[error("bookie {bookie} unavailable: {reason}")]
    BookieUnavailable {
        /// The bookie id.
        bookie: String,
        /// What went wrong.
        reason: String,
    },

    /// A request got no answer in time. Retryable.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited (which request, which bookie).
        what: String,
    },

    /// The ledger does not exist in the metadata store. Not retryable.
    #[error("ledger {ledger_id} does not exist")]
    NoSuchLedger {
        /// The missing ledger.
        ledger_id: i64,
    },

    /// The entry does not exist, or lies beyond the last confirmed entry of the ledger. Retryable
    /// only for an open ledger, once the writer has confirmed the entry.
    #[error("entry {entry_id} of ledger {ledger_id} does not exist")]
    NoSuchEntry {
        /// The ledger read.
        ledger_id: i64,
        /// The missing entry.
        entry_id: i64,
    },

    /// The password does not match the ledger's (or a bookie rejected the master key). Not
    /// retryable: use the right password.
    #[error("unauthorized access to ledger {ledger_id}")]
    Unauthorized {
        /// The ledger.
        ledger_id: i64,
    },

    /// An entry or LAC read back failed its digest check on every replica tried. Not retryable.
    #[error("digest mismatch on entry {entry_id} of ledger {ledger_id}")]
    DigestMismatch {
        /// The ledger read.
        ledger_id: i64,
        /// The entry whose digest did not match (-1 for a LAC record).
        entry_id: i64,
    },

    /// The ledger's metadata changed in a way this operation did not expect (a concurrent
    /// update it cannot reconcile). Re-open the ledger to see the current metadata. Not
    /// retryable as is.
    #[error("metadata of ledger {ledger_id} changed concurrently: {detail}")]
    MetadataVersion {
        /// The ledger.
        ledger_id: i64,
        /// What differed.
        detail: String,
    },

    /// Recovery of an open ledger could not decide its last entry (bookies unreachable or
    /// failing). Retryable: the ledger stays in recovery and a later attempt continues.
    #[error("recovery of ledger {ledger_id} failed: {reason}")]
    RecoveryFailed {
        /// The ledger being recovered.
        ledger_id: i64,
        /// Why it could not complete.
        reason: String,
    },

    /// A bookie answered with an error status not covered by a more specific variant.
    /// Retryable for EIO, EREADONLY, ETOOMANYREQUESTS and EUNKNOWNLEDGERSTATE.
    #[error("bookie {bookie} answered {status}")]
    BookieError {
        /// The bookie id.
        bookie: String,
        /// The status it returned.
        status: BookieStatus,
    },

    /// A bookie sent something that does not follow the protocol. Retryable (another replica,
    /// or a new connection, may do better).
    #[error("protocol error from bookie {bookie}: {detail}")]
    Protocol {
        /// The bookie id.
        bookie: String,
        /// What was wrong.
        detail: String,
    },

    /// ZooKeeper failed. Retryable when the cause is a lost connection or a timeout.
    #[error("zookeeper: {0}")]
    ZooKeeper(#[source] zookeeper_client::Error),

    /// The ZooKeeper session expired. This client can no longer touch metadata: build a new
    /// [`crate::BookKeeper`]. Not retryable on this client.
    #[error("zookeeper session expired")]
    SessionExpired,

    /// Metadata read from ZooKeeper is not valid BookKeeper metadata. Not retryable.
    #[error("invalid metadata at {path}: {detail}")]
    InvalidMetadata {
        /// The znode read.
        path: String,
        /// What was wrong.
        detail: String,
    },

    /// The cluster's ledger layout is not one this client implements. Not retryable.
    #[error("unsupported ledger layout: {0}")]
    UnsupportedLayout(String),

    /// An argument is out of range (quorum sizes, entry size, ledger id...). Not retryable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A writer already stopped accepting appends: earlier appends failed, the ledger is being
    /// closed, or too many appends are queued. Not retryable on this writer.
    #[error("ledger {ledger_id} no longer accepts appends: {reason}")]
    WriterClosed {
        /// The ledger.
        ledger_id: i64,
        /// Why appends are refused.
        reason: String,
    },

    /// The client was shut down. Not retryable.
    #[error("client closed")]
    ClientClosed,
}

fn cause_suffix(cause: &Option<Arc<BkError>>) -> String {
    match cause {
        Some(cause) => format!(" after failure: {cause}"),
        None => String::new(),
    }
}

impl BkError {
    /// Whether the same operation may succeed if tried again later, as each variant documents.
    pub fn is_retryable(&self) -> bool {
        match self {
            BkError::NotEnoughBookies { .. }
            | BkError::BookieUnavailable { .. }
            | BkError::Timeout { .. }
            | BkError::RecoveryFailed { .. }
            | BkError::Protocol { .. } => true,
            BkError::BookieError { status, .. } => matches!(
                status,
                BookieStatus::Io
                    | BookieStatus::ReadOnly
                    | BookieStatus::TooManyRequests
                    | BookieStatus::UnknownLedgerState
            ),
            BkError::ZooKeeper(err) => matches!(
                err,
                zookeeper_client::Error::ConnectionLoss
                    | zookeeper_client::Error::Timeout
                    | zookeeper_client::Error::Throttled
            ),
            BkError::Fenced { .. }
            | BkError::LedgerClosed { .. }
            | BkError::NoSuchLedger { .. }
            | BkError::NoSuchEntry { .. }
            | BkError::Unauthorized { .. }
            | BkError::DigestMismatch { .. }
            | BkError::MetadataVersion { .. }
            | BkError::SessionExpired
            | BkError::InvalidMetadata { .. }
            | BkError::UnsupportedLayout(_)
            | BkError::InvalidArgument(_)
            | BkError::WriterClosed { .. }
            | BkError::ClientClosed => false,
        }
    }

    /// Maps a ZooKeeper error, turning session expiry into [`BkError::SessionExpired`].
    pub(crate) fn zk(err: zookeeper_client::Error) -> BkError {
        match err {
            zookeeper_client::Error::SessionExpired => BkError::SessionExpired,
            zookeeper_client::Error::ClientClosed => BkError::SessionExpired,
            other => BkError::ZooKeeper(other),
        }
    }

    /// Maps a bookie's error status for `ledger_id` to the matching error.
    pub(crate) fn from_status(
        status: BookieStatus,
        bookie: &str,
        ledger_id: i64,
        entry_id: i64,
    ) -> BkError {
        match status {
            BookieStatus::Fenced => BkError::Fenced { ledger_id },
            BookieStatus::Unauthorized => BkError::Unauthorized { ledger_id },
            BookieStatus::NoLedger | BookieStatus::NoEntry => BkError::NoSuchEntry {
                ledger_id,
                entry_id,
            },
            other => BkError::BookieError {
                bookie: bookie.to_string(),
                status: other,
            },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = BkError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        // Goal: every known wire status maps to a distinct meaning and back to its code.
        for code in [0, 402, 403, 404, 501, 502, 503, 504, 505, 506, 507, 999] {
            assert_eq!(BookieStatus::from_code(code).code(), code);
        }
        assert_eq!(BookieStatus::from_code(504), BookieStatus::Fenced);
        assert_eq!(BookieStatus::from_code(42), BookieStatus::Other(42));
    }

    #[test]
    fn fenced_and_closed_are_not_retryable_but_timeouts_are() {
        // Goal: callers can tell a lost ledger from a passing failure.
        assert!(!BkError::Fenced { ledger_id: 1 }.is_retryable());
        assert!(
            !BkError::LedgerClosed {
                ledger_id: 1,
                last_add_confirmed: 3,
                cause: None
            }
            .is_retryable()
        );
        assert!(BkError::Timeout { what: "add".into() }.is_retryable());
        assert!(!BkError::SessionExpired.is_retryable());
        assert!(BkError::ZooKeeper(zookeeper_client::Error::ConnectionLoss).is_retryable());
        assert!(!BkError::ZooKeeper(zookeeper_client::Error::NoAuth).is_retryable());
        assert!(
            BkError::BookieError {
                bookie: "b".into(),
                status: BookieStatus::ReadOnly
            }
            .is_retryable()
        );
        assert!(
            !BkError::BookieError {
                bookie: "b".into(),
                status: BookieStatus::BadRequest
            }
            .is_retryable()
        );
    }

    #[test]
    fn closed_error_names_its_cause() {
        // Goal: the message of a writer-closed ledger says why it was closed.
        let err = BkError::LedgerClosed {
            ledger_id: 7,
            last_add_confirmed: 41,
            cause: Some(Arc::new(BkError::Timeout {
                what: "add to bookie b1".into(),
            })),
        };
        assert_eq!(
            err.to_string(),
            "ledger 7 is closed at entry 41 after failure: timed out waiting for add to bookie b1"
        );
    }
}
