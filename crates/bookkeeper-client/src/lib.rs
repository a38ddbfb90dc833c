//! An async client for [Apache BookKeeper](https://bookkeeper.apache.org/).
//!
//! It speaks the bookies' v3 protobuf protocol over one multiplexed TCP connection per bookie
//! and keeps ledger metadata in ZooKeeper exactly as BookKeeper lays it out, so ledgers written
//! here are readable by the Java client and tools, and the other way round.
//!
//! ```no_run
//! use bookkeeper_client::{BookKeeper, ClientConfig, LedgerOptions, OpenMode};
//! use bytes::Bytes;
//!
//! # async fn demo() -> Result<(), bookkeeper_client::BkError> {
//! let bk = BookKeeper::connect(ClientConfig::new("127.0.0.1:2181")).await?;
//! let writer = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
//! let first = writer.append(Bytes::from_static(b"hello"));
//! let second = writer.append(Bytes::from_static(b"world"));
//! assert_eq!((first.await?, second.await?), (0, 1));
//! writer.close().await?;
//!
//! let reader = bk.open_ledger(writer.ledger_id(), b"", OpenMode::NoRecovery).await?;
//! let entries = reader.read(0..=reader.last_add_confirmed()).await?;
//! assert_eq!(entries.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Ledgers have a single ensemble: when a bookie fails during writes the writer closes the
//! ledger at its last-add-confirmed and reports [`BkError::LedgerClosed`]; the caller rolls to
//! a new ledger. Readers of multi-ensemble ledgers written by other clients are supported.

#![warn(missing_docs)]

mod bookie;
mod client;
pub mod digest;
mod error;
pub mod frame;
pub mod metadata;
mod metastore;
pub mod proto;
pub mod quorum;
mod reader;
mod recovery;
mod writer;

pub use client::{
    BookKeeper, ClientConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LONG_POLL_TIMEOUT,
    DEFAULT_MAX_ENTRY_SIZE, DEFAULT_MAX_IN_FLIGHT_PER_BOOKIE, DEFAULT_MAX_OUTSTANDING_ADDS,
    DEFAULT_MAX_QUEUED_ADDS, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SPECULATIVE_READ_TIMEOUT,
    DEFAULT_ZK_SESSION_TIMEOUT, LedgerOptions, OpenMode,
};
pub use digest::DigestType;
pub use error::{BkError, BookieStatus, Result};
pub use metadata::{LedgerMetadata, LedgerState, Segment};
pub use reader::{LedgerEntry, LedgerReader, LongPoll, Tailer};
pub use writer::LedgerWriter;
