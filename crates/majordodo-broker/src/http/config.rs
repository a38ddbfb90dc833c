//! Settings of the HTTP API as they appear in the broker's TOML file (`[http]`), and their
//! validation into [`HttpSettings`].
//!
//! ```toml
//! [http]
//! max_body_bytes = 16777216       # default 16 MiB
//! cors_allow_origin = "*"         # "" sends no CORS header
//!
//! [[http.users]]
//! name = "admin"
//! role = "admin"                  # or "user": submits and reads only tasks of userid = name
//! password_hash = "$pbkdf2-sha256$i=600000$...$..."   # see auth::hash_password
//! token_sha256 = "9f86d081..."    # hex SHA-256 of a token; see auth::generate_token
//! ```
//!
//! There is no default user and no default password: a broker without users refuses to start its
//! HTTP API ([`HttpConfigError::NoUsers`]).

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use axum::http::HeaderValue;
use serde::Deserialize;

use super::auth::{PasswordHash, TokenDigest, User};

/// Default largest request body. The biggest legitimate body is a `submitTasks` batch: at most
/// [`majordodo_proto::http::MAX_BATCH_TASKS`] tasks of about a kilobyte each fit in 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Default most open HTTP connections. Clients keep connections alive (the Java client pools 10
/// per process); a thousand serves about a hundred client processes, and each idle connection
/// costs only a socket and a few kilobytes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_024;

/// Default most connections open at once from one IP address. Beyond it a new connection from
/// that address is closed at once, so one host (or one attacker) cannot hold every one of the
/// `max_connections`; a hundred is ten Java clients' pools from behind one NAT address.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 128;

/// Default time a client has to send a request's head (request line and headers), counted from
/// the connection's start or from its first byte after an idle pause. A slowloris client that
/// trickles a header line every few seconds is closed when it runs out.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time an idle keep-alive connection (no request in progress, no byte of the next one
/// yet) stays open. Clients pool connections; sixty seconds keeps a busy client's pool warm and
/// closes the ones nobody uses.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default most bytes of request bodies buffered at once, all requests together (256 MiB): a
/// request reserves its declared length (or `max_body_bytes`) before reading its body, so 64
/// maximal bodies cannot hold 1 GiB of memory; the others wait their turn.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Default most password checks waiting for a hashing thread; beyond it a login is answered 503
/// `broker_overloaded` at once instead of queueing without bound.
pub const DEFAULT_MAX_QUEUED_HASHES: usize = 64;

/// Default failed logins (wrong password or unknown user) from one IP address, or for one user,
/// within `auth_failure_window_secs` that start a lock-out.
pub const DEFAULT_AUTH_FAILURE_LIMIT: u32 = 10;

/// Default window in which failed logins are counted.
pub const DEFAULT_AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Default lock-out: while it lasts, password logins from the address (or for the user) are
/// answered 429 without checking the password. Valid tokens and passwords verified before are
/// still accepted, so a flood from a shared address does not lock out working clients.
pub const DEFAULT_AUTH_LOCKOUT: Duration = Duration::from_secs(30);

/// Default life of a dashboard session, counted from its log-in (not renewed by use): a working
/// day, after which the user logs in again.
pub const DEFAULT_UI_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Default most dashboard sessions open at once; a log-in beyond it ends the oldest session. Far
/// above the number of people who watch one broker.
pub const DEFAULT_UI_MAX_SESSIONS: usize = 1_024;

/// Default most requests handled at once; more wait for a turn. Each may buffer a body of up to
/// `max_body_bytes`, so this bounds that memory (64 × 16 MiB = 1 GiB at worst); the broker's
/// dispatcher serializes the work anyway, so more concurrency would not add throughput.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;

/// Default time a client has to send a whole request body once it started; slow or stalled
/// senders are answered 408 instead of holding a request slot forever.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default hard cap on the `max` parameter of the `tasks` view: ten thousand task objects are a
/// few megabytes of JSON, a page a UI or a script can handle.
pub const DEFAULT_TASKS_MAX_LIMIT: u32 = 10_000;

