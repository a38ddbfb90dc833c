//! What each fuzz target checks, written once for two callers: the `cargo fuzz` targets in
//! `fuzz/` (nightly, libFuzzer) and the corpus replay test of this crate (stable, run by
//! `cargo test`), which feeds every checked-in input of `fuzz/seeds/<target>/` through the same
//! function so that a decoder change that panics on a known input fails CI.
//!
//! Every check takes arbitrary bytes, runs a decoder of outside data on them and panics only
//! when a property is broken: the decoder panicked, a value it accepted does not survive
//! encode → decode unchanged, or it reserved memory out of proportion to its input.
//!
//! | target             | decoder                                                      |
//! |--------------------|--------------------------------------------------------------|
//! | `http_request`     | HTTP `POST` bodies ([`parse_action`]) and view queries ([`parse_view`]) |
//! | `worker_protocol`  | worker-port frames ([`WorkerCodec`]) and the handshake's proofs |
//! | `log_record`       | log records ([`record::decode_entry`])                       |
//! | `snapshot`         | snapshot files (`majordodo_log::decode_snapshot`) and their content ([`snapshot::decode_snapshot`]) |
//! | `archive`          | code-pool archives, zip and tar.gz ([`archive::walk`])       |
//! | `log_segment`      | file-log segments (`FileLogReader`, `FileLog::open` recovery) |
//! | `cluster`          | ledger entries, the leader and ledger-list znodes, BookKeeper ledger metadata, bookie responses |
//!
//! [`parse_action`]: majordodo_proto::http::parse_action
//! [`parse_view`]: majordodo_proto::http::parse_view
//! [`WorkerCodec`]: majordodo_proto::worker::WorkerCodec
//! [`record::decode_entry`]: majordodo_proto::record::decode_entry
//! [`snapshot::decode_snapshot`]: majordodo_proto::snapshot::decode_snapshot
//! [`archive::walk`]: majordodo_proto::archive::walk

mod checks;

pub use checks::{
    archive, cluster, http_request, log_record, log_segment, snapshot, worker_protocol,
};

/// The check of one target: panics when a property is broken.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its seeds and the name of its fuzz binary) and its
/// check.
pub const TARGETS: [(&str, Check); 7] = [
    ("http_request", http_request),
    ("worker_protocol", worker_protocol),
    ("log_record", log_record),
    ("snapshot", snapshot),
    ("archive", archive),
    ("log_segment", log_segment),
    ("cluster", cluster),
];
