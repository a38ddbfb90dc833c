//! The broker↔worker protocol: frames, codec and handshake.
//!
//! A connection is a stream of frames, each a `u32` big-endian body length followed by a
//! protobuf [`Envelope`] carrying the protocol version and one [`Message`]. The worker opens
//! the connection:
//!
//! ```text
//! worker                                   broker
//!   Hello {worker_id, process_id, location, client_nonce} ->
//!                          <- Challenge {broker_id, broker_nonce}
//!   Connect {proof, capacity, running, task_shapes} ->
//!                          <- Welcome {broker_proof, keepalive, idle timeout}  | Reject {reason}
//!                          <- Assign {assignments, shapes}    (any time after Welcome)
//!   Finished {seq, reports} ->
//!                          <- FinishedAck {seq}               (once the reports are durable)
//!   Ping {capacity, running} ->
//!                          <- Pong
//!   Shutdown ->                                               (graceful stop)
//!                          <- Kill {reason}                   (the worker must exit)
//!   CodePoolRequest {id, pool, offset, max_len} ->           (a pool's archive, part by part)
//!                          <- CodePoolData {id, pool, offset, size, sha256, data | error}
//! ```
//!
//! Many tasks hold the same resources and need the same amounts (their owner's service level,
//! a handful of cpu/memory sizes). To a worker that announces `task_shapes`, the broker sends
//! each such pair once per connection as a [`TaskShape`] (in an `Assign` frame before the first
//! assignment naming it) and each assignment names it by id instead of carrying the strings; a
//! broker or worker that predates shapes ignores the fields and the assignments carry their
//! own, as before.
//!
//! No secret crosses the wire. A worker with a per-worker credential names it in `Hello`
//! (`credential_id`) and proves its secret SCRAM-style against the verifier the broker keeps
//! ([`credential_worker_proof`], [`credential_broker_proof`]); without one (legacy mode) both
//! sides prove the shared secret with HMACs over both nonces ([`worker_proof`],
//! [`broker_proof`]). Decoding never panics; anything a
//! peer can get wrong is a [`ProtocolError`], after which the receiver closes that connection.

mod codec;
mod credential_file;
mod messages;
mod proof;

#[cfg(test)]
mod tests;

pub use codec::{
    FRAME_OVERHEAD, WorkerCodec, chunk_for_frames, decode_body, encoded_body_len, fits_in_frame,
    item_frame_len,
};
pub use credential_file::{CREDENTIAL_FILE_HEADER, CredentialFile};
pub use messages::{
    ANY_TASK_TYPE, Assign, Assignment, CPU_MILLIS, Cancel, Capacity, Challenge, CodePoolData,
    CodePoolRequest, Connect, Envelope, FinishReport, Finished, FinishedAck, Hello, Kill,
    MAX_TASK_SHAPES, MEMORY_MIB, Message, Outcome, Ping, Pong, Reject, RunningTask, Shutdown,
    TaskShape, Welcome,
};
pub use proof::{
    CREDENTIAL_SECRET_LEN, CredentialAuth, CredentialVerifier, PROOF_LEN, SharedSecret,
    broker_proof, credential_broker_proof, credential_verifier, credential_worker_proof,
    random_credential_secret, random_nonce, verify_broker_proof, verify_credential_broker_proof,
    verify_credential_worker_proof, verify_worker_proof, worker_proof,
};

/// The protocol version this code speaks; carried by every frame. Version 2 adds the
/// credential id of `Hello` (field 90) and its proofs; a peer of version 1 is refused with
/// [`ProtocolError::UnsupportedVersion`] on its first frame.
pub const PROTOCOL_VERSION: u32 = 2;

/// Default largest frame body, in bytes. A frame carries a batch of task payloads or results,
/// and the original system capped those at 64 KiB each; 16 MiB leaves room for batches of
/// hundreds of such tasks while bounding what one connection can make the peer buffer.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Length of the handshake nonces: 256 bits, so a nonce never repeats in practice.
pub const NONCE_LEN: usize = 32;

/// What a peer did wrong on the wire, or an I/O failure while reading or writing frames.
///
/// None of these is retryable on the same connection: the receiver logs it and closes the
/// connection. A worker then reconnects; [`ProtocolError::UnsupportedVersion`] will fail
/// again until one side is upgraded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The length prefix announces a body larger than the configured maximum. Raise the
    /// maximum on both sides if such frames are legitimate.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced (or, when encoding, actual) body length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version the peer sent.
        version: u32,
    },
    /// The frame holds a message kind this version does not know (or none at all).
    #[error("unknown message kind")]
    UnknownMessage,
    /// The body is not valid protobuf for an [`Envelope`].
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A field decoded but has a value the protocol forbids.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A valid message arrived at a point of the conversation where it is not allowed.
    #[error("unexpected {got} message, expected {expected}")]
    UnexpectedMessage {
        /// Kind received.
        got: &'static str,
        /// What the receiver was waiting for.
        expected: &'static str,
    },
    /// Reading or writing the socket failed; the connection is gone.
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
}
