//! Mutual authentication by a shared secret that never crosses the wire.
//!
//! Each side sends a fresh random nonce; the worker proves it knows the secret with an
//! HMAC-SHA256 over both nonces and its identity, and the broker answers with an HMAC under a
//! different label, so neither proof can be replayed as the other or on another connection.
//! Every field is length-prefixed so that no two different field lists hash the same bytes.

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::Sha256;

use super::NONCE_LEN;

/// Length of a proof: one HMAC-SHA256 output.
pub const PROOF_LEN: usize = 32;

/// Domain-separation label of the worker's proof.
const WORKER_PROOF_LABEL: &[u8] = b"majordodo worker proof v1";
/// Domain-separation label of the broker's proof.
const BROKER_PROOF_LABEL: &[u8] = b"majordodo broker proof v1";

type HmacSha256 = Hmac<Sha256>;

/// The secret shared by the brokers and their workers. Cheap to clone; its `Debug` output never
/// shows the bytes, so configs holding it can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(std::sync::Arc<[u8]>);

impl SharedSecret {
    /// Wraps the secret's bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        SharedSecret(secret.into().into())
    }

    /// The secret's bytes, to key the proofs.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the secret has no bytes; configs refuse an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// A fresh nonce from the operating system's random number generator.
///
/// # Panics
/// If the operating system cannot provide randomness, which leaves no safe way to authenticate.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng
        .try_fill_bytes(&mut nonce)
        .expect("the operating system provides random bytes");
    nonce
}

fn mac(secret: &[u8], label: &[u8], fields: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac accepts keys of any length");
    for field in std::iter::once(&label).chain(fields) {
        // Field lengths are bounded by the frame size, far below u32::MAX.
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field);
    }
    mac
}

/// The worker's proof: HMAC-SHA256 keyed by `secret` over the worker label, `broker_nonce`,
/// `client_nonce`, `worker_id` and `process_id`.
pub fn worker_proof(
    secret: &[u8],
    broker_nonce: &[u8],
    client_nonce: &[u8],
    worker_id: &str,
    process_id: &str,
) -> [u8; PROOF_LEN] {
    let fields: [&[u8]; 4] = [
        broker_nonce,
        client_nonce,
        worker_id.as_bytes(),
        process_id.as_bytes(),
    ];
    mac(secret, WORKER_PROOF_LABEL, &fields)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` is the worker's proof for these fields; compares in constant time.
pub fn verify_worker_proof(
    secret: &[u8],
    broker_nonce: &[u8],
    client_nonce: &[u8],
    worker_id: &str,
    process_id: &str,
    proof: &[u8],
) -> bool {
    let fields: [&[u8]; 4] = [
        broker_nonce,
        client_nonce,
        worker_id.as_bytes(),
        process_id.as_bytes(),
    ];
    mac(secret, WORKER_PROOF_LABEL, &fields)
        .verify_slice(proof)
        .is_ok()
}

/// The broker's proof: HMAC-SHA256 keyed by `secret` over the broker label, `client_nonce`,
/// `broker_nonce` and `worker_id`.
pub fn broker_proof(
    secret: &[u8],
    client_nonce: &[u8],
    broker_nonce: &[u8],
    worker_id: &str,
) -> [u8; PROOF_LEN] {
    let fields: [&[u8]; 3] = [client_nonce, broker_nonce, worker_id.as_bytes()];
    mac(secret, BROKER_PROOF_LABEL, &fields)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` is the broker's proof for these fields; compares in constant time.
pub fn verify_broker_proof(
    secret: &[u8],
    client_nonce: &[u8],
    broker_nonce: &[u8],
    worker_id: &str,
    proof: &[u8],
) -> bool {
    let fields: [&[u8]; 3] = [client_nonce, broker_nonce, worker_id.as_bytes()];
    mac(secret, BROKER_PROOF_LABEL, &fields)
        .verify_slice(proof)
        .is_ok()
}