/// Default most candidate tasks one view query examines. A view runs inside the dispatcher,
/// between two rounds of writes, so this bounds how long a read delays the writes behind it:
/// `benches/http_submit.rs` of `majordodo-client` measured a whole 100 000-task scan of a
/// 600 000-task state at about 11 ms (p50) on a 2-core machine, so half that keeps the pause
/// near 5 ms; listings page on with `fromTaskId` beyond it.
pub const DEFAULT_SCAN_BUDGET: usize = 50_000;

/// Default most bytes of task objects (payloads and results included) one view answer carries;
/// bounds the memory and time of one answer when tasks carry large payloads.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Default most password hashes computed at once. Each takes a core for tens of milliseconds;
/// a flood of wrong passwords must not take every core from the broker.
pub const DEFAULT_MAX_CONCURRENT_HASHES: usize = 1;

/// Default largest code-pool archive accepted by `createCodePool`, in bytes (8 MiB): its base64
/// (a third larger) fits the default body limit with room to spare, and it is stored in the log
/// and in every snapshot, so it should stay modest; raise it with `max_body_bytes`.
pub const DEFAULT_CODEPOOL_MAX_ARCHIVE_BYTES: usize = 8 * 1024 * 1024;

/// Default number of users and of task types `/metrics` names one by one (the most tasks
/// first); the rest are summed under `other`, so a broker with a million users still exposes
/// a bounded number of series.
pub const DEFAULT_METRICS_TOP_N: usize = 20;

/// Default largest replication lag, in log entries, at which a follower still answers `/ready`
/// with 200: a follower applies a busy leader's entries a second or so behind (positions are
/// published about once a second), which at thousands of entries a second is a few thousand.
pub const DEFAULT_READY_MAX_LAG: u64 = 10_000;

/// Who may read `/metrics` (`http.metrics_access`). `/health` and `/ready` are always open.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// Anyone who reaches the port, without credentials.
    Open,
    /// Without credentials from a loopback address (a scraper or an agent on the broker's
    /// host); from any other address only with an admin's credentials. The default.
    #[default]
    Loopback,
    /// Only with an admin's credentials, from anywhere.
    Admin,
}

impl MetricsAccess {
    /// The name the configuration file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsAccess::Open => "open",
            MetricsAccess::Loopback => "loopback",
            MetricsAccess::Admin => "admin",
        }
    }
}

