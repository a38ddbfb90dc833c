//! The `[http]` table of the broker's file: the listen address plus the HTTP API's settings,
//! written with this CLI's units (durations and sizes with units), converted into the broker's
//! `HttpConfig` and validated by it.

use majordodo_broker::http::config::MetricsAccess;
use majordodo_broker::http::config::{
    DEFAULT_AUTH_FAILURE_LIMIT, DEFAULT_AUTH_FAILURE_WINDOW, DEFAULT_AUTH_LOCKOUT,
    DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BUFFERED_BODY_BYTES, DEFAULT_MAX_CONCURRENT_HASHES,
    DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_QUEUED_HASHES, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_SCAN_BUDGET,
    DEFAULT_TASKS_MAX_LIMIT,
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
    pub(crate) max_connections_per_address: usize,
    pub(crate) header_read_timeout: HumanDuration,
    pub(crate) keep_alive_timeout: HumanDuration,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) max_buffered_body_size: ByteSize,
    pub(crate) body_timeout: HumanDuration,
    pub(crate) cors_allow_origin: String,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) basic_challenge: bool,
    pub(crate) gzip: bool,
    pub(crate) tasks_max_limit: u32,
    pub(crate) scan_budget: usize,
    pub(crate) max_response_size: ByteSize,
    pub(crate) max_concurrent_hashes: usize,
    pub(crate) max_queued_hashes: usize,
    pub(crate) auth_failure_limit: u32,
    pub(crate) auth_failure_window: HumanDuration,
    pub(crate) auth_lockout: HumanDuration,
    pub(crate) ui: bool,
    pub(crate) ui_session_ttl: HumanDuration,
    pub(crate) ui_max_sessions: usize,
    pub(crate) codepool_max_archive_size: ByteSize,
    pub(crate) codepool_max_files: usize,
    pub(crate) codepool_max_unpacked_size: ByteSize,
    pub(crate) metrics_access: MetricsAccess,
    pub(crate) metrics_top_n: usize,
    pub(crate) ready_max_lag: u64,
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
            max_connections_per_address: d.max_connections_per_address,
            header_read_timeout: secs(d.header_read_timeout_secs),
            keep_alive_timeout: secs(d.keep_alive_timeout_secs),
            max_concurrent_requests: d.max_concurrent_requests,
            max_buffered_body_size: ByteSize(d.max_buffered_body_bytes as u64),
            body_timeout: HumanDuration(std::time::Duration::from_secs(d.body_timeout_secs)),
            cors_allow_origin: d.cors_allow_origin,
            allowed_origins: d.allowed_origins,
            basic_challenge: d.basic_challenge,
            gzip: d.gzip,
            tasks_max_limit: d.tasks_max_limit,
            scan_budget: d.scan_budget,
            max_response_size: ByteSize(d.max_response_bytes as u64),
            max_concurrent_hashes: d.max_concurrent_hashes,
            max_queued_hashes: d.max_queued_hashes,
            auth_failure_limit: d.auth_failure_limit,
            auth_failure_window: secs(d.auth_failure_window_secs),
            auth_lockout: secs(d.auth_lockout_secs),
            ui: d.ui,
            ui_session_ttl: secs(d.ui_session_ttl_secs),
            ui_max_sessions: d.ui_max_sessions,
            codepool_max_archive_size: ByteSize(d.codepool_max_archive_bytes as u64),
            codepool_max_files: d.codepool_max_files,
            codepool_max_unpacked_size: ByteSize(d.codepool_max_unpacked_bytes),
            metrics_access: d.metrics_access,
            metrics_top_n: d.metrics_top_n,
            ready_max_lag: d.ready_max_lag,
            users: Vec::new(),
        }
    }
}

