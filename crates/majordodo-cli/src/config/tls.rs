//! The TLS keys of the broker's `[http]` and `[workers]` tables: the server certificate and key,
//! the workers' client CA, and the rule that plain TCP is served only on loopback unless
//! `allow_plaintext` says otherwise.

use std::path::PathBuf;

use majordodo_tls::{ServerTls, ServerTlsFiles};

use super::{ConfigError, Origin, resolve_path};

/// The TLS keys of one port's table, as written.
pub(crate) struct PortTls<'a> {
    /// The table: `http` or `workers`.
    pub(crate) table: &'static str,
    /// The port's name in logs and errors (`HTTP API`, `worker port`).
    pub(crate) what: &'static str,
    /// Its listen address.
    pub(crate) listen: &'a str,
    /// `tls_cert_file`.
    pub(crate) cert_file: Option<&'a PathBuf>,
    /// `tls_key_file`.
    pub(crate) key_file: Option<&'a PathBuf>,
    /// `tls_client_ca_file` (worker port only).
    pub(crate) client_ca_file: Option<&'a PathBuf>,
    /// `allow_plaintext`.
    pub(crate) allow_plaintext: bool,
}

impl PortTls<'_> {
    /// Reads the certificates, or checks that serving plain TCP is allowed.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key: a certificate without its key (or the reverse),
    /// a file that cannot be used, a client CA without TLS, or plain TCP on an address that is
    /// not loopback without `allow_plaintext = true`.
    pub(crate) fn load(&self, origin: &Origin) -> Result<Option<ServerTls>, ConfigError> {
        let t = self.table;
        let invalid = |key: &str, problem: String| {
            ConfigError::invalid(origin, format!("{t}.{key}"), problem)
        };
        let (cert_file, key_file) = match (self.cert_file, self.key_file) {
            (Some(cert), Some(key)) => (resolve_path(origin, cert), resolve_path(origin, key)),
            (Some(_), None) => {
                return Err(invalid(
                    "tls_key_file",
                    "must be set with tls_cert_file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_cert_file",
                    "must be set with tls_key_file".into(),
                ));
            }
            (None, None) => {
                if self.client_ca_file.is_some() {
                    return Err(invalid(
                        "tls_client_ca_file",
                        "client certificates need TLS: set tls_cert_file and tls_key_file too"
                            .into(),
                    ));
                }
                if !self.allow_plaintext && !majordodo_tls::is_loopback_listen(self.listen) {
                    return Err(invalid(
                        "listen",
                        format!(
                            "{listen} is not a loopback address, and the {what} would be plain \
                             TCP (credentials and task data readable on the network): set \
                             {t}.tls_cert_file and {t}.tls_key_file, or allow plain TCP \
                             explicitly with {t}.allow_plaintext = true",
                            listen = self.listen,
                            what = self.what,
                        ),
                    ));
                }
                return Ok(None);
            }
        };
        let files = ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: self.client_ca_file.map(|p| resolve_path(origin, p)),
        };
        ServerTls::load(self.what, files)
            .map(Some)
            .map_err(|error| {
                let key = match &error {
                    majordodo_tls::TlsError::ClientCa { .. } => "tls_client_ca_file",
                    majordodo_tls::TlsError::Read { path, .. }
                    | majordodo_tls::TlsError::Pem { path, .. }
                        if Some(path)
                            == self
                                .client_ca_file
                                .map(|p| resolve_path(origin, p))
                                .as_ref() =>
                    {
                        "tls_client_ca_file"
                    }
                    majordodo_tls::TlsError::Read { path, .. }
                    | majordodo_tls::TlsError::Pem { path, .. }
                        if Some(path)
                            == self.key_file.map(|p| resolve_path(origin, p)).as_ref() =>
                    {
                        "tls_key_file"
                    }
                    _ => "tls_cert_file",
                };
                invalid(key, error.to_string())
            })
    }
}
