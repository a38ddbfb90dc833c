//! Mutual authentication by a secret that never crosses the wire: the legacy shared secret, or
//! a per-worker credential.
//!
//! **Credentials** (SCRAM-style): the broker generates a random secret per credential and keeps
//! only its verifier, the *stored key* `SHA-256(client key)` and the *server key*, where
//! `client key = HMAC(secret, "majordodo client key v1")` and
//! `server key = HMAC(secret, "majordodo server key v1")`. The worker sends
//! `client key XOR HMAC(stored key, auth message)`; the broker recovers the client key from it
//! and checks that its hash is the stored key, so a copy of the verifier (from the log or a
//! snapshot) does not let anyone connect as the worker. The broker answers with
//! `HMAC(server key, auth message)`. The auth message covers both nonces, the worker id, the
//! process id and the credential id.
//!
//! **Shared secret** (legacy):
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

/// Length of a per-worker credential's secret: 256 bits from the OS RNG.
pub const CREDENTIAL_SECRET_LEN: usize = 32;

const CLIENT_KEY_LABEL: &[u8] = b"majordodo client key v1";
const SERVER_KEY_LABEL: &[u8] = b"majordodo server key v1";
const CREDENTIAL_AUTH_LABEL: &[u8] = b"majordodo credential auth v1";
const CREDENTIAL_BROKER_LABEL: &[u8] = b"majordodo credential broker proof v1";

/// What the broker keeps of a credential: enough to check a worker's proof and to prove
/// itself, not enough to make a worker's proof.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CredentialVerifier {
    /// `SHA-256(client key)`.
    pub stored_key: [u8; PROOF_LEN],
    /// Key of the broker's proof.
    pub server_key: [u8; PROOF_LEN],
}

impl std::fmt::Debug for CredentialVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialVerifier(<redacted>)")
    }
}

/// A fresh credential secret from the operating system's random number generator.
///
/// # Panics
/// If the operating system cannot provide randomness.
pub fn random_credential_secret() -> [u8; CREDENTIAL_SECRET_LEN] {
    let mut secret = [0u8; CREDENTIAL_SECRET_LEN];
    OsRng
        .try_fill_bytes(&mut secret)
        .expect("the operating system provides random bytes");
    secret
}

fn client_key(secret: &[u8]) -> [u8; PROOF_LEN] {
    mac(secret, CLIENT_KEY_LABEL, &[])
        .finalize()
        .into_bytes()
        .into()
}

/// The verifier of a credential secret.
pub fn credential_verifier(secret: &[u8]) -> CredentialVerifier {
    use sha2::Digest;
    CredentialVerifier {
        stored_key: Sha256::digest(client_key(secret)).into(),
        server_key: mac(secret, SERVER_KEY_LABEL, &[])
            .finalize()
            .into_bytes()
            .into(),
    }
}

/// The identity and randomness both credential proofs cover.
#[derive(Clone, Copy, Debug)]
pub struct CredentialAuth<'a> {
    /// The broker's nonce (from `Challenge`).
    pub broker_nonce: &'a [u8],
    /// The worker's nonce (from `Hello`).
    pub client_nonce: &'a [u8],
    /// The worker id claimed.
    pub worker_id: &'a str,
    /// The worker's process id.
    pub process_id: &'a str,
    /// The credential named.
    pub credential_id: &'a str,
}

impl CredentialAuth<'_> {
    fn signature(&self, key: &[u8], label: &[u8]) -> [u8; PROOF_LEN] {
        let fields: [&[u8]; 5] = [
            self.broker_nonce,
            self.client_nonce,
            self.worker_id.as_bytes(),
            self.process_id.as_bytes(),
            self.credential_id.as_bytes(),
        ];
        mac(key, label, &fields).finalize().into_bytes().into()
    }
}

fn xor(a: &[u8; PROOF_LEN], b: &[u8; PROOF_LEN]) -> [u8; PROOF_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// The worker's proof of a credential secret.
pub fn credential_worker_proof(secret: &[u8], auth: &CredentialAuth<'_>) -> [u8; PROOF_LEN] {
    let key = client_key(secret);
    let stored: [u8; PROOF_LEN] = {
        use sha2::Digest;
        Sha256::digest(key).into()
    };
    xor(&key, &auth.signature(&stored, CREDENTIAL_AUTH_LABEL))
}

/// Whether `proof` proves the secret behind `verifier`; compares in constant time.
pub fn verify_credential_worker_proof(
    verifier: &CredentialVerifier,
    auth: &CredentialAuth<'_>,
    proof: &[u8],
) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let Ok(proof) = <[u8; PROOF_LEN]>::try_from(proof) else {
        return false;
    };
    let key = xor(
        &proof,
        &auth.signature(&verifier.stored_key, CREDENTIAL_AUTH_LABEL),
    );
    let hashed: [u8; PROOF_LEN] = Sha256::digest(key).into();
    hashed.ct_eq(&verifier.stored_key).into()
}

/// The broker's proof for a credential: HMAC under the server key.
pub fn credential_broker_proof(
    verifier: &CredentialVerifier,
    auth: &CredentialAuth<'_>,
) -> [u8; PROOF_LEN] {
    auth.signature(&verifier.server_key, CREDENTIAL_BROKER_LABEL)
}

/// Whether `proof` is the broker's proof for the credential whose secret the worker holds;
/// compares in constant time.
pub fn verify_credential_broker_proof(
    secret: &[u8],
    auth: &CredentialAuth<'_>,
    proof: &[u8],
) -> bool {
    use subtle::ConstantTimeEq;
    let expected = credential_broker_proof(&credential_verifier(secret), auth);
    proof.ct_eq(&expected).into()
}
