//! Every byte Majordodo puts on a wire or on disk.
//!
//! - [`archive`]: code-pool archives (zip, tar.gz) read with every safety rule checked.
//! - [`record`]: log records (one state change each).
//! - [`snapshot`]: snapshot content (a whole state as a stream of items).
//! - [`worker`]: the broker↔worker TCP protocol (frames, codec, handshake).
//! - [`http`]: the client HTTP API's JSON (requests, views, answers), Majordodo-compatible.
//! - [`cluster`]: what replicated brokers share: znodes in ZooKeeper, entries of the ledgers.
//!
//! Each format is versioned; decoders never panic on outside data.

pub mod archive;
pub mod cluster;
pub mod http;
pub mod record;
pub mod snapshot;
pub mod worker;