fn secs(n: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(n))
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
        let whole_secs = |key: &str, d: &HumanDuration| {
            if d.0.subsec_millis() != 0 || d.0.as_secs() == 0 {
                return Err(invalid(
                    key,
                    "must be a whole number of seconds, at least 1s".into(),
                ));
            }
            Ok(d.0.as_secs())
        };
        let config = HttpConfig {
            max_body_bytes: to_usize("http.max_body_size", self.max_body_size.0)?,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_read_timeout_secs: whole_secs(
                "http.header_read_timeout",
                &self.header_read_timeout,
            )?,
            keep_alive_timeout_secs: whole_secs(
                "http.keep_alive_timeout",
                &self.keep_alive_timeout,
            )?,
            max_concurrent_requests: self.max_concurrent_requests,
            max_buffered_body_bytes: to_usize(
                "http.max_buffered_body_size",
                self.max_buffered_body_size.0,
            )?,
            body_timeout_secs,
            cors_allow_origin: self.cors_allow_origin.clone(),
            allowed_origins: self.allowed_origins.clone(),
            basic_challenge: self.basic_challenge,
            gzip: self.gzip,
            tasks_max_limit: self.tasks_max_limit,
            scan_budget: self.scan_budget,
            max_response_bytes: to_usize("http.max_response_size", self.max_response_size.0)?,
            max_concurrent_hashes: self.max_concurrent_hashes,
            max_queued_hashes: self.max_queued_hashes,
            auth_failure_limit: self.auth_failure_limit,
            auth_failure_window_secs: whole_secs(
                "http.auth_failure_window",
                &self.auth_failure_window,
            )?,
            auth_lockout_secs: whole_secs("http.auth_lockout", &self.auth_lockout)?,
            ui: self.ui,
            ui_session_ttl_secs: whole_secs("http.ui_session_ttl", &self.ui_session_ttl)?,
            ui_max_sessions: self.ui_max_sessions,
            codepool_max_archive_bytes: to_usize(
                "http.codepool_max_archive_size",
                self.codepool_max_archive_size.0,
            )?,
            codepool_max_files: self.codepool_max_files,
            codepool_max_unpacked_bytes: self.codepool_max_unpacked_size.0,
            metrics_access: self.metrics_access,
            metrics_top_n: self.metrics_top_n,
            ready_max_lag: self.ready_max_lag,
            users: self.users.clone(),
        };
        config.validate().map_err(|e| {
            let key = match &e {
                HttpConfigError::BadLimit(problem) => {
                    let name = problem.split_whitespace().next().unwrap_or("");
                    format!("http.{}", rename_limit(name))
                }
                HttpConfigError::BadCorsOrigin => "http.cors_allow_origin".into(),
                HttpConfigError::BadAllowedOrigin(_) => "http.allowed_origins".into(),
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
        "header_read_timeout_secs" => "header_read_timeout",
        "keep_alive_timeout_secs" => "keep_alive_timeout",
        "max_buffered_body_bytes" => "max_buffered_body_size",
        "auth_failure_window_secs" => "auth_failure_window",
        "auth_lockout_secs" => "auth_lockout",
        "ui_session_ttl_secs" => "ui_session_ttl",
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
    debug_assert_eq!(
        h.max_connections_per_address,
        DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    );
    debug_assert_eq!(h.header_read_timeout.0, DEFAULT_HEADER_READ_TIMEOUT);
    debug_assert_eq!(h.keep_alive_timeout.0, DEFAULT_KEEP_ALIVE_TIMEOUT);
    debug_assert_eq!(
        h.max_buffered_body_size.0,
        DEFAULT_MAX_BUFFERED_BODY_BYTES as u64
    );
    debug_assert_eq!(h.max_queued_hashes, DEFAULT_MAX_QUEUED_HASHES);
    debug_assert_eq!(h.auth_failure_limit, DEFAULT_AUTH_FAILURE_LIMIT);
    debug_assert_eq!(h.auth_failure_window.0, DEFAULT_AUTH_FAILURE_WINDOW);
    debug_assert_eq!(h.auth_lockout.0, DEFAULT_AUTH_LOCKOUT);
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
# Most open HTTP connections from one IP address; more are closed at once.
max_connections_per_address = {max_connections_per_address}
# Time a client has to send a request's head (request line and headers; whole seconds).
header_read_timeout = "{header_read_timeout}"
# Time an idle keep-alive connection stays open (whole seconds).
keep_alive_timeout = "{keep_alive_timeout}"
# Most requests handled at once (after authentication); more wait their turn.
max_concurrent_requests = {max_concurrent_requests}
# Most bytes of request bodies buffered at once, all requests together.
max_buffered_body_size = "{max_buffered_body_size}"
# Time a client has to send a request body (whole seconds).
body_timeout = "{body_timeout}"
# Access-Control-Allow-Origin sent on every answer; "" sends none.
cors_allow_origin = "{cors}"
# Origins (scheme://host[:port]) whose browser requests are accepted besides the API's own;
# "*" accepts any. Requests with another Origin are refused 403.
allowed_origins = []
# Send a Basic challenge with 401 answers (browsers then prompt for a password).
basic_challenge = {basic_challenge}
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
# Most password checks waiting for a hashing thread; beyond it logins are answered 503.
max_queued_hashes = {max_queued_hashes}
# Failed password logins from one address, or for one user, within auth_failure_window that
# lock its password logins out (429) for auth_lockout. Tokens still work.
auth_failure_limit = {auth_failure_limit}
auth_failure_window = "{auth_failure_window}"
auth_lockout = "{auth_lockout}"
# Serve the web dashboard at /ui (log-in with the users below; see docs/ui.md).
ui = {ui}
# How long a dashboard session lasts after its log-in, and most sessions open at once (a
# log-in beyond it ends the oldest session).
ui_session_ttl = "{ui_session_ttl}"
ui_max_sessions = {ui_max_sessions}
# Largest code-pool archive createCodePool accepts (its base64 must also fit max_body_size).
codepool_max_archive_size = "{codepool_max_archive_size}"
# Most entries (files and directories) of a code-pool archive.
codepool_max_files = {codepool_max_files}
# Most bytes a code-pool archive may unpack to (counted while decompressing).
codepool_max_unpacked_size = "{codepool_max_unpacked_size}"
# Who may read /metrics: "loopback" (no credentials from this host, an admin's from any other),
# "admin" (an admin's credentials from anywhere) or "open" (anyone). /health and /ready are open.
metrics_access = "{metrics_access}"
# Users and task types /metrics names one by one (most tasks first); the rest count as "other".
metrics_top_n = {metrics_top_n}
# Largest replication lag (log entries) at which a follower answers /ready with 200.
ready_max_lag = {ready_max_lag}

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
        max_connections_per_address = h.max_connections_per_address,
        header_read_timeout = h.header_read_timeout,
        keep_alive_timeout = h.keep_alive_timeout,
        max_concurrent_requests = h.max_concurrent_requests,
        max_buffered_body_size = h.max_buffered_body_size,
        body_timeout = h.body_timeout,
        cors = h.cors_allow_origin,
        basic_challenge = h.basic_challenge,
        gzip = h.gzip,
        tasks_max_limit = h.tasks_max_limit,
        scan_budget = h.scan_budget,
        max_response_size = h.max_response_size,
        max_concurrent_hashes = h.max_concurrent_hashes,
        max_queued_hashes = h.max_queued_hashes,
        auth_failure_limit = h.auth_failure_limit,
        auth_failure_window = h.auth_failure_window,
        auth_lockout = h.auth_lockout,
        ui = h.ui,
        ui_session_ttl = h.ui_session_ttl,
        ui_max_sessions = h.ui_max_sessions,
        codepool_max_archive_size = h.codepool_max_archive_size,
        codepool_max_files = h.codepool_max_files,
        codepool_max_unpacked_size = h.codepool_max_unpacked_size,
        metrics_access = h.metrics_access.as_str(),
        metrics_top_n = h.metrics_top_n,
        ready_max_lag = h.ready_max_lag,
    )
}
