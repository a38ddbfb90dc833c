//! The `[http]` table of the broker's file: the listen address plus the HTTP API's settings,
//! written with this CLI's units (durations and sizes with units), converted into the broker's
//! `HttpConfig` and validated by it.

use majordodo_broker::http::config::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT_HASHES,
    DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_SCAN_BUDGET, DEFAULT_TASKS_MAX_LIMIT,
};
use majordodo_broker::http::{HttpConfig, HttpConfigError, UserConfig};
use serde::Deserialize;

pub(crate) use majordodo_broker::http::HttpSettings;

use crate::config::broker::DEFAULT_HTTP_LISTEN;
use crate::config::{ByteSize, ConfigError, HumanDuration, Origin};

/// `[http]` as written in the broker's file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpFile {
    pub(crate) listen: String,
    pub(crate) tls_cert_file: Option<std::path::PathBuf>,
    pub(crate) tls_key_file: Option<std::path::PathBuf>,
    pub(crate) allow_plaintext: bool,
    pub(crate) max_body_size: ByteSize,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) body_timeout: HumanDuration,
    pub(crate) cors_allow_origin: String,
    pub(crate) gzip: bool,
    pub(crate) tasks_max_limit: u32,
    pub(crate) scan_budget: usize,
    pub(crate) max_response_size: ByteSize,
    pub(crate) max_concurrent_hashes: usize,
    pub(crate) codepool_max_archive_size: ByteSize,
    pub(crate) codepool_max_files: usize,
    pub(crate) codepool_max_unpacked_size: ByteSize,
    pub(crate) users: Vec<UserConfig>,
}

impl Default for HttpFile {
    fn default() -> Self {
        let d = HttpConfig::default();
        HttpFile {
            listen: DEFAULT_HTTP_LISTEN.into(),
            tls_cert_file: None,
            tls_key_file: None,
            allow_plaintext: false,
            max_body_size: ByteSize(d.max_body_bytes as u64),
            max_connections: d.max_connections,
            max_concurrent_requests: d.max_concurrent_requests,
            body_timeout: HumanDuration(std::time::Duration::from_secs(d.body_timeout_secs)),
            cors_allow_origin: d.cors_allow_origin,
            gzip: d.gzip,
            tasks_max_limit: d.tasks_max_limit,
            scan_budget: d.scan_budget,
            max_response_size: ByteSize(d.max_response_bytes as u64),
            max_concurrent_hashes: d.max_concurrent_hashes,
            codepool_max_archive_size: ByteSize(d.codepool_max_archive_bytes as u64),
            codepool_max_files: d.codepool_max_files,
            codepool_max_unpacked_size: ByteSize(d.codepool_max_unpacked_bytes),
            users: Vec::new(),
        }
    }
}

impl HttpFile {
    /// Converts to the broker's config and validates it.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the `http.` key.
    pub(crate) fn validate(&self, origin: &Origin) -> Result<HttpSettings, ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::invalid(origin, key, problem);
        let to_usize =
            |key: &str, v: u64| usize::try_from(v).map_err(|_| invalid(key, "too large".into()));
        let body_timeout_secs = self.body_timeout.0.as_secs();
        if body_timeout_secs == 0 || self.body_timeout.0.subsec_millis() != 0 {
            return Err(invalid(
                "http.body_timeout",
                "must be a whole number of seconds, at least 1s".into(),
            ));
        }
        let config = HttpConfig {
            max_body_bytes: to_usize("http.max_body_size", self.max_body_size.0)?,
            max_connections: self.max_connections,
            max_concurrent_requests: self.max_concurrent_requests,
            body_timeout_secs,
            cors_allow_origin: self.cors_allow_origin.clone(),
            gzip: self.gzip,
            tasks_max_limit: self.tasks_max_limit,
            scan_budget: self.scan_budget,
            max_response_bytes: to_usize("http.max_response_size", self.max_response_size.0)?,
            max_concurrent_hashes: self.max_concurrent_hashes,
            codepool_max_archive_bytes: to_usize(
                "http.codepool_max_archive_size",
                self.codepool_max_archive_size.0,
            )?,
            codepool_max_files: self.codepool_max_files,
            codepool_max_unpacked_bytes: self.codepool_max_unpacked_size.0,
            users: self.users.clone(),
        };
        config.validate().map_err(|e| {
            let key = match &e {
                HttpConfigError::BadLimit(problem) => {
                    let name = problem.split_whitespace().next().unwrap_or("");
                    format!("http.{}", rename_limit(name))
                }
                HttpConfigError::BadCorsOrigin => "http.cors_allow_origin".into(),
                _ => "http.users".into(),
            };
            let problem = e.to_string();
            let problem = problem
                .strip_prefix("http: ")
                .unwrap_or(&problem)
                .to_owned();
            invalid(&key, problem)
        })
    }
}

