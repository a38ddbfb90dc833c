//! Per-worker credentials: each one binds a worker id to a secret the broker generated, of which
//! the state keeps only a verifier (the stored key and the server key of a SCRAM-style
//! exchange, see `majordodo_proto::worker`). Credentials are issued and revoked by logged
//! entries ([`crate::LogEntry::AddWorkerCredential`], [`crate::LogEntry::RevokeWorkerCredential`])
//! and kept in snapshots, so every broker of a cluster refuses a revoked one.

use crate::model::Millis;

/// Longest credential id, worker id or comment accepted, in bytes.
pub const MAX_CREDENTIAL_FIELD_LEN: usize = 1024;

/// Length of the stored key and the server key.
pub const CREDENTIAL_KEY_LEN: usize = 32;

/// One worker credential as the state keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerCredential {
    /// The credential's id, chosen by the leader; the worker names it in its hello.
    pub id: String,
    /// The only worker id this credential may connect as.
    pub worker_id: String,
    /// Hash of the client key: checks the worker's proof, cannot make one.
    pub stored_key: [u8; CREDENTIAL_KEY_LEN],
    /// Key of the broker's proof to the worker.
    pub server_key: [u8; CREDENTIAL_KEY_LEN],
    /// When it was issued.
    pub created: Millis,
    /// Free text given by the admin (what it is for, where it is deployed).
    pub comment: Option<String>,
    /// When it was revoked; a revoked credential never connects again.
    pub revoked: Option<Millis>,
}

impl std::fmt::Debug for WorkerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCredential")
            .field("id", &self.id)
            .field("worker_id", &self.worker_id)
            .field("created", &self.created)
            .field("comment", &self.comment)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

impl WorkerCredential {
    /// Whether the credential may be used to connect.
    pub fn is_active(&self) -> bool {
        self.revoked.is_none()
    }
}

/// Why a credential id, worker id or comment is not acceptable; the text names the problem.
///
/// Ids are 1 to [`MAX_CREDENTIAL_FIELD_LEN`] bytes of ASCII letters, digits and `-_.:@`; a
/// worker id the same (it is also written to log lines and credential files, so it carries no
/// spaces or control characters).
pub fn check_name(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_CREDENTIAL_FIELD_LEN {
        return Err(format!(
            "{what} is {} bytes long; at most {MAX_CREDENTIAL_FIELD_LEN} are accepted",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@".contains(*c)))
    {
        return Err(format!(
            "{what} may hold only ASCII letters, digits and -_.:@, not {c:?}"
        ));
    }
    Ok(())
}

/// Checks a comment: at most [`MAX_CREDENTIAL_FIELD_LEN`] bytes, no control characters.
pub fn check_comment(comment: &str) -> Result<(), String> {
    if comment.len() > MAX_CREDENTIAL_FIELD_LEN {
        return Err(format!(
            "comment is {} bytes long; at most {MAX_CREDENTIAL_FIELD_LEN} are accepted",
            comment.len()
        ));
    }
    if comment.chars().any(char::is_control) {
        return Err("comment must not hold control characters".into());
    }
    Ok(())
}

/// Why a presented credential does not admit a worker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialProblem {
    /// No credential has this id.
    #[error("unknown credential {0}")]
    Unknown(String),
    /// The credential was revoked.
    #[error("credential {0} is revoked")]
    Revoked(String),
    /// The credential belongs to another worker id.
    #[error("credential {id} is not valid for worker id {claimed}")]
    OtherWorker {
        /// The credential.
        id: String,
        /// The worker id claimed in the hello.
        claimed: String,
    },
}