/// The `[http]` table of the broker's configuration file. Every key is optional except `users`
/// (at least one is needed to validate).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body in bytes; larger bodies are answered 413. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Most open connections; more wait in the kernel's accept queue. Default 1024.
    pub max_connections: usize,
    /// Most open connections from one IP address; more are closed at once. Default 128.
    pub max_connections_per_address: usize,
    /// Seconds a client has to send a request's head. Default 10.
    pub header_read_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open. Default 60.
    pub keep_alive_timeout_secs: u64,
    /// Most requests handled at once (after authentication); more wait. Default 64.
    pub max_concurrent_requests: usize,
    /// Most bytes of request bodies buffered at once, all requests together. Default 256 MiB.
    pub max_buffered_body_bytes: usize,
    /// Seconds a client has to send a request body. Default 30.
    pub body_timeout_secs: u64,
    /// Value of the `Access-Control-Allow-Origin` header on every answer; empty sends none.
    /// Default `*`, as the original's `apiCorsEnabled=true`.
    pub cors_allow_origin: String,
    /// Origins (`scheme://host[:port]`) whose browser requests are accepted besides the API's
    /// own; `"*"` accepts any. A request whose `Origin` is another is refused 403. Default
    /// none.
    pub allowed_origins: Vec<String>,
    /// Send a Basic challenge (`WWW-Authenticate: Basic`) with 401 answers, which makes browsers
    /// ask for a password. Default false: only a Bearer challenge is sent.
    pub basic_challenge: bool,
    /// Compress answers with gzip when the client accepts it. Default true.
    pub gzip: bool,
    /// Hard cap on the `tasks` view's `max`. Default 10 000.
    pub tasks_max_limit: u32,
    /// Most candidate tasks one view query examines. Default 50 000.
    pub scan_budget: usize,
    /// Most bytes of task objects in one view answer. Default 32 MiB.
    pub max_response_bytes: usize,
    /// Most password hashes verified at once. Default 1.
    pub max_concurrent_hashes: usize,
    /// Most password checks waiting for a hashing thread. Default 64.
    pub max_queued_hashes: usize,
    /// Failed logins from one address or for one user, within the window, that lock it out.
    /// Default 10.
    pub auth_failure_limit: u32,
    /// Seconds in which failed logins are counted. Default 60.
    pub auth_failure_window_secs: u64,
    /// Seconds a lock-out lasts. Default 30.
    pub auth_lockout_secs: u64,
    /// Serve the web dashboard at `/ui`. Default true.
    pub ui: bool,
    /// Seconds a dashboard session lasts after its log-in. Default 8 hours.
    pub ui_session_ttl_secs: u64,
    /// Most dashboard sessions open at once. Default 1024.
    pub ui_max_sessions: usize,
    /// Largest code-pool archive (decoded) `createCodePool` accepts. Default 8 MiB.
    pub codepool_max_archive_bytes: usize,
    /// Most entries of a code-pool archive. Default 10 000.
    pub codepool_max_files: usize,
    /// Most bytes a code-pool archive may unpack to. Default 256 MiB.
    pub codepool_max_unpacked_bytes: u64,
    /// Who may read `/metrics`: `open`, `loopback` or `admin`. Default `loopback`.
    pub metrics_access: MetricsAccess,
    /// Users and task types named one by one in `/metrics`; the rest count as `other`.
    /// Default 20.
    pub metrics_top_n: usize,
    /// Largest lag, in log entries, at which a follower answers `/ready` with 200. Default
    /// 10 000.
    pub ready_max_lag: u64,
    /// Who may call the API.
    pub users: Vec<UserConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT.as_secs(),
            keep_alive_timeout_secs: DEFAULT_KEEP_ALIVE_TIMEOUT.as_secs(),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT.as_secs(),
            cors_allow_origin: "*".into(),
            allowed_origins: Vec::new(),
            basic_challenge: false,
            gzip: true,
            tasks_max_limit: DEFAULT_TASKS_MAX_LIMIT,
            scan_budget: DEFAULT_SCAN_BUDGET,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_concurrent_hashes: DEFAULT_MAX_CONCURRENT_HASHES,
            max_queued_hashes: DEFAULT_MAX_QUEUED_HASHES,
            auth_failure_limit: DEFAULT_AUTH_FAILURE_LIMIT,
            auth_failure_window_secs: DEFAULT_AUTH_FAILURE_WINDOW.as_secs(),
            auth_lockout_secs: DEFAULT_AUTH_LOCKOUT.as_secs(),
            ui: true,
            ui_session_ttl_secs: DEFAULT_UI_SESSION_TTL.as_secs(),
            ui_max_sessions: DEFAULT_UI_MAX_SESSIONS,
            codepool_max_archive_bytes: DEFAULT_CODEPOOL_MAX_ARCHIVE_BYTES,
            codepool_max_files: majordodo_proto::archive::DEFAULT_MAX_FILES,
            codepool_max_unpacked_bytes: majordodo_proto::archive::DEFAULT_MAX_UNPACKED_BYTES,
            metrics_access: MetricsAccess::default(),
            metrics_top_n: DEFAULT_METRICS_TOP_N,
            ready_max_lag: DEFAULT_READY_MAX_LAG,
            users: Vec::new(),
        }
    }
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("keep_alive_timeout_secs", &self.keep_alive_timeout_secs)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_buffered_body_bytes", &self.max_buffered_body_bytes)
            .field("body_timeout_secs", &self.body_timeout_secs)
            .field("cors_allow_origin", &self.cors_allow_origin)
            .field("allowed_origins", &self.allowed_origins)
            .field("basic_challenge", &self.basic_challenge)
            .field("gzip", &self.gzip)
            .field("tasks_max_limit", &self.tasks_max_limit)
            .field("scan_budget", &self.scan_budget)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_concurrent_hashes", &self.max_concurrent_hashes)
            .field("max_queued_hashes", &self.max_queued_hashes)
            .field("auth_failure_limit", &self.auth_failure_limit)
            .field("auth_failure_window_secs", &self.auth_failure_window_secs)
            .field("auth_lockout_secs", &self.auth_lockout_secs)
            .field("ui", &self.ui)
            .field("ui_session_ttl_secs", &self.ui_session_ttl_secs)
            .field("ui_max_sessions", &self.ui_max_sessions)
            .field(
                "codepool_max_archive_bytes",
                &self.codepool_max_archive_bytes,
            )
            .field("codepool_max_files", &self.codepool_max_files)
            .field(
                "codepool_max_unpacked_bytes",
                &self.codepool_max_unpacked_bytes,
            )
            .field("metrics_access", &self.metrics_access)
            .field("metrics_top_n", &self.metrics_top_n)
            .field("ready_max_lag", &self.ready_max_lag)
            .field("users", &self.users)
            .finish()
    }
}