/// The key of this file for a setting named as in the broker's `HttpConfig`.
fn rename_limit(name: &str) -> &str {
    match name {
        "max_body_bytes" => "max_body_size",
        "max_response_bytes" => "max_response_size",
        "body_timeout_secs" => "body_timeout",
        "codepool_max_archive_bytes" => "codepool_max_archive_size",
        "codepool_max_unpacked_bytes" => "codepool_max_unpacked_size",
        other => other,
    }
}

/// The commented `[http]` section of the default broker file.
pub(crate) fn default_section() -> String {
    let h = HttpFile::default();
    debug_assert_eq!(h.max_body_size.0, DEFAULT_MAX_BODY_BYTES as u64);
    debug_assert_eq!(h.max_connections, DEFAULT_MAX_CONNECTIONS);
    debug_assert_eq!(h.max_concurrent_requests, DEFAULT_MAX_CONCURRENT_REQUESTS);
    debug_assert_eq!(h.body_timeout.0, DEFAULT_BODY_TIMEOUT);
    debug_assert_eq!(h.tasks_max_limit, DEFAULT_TASKS_MAX_LIMIT);
    debug_assert_eq!(h.scan_budget, DEFAULT_SCAN_BUDGET);
    debug_assert_eq!(h.max_response_size.0, DEFAULT_MAX_RESPONSE_BYTES as u64);
    debug_assert_eq!(h.max_concurrent_hashes, DEFAULT_MAX_CONCURRENT_HASHES);
    format!(
        r#"[http]
# Address of the HTTP API (http://<listen>/majordodo, https:// with TLS). Use 0.0.0.0:7364 to
# serve other hosts: that needs TLS (tls_cert_file, tls_key_file) or allow_plaintext = true.
listen = "{listen}"
# TLS: the API's PEM certificate chain (its certificate first) and private key; reloaded when
# the files change or on SIGHUP. Unset, the API is plain HTTP.
# tls_cert_file = "broker.crt"
# tls_key_file = "broker.key"
# Serve plain HTTP on an address that is not loopback (without TLS, refused by default).
allow_plaintext = {allow_plaintext}
# Largest request body; larger ones are answered 413.
max_body_size = "{max_body_size}"
# Most open HTTP connections.
max_connections = {max_connections}
# Most requests handled at once; more wait their turn.
max_concurrent_requests = {max_concurrent_requests}
# Time a client has to send a request body (whole seconds).
body_timeout = "{body_timeout}"
# Access-Control-Allow-Origin sent on every answer; "" sends none.
cors_allow_origin = "{cors}"
# Compress answers with gzip when the client accepts it.
gzip = {gzip}
# Largest `max` of the tasks view.
tasks_max_limit = {tasks_max_limit}
# Most tasks one view examines (bounds the pause a read imposes on writes).
scan_budget = {scan_budget}
# Most bytes of tasks in one view answer.
max_response_size = "{max_response_size}"
# Most password hashes verified at once (each takes a core for tens of milliseconds).
max_concurrent_hashes = {max_concurrent_hashes}
# Largest code-pool archive createCodePool accepts (its base64 must also fit max_body_size).
codepool_max_archive_size = "{codepool_max_archive_size}"
# Most entries (files and directories) of a code-pool archive.
codepool_max_files = {codepool_max_files}
# Most bytes a code-pool archive may unpack to (counted while decompressing).
codepool_max_unpacked_size = "{codepool_max_unpacked_size}"

# REQUIRED: at least one user. Roles: "admin" (every task) or "user" (submits and reads only the
# tasks whose userid is its name). Credentials: `token_sha256` (from `majordodo auth new-token`)
# and/or `password_hash` (from `majordodo auth hash-password`). There is no default password.
[[http.users]]
name = "admin"
role = "admin"
token_sha256 = "<64 hex digits printed by: majordodo auth new-token --out admin.token>"
# password_hash = "<printed by: majordodo auth hash-password>"
"#,
        listen = h.listen,
        allow_plaintext = h.allow_plaintext,
        max_body_size = h.max_body_size,
        max_connections = h.max_connections,
        max_concurrent_requests = h.max_concurrent_requests,
        body_timeout = h.body_timeout,
        cors = h.cors_allow_origin,
        gzip = h.gzip,
        tasks_max_limit = h.tasks_max_limit,
        scan_budget = h.scan_budget,
        max_response_size = h.max_response_size,
        max_concurrent_hashes = h.max_concurrent_hashes,
        codepool_max_archive_size = h.codepool_max_archive_size,
        codepool_max_files = h.codepool_max_files,
        codepool_max_unpacked_size = h.codepool_max_unpacked_size,
    )
}
