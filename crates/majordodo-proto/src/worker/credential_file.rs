//! The credential file `majordodo worker-credentials add` writes and `majordodo worker
//! --credential-file` reads: versioned text, one `key = value` a line.
//!
//! ```text
//! majordodo-worker-credential v1
//! credential_id = c-5f0e...
//! worker_id = w2
//! secret = 64 hex digits
//! ```
//!
//! Lines starting with `#` and blank lines are ignored; every key must appear exactly once.

use super::CREDENTIAL_SECRET_LEN;

/// First line of a version 1 credential file.
pub const CREDENTIAL_FILE_HEADER: &str = "majordodo-worker-credential v1";

/// What a credential file holds. Its `Debug` output never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialFile {
    /// The broker's id of the credential.
    pub credential_id: String,
    /// The worker id it is bound to.
    pub worker_id: String,
    /// The secret.
    pub secret: [u8; CREDENTIAL_SECRET_LEN],
}

impl std::fmt::Debug for CredentialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFile")
            .field("credential_id", &self.credential_id)
            .field("worker_id", &self.worker_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; CREDENTIAL_SECRET_LEN]> {
    if text.len() != 2 * CREDENTIAL_SECRET_LEN || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; CREDENTIAL_SECRET_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl CredentialFile {
    /// The file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{CREDENTIAL_FILE_HEADER}\n# A majordodo worker credential: keep this file secret (mode 0600).\n\
             credential_id = {}\nworker_id = {}\nsecret = {}\n",
            self.credential_id,
            self.worker_id,
            hex(&self.secret)
        )
    }

    /// Reads a credential file's text.
    ///
    /// # Errors
    /// A message naming the line or key at fault (never quoting the secret).
    pub fn parse(text: &str) -> Result<CredentialFile, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, CREDENTIAL_FILE_HEADER)) => {}
            Some((_, l)) if l.starts_with("majordodo-worker-credential ") => {
                return Err(format!(
                    "unsupported credential file version {:?} (this build reads v1)",
                    &l["majordodo-worker-credential ".len()..]
                ));
            }
            _ => {
                return Err(format!(
                    "not a worker credential file: the first line must be {CREDENTIAL_FILE_HEADER:?}"
                ));
            }
        }
        let (mut id, mut worker, mut secret) = (None, None, None);
        for (n, line) in lines {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {n}: expected key = value"));
            };
            let (key, value) = (key.trim(), value.trim());
            let slot = match key {
                "credential_id" => &mut id,
                "worker_id" => &mut worker,
                "secret" => &mut secret,
                other => return Err(format!("line {n}: unknown key {other:?}")),
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(format!("line {n}: {key} appears twice"));
            }
        }
        let credential_id = id.ok_or("credential_id is missing")?;
        let worker_id = worker.ok_or("worker_id is missing")?;
        let secret = secret.ok_or("secret is missing")?;
        if credential_id.is_empty() {
            return Err("credential_id is empty".into());
        }
        if worker_id.is_empty() {
            return Err("worker_id is empty".into());
        }
        let secret = unhex(&secret)
            .ok_or_else(|| format!("secret must be {} hex digits", 2 * CREDENTIAL_SECRET_LEN))?;
        Ok(CredentialFile {
            credential_id,
            worker_id,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn credential_files_round_trip_and_garbage_never_panics(
            id in "[a-z0-9-]{1,20}",
            worker in "[a-z0-9.]{1,20}",
            secret in any::<[u8; 32]>(),
            garbage in ".{0,200}",
        ) {
            // Goal: parse(to_text(f)) == f; any text yields a file or an error, never a panic.
            let f = CredentialFile { credential_id: id, worker_id: worker, secret };
            prop_assert_eq!(CredentialFile::parse(&f.to_text()).unwrap(), f);
            let _ = CredentialFile::parse(&garbage);
            let _ = CredentialFile::parse(&format!("{CREDENTIAL_FILE_HEADER}\n{garbage}"));
        }
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem() {
        // Goal: another version, a missing or repeated key, a short secret are refused; the
        // debug output never shows the secret.
        let good = CredentialFile {
            credential_id: "c1".into(),
            worker_id: "w1".into(),
            secret: [0xab; 32],
        };
        assert!(!format!("{good:?}").contains("abab"));
        let text = good.to_text();
        let v2 = text.replace("v1", "v2");
        assert!(CredentialFile::parse(&v2).unwrap_err().contains("version"));
        let missing = text.replace("worker_id = w1\n", "");
        assert!(
            CredentialFile::parse(&missing)
                .unwrap_err()
                .contains("worker_id is missing")
        );
        let twice = format!("{text}worker_id = w2\n");
        assert!(CredentialFile::parse(&twice).unwrap_err().contains("twice"));
        let short = text.replace(&"ab".repeat(32), "abcd");
        let err = CredentialFile::parse(&short).unwrap_err();
        assert!(err.contains("hex digits") && !err.contains("abcd"), "{err}");
        assert!(
            CredentialFile::parse("hello")
                .unwrap_err()
                .contains("not a worker credential")
        );
    }
}