/// What a user may do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Submits tasks for any `userid` and reads every task.
    Admin,
    /// Submits and reads only tasks whose `userid` is the user's name.
    User,
}

/// One `[[http.users]]` entry. At least one of `password_hash` and `token_sha256` is needed.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name, and for role `user` the only `userid` it may submit and read.
    pub name: String,
    /// `admin` or `user`.
    pub role: UserRole,
    /// PBKDF2-HMAC-SHA256 hash of the password (`$pbkdf2-sha256$i=<iterations>$<salt>$<hash>`,
    /// base64 without padding), as made by [`super::auth::hash_password`].
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Hex SHA-256 digest of a bearer token, as made by [`super::auth::token_digest`].
    #[serde(default)]
    pub token_sha256: Option<String>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are not secrets, but they need not end up in logs either.
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<set>"),
            )
            .field("token_sha256", &self.token_sha256.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Why an HTTP configuration is unusable. Not retryable: fix the configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpConfigError {
    /// No user is configured: every request would be refused, and there is no default user.
    #[error("http: no users configured; add at least one [[http.users]] entry")]
    NoUsers,
    /// A user has an empty name.
    #[error("http: a user has an empty name")]
    EmptyUserName,
    /// Two users share a name.
    #[error("http: user {0} is configured twice")]
    DuplicateUser(String),
    /// A user has neither a password hash nor a token digest.
    #[error("http: user {0} has neither password_hash nor token_sha256")]
    NoCredential(String),
    /// A password hash cannot be read.
    #[error("http: user {user}: bad password_hash: {reason}")]
    BadPasswordHash {
        /// The user.
        user: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A token digest is not 64 hex digits.
    #[error("http: user {0}: token_sha256 must be 64 hexadecimal digits")]
    BadTokenDigest(String),
    /// A limit is zero or out of range.
    #[error("http: {0}")]
    BadLimit(&'static str),
    /// The CORS origin cannot be a header value.
    #[error("http: cors_allow_origin is not a valid header value")]
    BadCorsOrigin,
    /// An entry of `allowed_origins` is not `*` nor `scheme://host[:port]`.
    #[error("http: allowed_origins: {0:?} is not \"*\" nor scheme://host[:port]")]
    BadAllowedOrigin(String),
}

/// Validated HTTP settings, ready for [`super::router`].
#[derive(Clone)]
pub struct HttpSettings {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_address: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) max_buffered_body_bytes: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) cors_allow_origin: Option<HeaderValue>,
    /// Lowercased; `None` accepts any origin.
    pub(crate) allowed_origins: Option<Vec<String>>,
    pub(crate) basic_challenge: bool,
    pub(crate) gzip: bool,
    pub(crate) tasks_max_limit: u32,
    pub(crate) scan_budget: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) max_concurrent_hashes: usize,
    pub(crate) max_queued_hashes: usize,
    pub(crate) throttle: super::auth::ThrottleSettings,
    /// The dashboard's sessions; `None` serves no dashboard.
    pub(crate) ui: Option<super::ui::UiSettings>,
    pub(crate) codepool_max_archive_bytes: usize,
    pub(crate) codepool_limits: majordodo_proto::archive::ArchiveLimits,
    pub(crate) metrics_access: MetricsAccess,
    pub(crate) metrics_top_n: usize,
    pub(crate) ready_max_lag: u64,
    pub(crate) users: Vec<User>,
    /// TLS on the API's port; `None` serves plain HTTP.
    pub(crate) tls: Option<majordodo_tls::ServerTls>,
}

impl HttpSettings {
    /// These settings serving HTTPS with `tls` (or plain HTTP with `None`).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<majordodo_tls::ServerTls>) -> HttpSettings {
        self.tls = tls;
        self
    }

    /// The TLS configuration served, if any.
    pub fn tls(&self) -> Option<&majordodo_tls::ServerTls> {
        self.tls.as_ref()
    }
}

impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSettings")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl HttpConfig {
    /// Checks the settings and reads the users' hashes.
    ///
    /// # Errors
    /// [`HttpConfigError`] naming the first problem.
    pub fn validate(&self) -> Result<HttpSettings, HttpConfigError> {
        let limits: [(bool, &'static str); 18] = [
            (self.metrics_top_n == 0, "metrics_top_n must be at least 1"),
            (
                self.max_connections_per_address == 0,
                "max_connections_per_address must be at least 1",
            ),
            (
                self.header_read_timeout_secs == 0,
                "header_read_timeout_secs must be at least 1",
            ),
            (
                self.keep_alive_timeout_secs == 0,
                "keep_alive_timeout_secs must be at least 1",
            ),
            (
                self.max_buffered_body_bytes < self.max_body_bytes,
                "max_buffered_body_bytes must be at least max_body_bytes",
            ),
            (
                self.auth_failure_limit == 0,
                "auth_failure_limit must be at least 1",
            ),
            (
                self.auth_failure_window_secs == 0,
                "auth_failure_window_secs must be at least 1",
            ),
            (
                self.auth_lockout_secs == 0,
                "auth_lockout_secs must be at least 1",
            ),
            (
                self.codepool_max_archive_bytes == 0,
                "codepool_max_archive_bytes must be at least 1",
            ),
            (
                self.codepool_max_files == 0,
                "codepool_max_files must be at least 1",
            ),
            (
                self.codepool_max_unpacked_bytes == 0,
                "codepool_max_unpacked_bytes must be at least 1",
            ),
            (
                self.max_body_bytes == 0,
                "max_body_bytes must be at least 1",
            ),
            (
                self.max_connections == 0,
                "max_connections must be at least 1",
            ),
            (
                self.max_concurrent_requests == 0,
                "max_concurrent_requests must be at least 1",
            ),
            (
                self.body_timeout_secs == 0,
                "body_timeout_secs must be at least 1",
            ),
            (self.scan_budget == 0, "scan_budget must be at least 1"),
            (
                self.max_response_bytes == 0,
                "max_response_bytes must be at least 1",
            ),
            (
                self.max_concurrent_hashes == 0,
                "max_concurrent_hashes must be at least 1",
            ),
        ];
        if let Some((_, problem)) = limits.iter().find(|(bad, _)| *bad) {
            return Err(HttpConfigError::BadLimit(problem));
        }
        if self.ui && self.ui_session_ttl_secs == 0 {
            return Err(HttpConfigError::BadLimit(
                "ui_session_ttl_secs must be at least 1",
            ));
        }
        if self.ui && self.ui_max_sessions == 0 {
            return Err(HttpConfigError::BadLimit(
                "ui_max_sessions must be at least 1",
            ));
        }
        let cors_allow_origin = if self.cors_allow_origin.is_empty() {
            None
        } else {
            Some(
                HeaderValue::from_str(&self.cors_allow_origin)
                    .map_err(|_| HttpConfigError::BadCorsOrigin)?,
            )
        };
        let allowed_origins = if self.allowed_origins.iter().any(|o| o == "*") {
            None
        } else {
            let mut origins = Vec::with_capacity(self.allowed_origins.len());
            for o in &self.allowed_origins {
                let valid = o.split_once("://").is_some_and(|(scheme, host)| {
                    !scheme.is_empty() && !host.is_empty() && !host.contains(['/', ' ', '?', '#'])
                });
                if !valid {
                    return Err(HttpConfigError::BadAllowedOrigin(o.clone()));
                }
                origins.push(o.to_ascii_lowercase());
            }
            Some(origins)
        };
        if self.users.is_empty() {
            return Err(HttpConfigError::NoUsers);
        }
        let mut names = HashSet::new();
        let mut users = Vec::with_capacity(self.users.len());
        for u in &self.users {
            if u.name.is_empty() {
                return Err(HttpConfigError::EmptyUserName);
            }
            if !names.insert(u.name.as_str()) {
                return Err(HttpConfigError::DuplicateUser(u.name.clone()));
            }
            if u.password_hash.is_none() && u.token_sha256.is_none() {
                return Err(HttpConfigError::NoCredential(u.name.clone()));
            }
            let password = u
                .password_hash
                .as_deref()
                .map(PasswordHash::parse)
                .transpose()
                .map_err(|reason| HttpConfigError::BadPasswordHash {
                    user: u.name.clone(),
                    reason,
                })?;
            let token = u
                .token_sha256
                .as_deref()
                .map(TokenDigest::from_hex)
                .transpose()
                .map_err(|_| HttpConfigError::BadTokenDigest(u.name.clone()))?;
            users.push(User {
                name: u.name.as_str().into(),
                role: u.role,
                password,
                token,
            });
        }
        Ok(HttpSettings {
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout_secs),
            max_concurrent_requests: self.max_concurrent_requests,
            max_buffered_body_bytes: self.max_buffered_body_bytes,
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            cors_allow_origin,
            allowed_origins,
            basic_challenge: self.basic_challenge,
            gzip: self.gzip,
            tasks_max_limit: self.tasks_max_limit,
            scan_budget: self.scan_budget,
            max_response_bytes: self.max_response_bytes,
            max_concurrent_hashes: self.max_concurrent_hashes,
            max_queued_hashes: self.max_queued_hashes,
            throttle: super::auth::ThrottleSettings {
                limit: self.auth_failure_limit,
                window: Duration::from_secs(self.auth_failure_window_secs),
                lockout: Duration::from_secs(self.auth_lockout_secs),
            },
            ui: self.ui.then(|| super::ui::UiSettings {
                session_ttl: Duration::from_secs(self.ui_session_ttl_secs),
                max_sessions: self.ui_max_sessions,
            }),
            codepool_max_archive_bytes: self.codepool_max_archive_bytes,
            codepool_limits: majordodo_proto::archive::ArchiveLimits {
                max_files: self.codepool_max_files,
                max_unpacked_bytes: self.codepool_max_unpacked_bytes,
            },
            metrics_access: self.metrics_access,
            metrics_top_n: self.metrics_top_n,
            ready_max_lag: self.ready_max_lag,
            users,
            tls: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::{hash_password_with, token_digest};
    use rand::TryRngCore;

    fn parse(text: &str) -> Result<HttpConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn user(extra: &str) -> String {
        format!("[[users]]\nname = \"admin\"\nrole = \"admin\"\n{extra}\n")
    }

    #[test]
    fn a_file_with_one_user_gets_the_documented_defaults() {
        // Goal: every key but users is optional, with the defaults the constants document.
        let digest = token_digest("mdt_x");
        let c = parse(&user(&format!("token_sha256 = \"{digest}\""))).unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(s.max_concurrent_requests, DEFAULT_MAX_CONCURRENT_REQUESTS);
        assert_eq!(s.body_timeout, DEFAULT_BODY_TIMEOUT);
        assert_eq!(s.cors_allow_origin, Some(HeaderValue::from_static("*")));
        assert!(s.gzip);
        assert_eq!(s.tasks_max_limit, DEFAULT_TASKS_MAX_LIMIT);
        assert_eq!(s.scan_budget, DEFAULT_SCAN_BUDGET);
        assert_eq!(s.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(s.users.len(), 1);
        let c = parse(&format!(
            "cors_allow_origin = \"\"\ngzip = false\n{}",
            user(&format!("token_sha256 = \"{digest}\""))
        ))
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.cors_allow_origin, None);
        assert!(!s.gzip);
    }

    #[test]
    fn unknown_keys_are_refused() {
        // Goal: a misspelled key is an error, not a silently ignored setting.
        assert!(parse("max_body = 5\n").is_err());
        assert!(parse(&user("password = \"plaintext\"")).is_err());
        assert!(parse("[[users]]\nname = \"a\"\nrole = \"root\"\ntoken_sha256 = \"x\"\n").is_err());
    }

    #[test]
    fn unusable_configurations_name_their_problem() {
        // Goal: no users, duplicate or nameless users, missing or malformed credentials and zero
        // limits are refused with the matching error.
        let digest = token_digest("mdt_x");
        let ok = user(&format!("token_sha256 = \"{digest}\""));
        let err = |text: &str| parse(text).unwrap().validate().unwrap_err();
        assert_eq!(err(""), HttpConfigError::NoUsers);
        assert_eq!(
            err(&format!("{ok}{ok}")),
            HttpConfigError::DuplicateUser("admin".into())
        );
        assert_eq!(
            err(&user("")),
            HttpConfigError::NoCredential("admin".into())
        );
        assert_eq!(
            err("[[users]]\nname = \"\"\nrole = \"user\"\ntoken_sha256 = \"00\"\n"),
            HttpConfigError::EmptyUserName
        );
        assert_eq!(
            err(&user("token_sha256 = \"abc\"")),
            HttpConfigError::BadTokenDigest("admin".into())
        );
        assert!(matches!(
            err(&user("password_hash = \"secret\"")),
            HttpConfigError::BadPasswordHash { .. }
        ));
        assert!(matches!(
            err(&format!("max_body_bytes = 0\n{ok}")),
            HttpConfigError::BadLimit(_)
        ));
        assert!(matches!(
            err(&format!("scan_budget = 0\n{ok}")),
            HttpConfigError::BadLimit(_)
        ));
        assert_eq!(
            err(&format!("metrics_top_n = 0\n{ok}")),
            HttpConfigError::BadLimit("metrics_top_n must be at least 1")
        );
        assert!(parse(&format!("metrics_access = \"public\"\n{ok}")).is_err());
        let s = parse(&format!("metrics_access = \"admin\"\n{ok}"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.metrics_access, MetricsAccess::Admin);
        assert_eq!(
            err(&format!("cors_allow_origin = \"a\\nb\"\n{ok}")),
            HttpConfigError::BadCorsOrigin
        );
        let hash = hash_password_with("pw", 1_000, &mut rand::rngs::OsRng.unwrap_err());
        assert!(
            parse(&user(&format!("password_hash = \"{hash}\"")))
                .unwrap()
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn debug_output_hides_credentials() {
        // Goal: hashes never reach logs through Debug.
        let digest = token_digest("mdt_x");
        let c = parse(&user(&format!("token_sha256 = \"{digest}\""))).unwrap();
        assert!(!format!("{c:?}").contains(&digest));
    }
}
