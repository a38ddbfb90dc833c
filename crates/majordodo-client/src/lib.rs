//! A typed async client of the Majordodo HTTP API (`/majordodo`), for this broker and the
//! original alike.
//!
//! ```no_run
//! # async fn demo() -> Result<(), majordodo_client::ClientError> {
//! use majordodo_client::{Auth, Client, Submitted, TaskSubmission};
//!
//! let client = Client::new("http://127.0.0.1:7364", Auth::bearer("mdt_..."))?;
//! match client.submit(&TaskSubmission::new("report", "alice", "payload")).await? {
//!     Submitted::Created(id) => println!("task {id}"),
//!     Submitted::NotCreated(why) => println!("not created: {why}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Errors are a [`ClientError`]; [`ClientError::is_retryable`] tells whether the same request
//! may succeed later (the broker is unavailable, not the request wrong).
//!
//! **Retries.** The client retries on its own what cannot have happened twice ([`retry`]):
//! `broker_not_leader`, `recovery_in_progress`, `broker_not_started`, `broker_overloaded`, and
//! connection failures, with bounded exponential backoff ([`RetryPolicy`]), never
//! `outcome_unknown` nor a 4xx. Every submitted task gets a fresh random idempotency key unless
//! the caller set one ([`new_idempotency_key`]); a retried submission reuses the same keys, so
//! a submission whose answer was lost, or that crossed a leader change, creates its tasks
//! exactly once (within the broker's `tasks.idempotency_window`). After `outcome_unknown`, the
//! caller may submit again with the same keys, safely.
//!
//! **Finding the leader.** A client of a fixed URL ([`Client::new`]) follows the `leader` URL a
//! `broker_not_leader` answer may carry. A client built with [`Client::discover`] reads the
//! leader's URL from ZooKeeper ([`ZkDiscovery`]) and reads it again after every failure.
//!
//! [`Client::tasks`] reads one answer of the `tasks` view, which the broker bounds by its scan
//! budget; [`Client::list_tasks`] follows its paging until it has the tasks asked for, and says
//! how the listing ended ([`ListEnd`]).

pub mod discovery;
mod list;
pub mod retry;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use majordodo_proto::http::codepool::{
    CodePoolActionResponse, CodePoolInfo, CodePoolView, CodePoolsView, CreateCodePool,
};
use majordodo_proto::http::{
    ActionRequest, CancelTaskResponse, DelayedQueueView, ErrorBody, LeaderHint, OverviewView,
    SlotsView, StatusView, SubmitResult, SubmitTaskResponse, SubmitTasksResponse, TaskView,
    TasksOverviewView, TasksView, TransactionResponse, TransactionsView, ViewRequest, WorkersView,
};
use rand::Rng;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, info};

pub use discovery::{DEFAULT_ZK_BASE_PATH, DiscoveryError, ZkDiscovery};
pub use list::{DEFAULT_LIST_MAX_REQUESTS, DEFAULT_LIST_MAX_TIME, ListEnd, ListLimits, TaskList};
pub use majordodo_proto::http::{
    ADMIN_TOKEN_FILE, API_PATH, BrokerStatusInfo, StatusFilter, TaskInfo, TaskSubmission,
    TasksOverviewQuery, TasksQuery, WorkerInfo,
};
pub use retry::RetryPolicy;

/// Default time for a whole request (connect, send, wait, read). Submissions are answered once
/// durable, which takes milliseconds; a minute leaves room for a broker under heavy load.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time to open a connection to the broker.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The words of the original's retryable errors; an answer containing one is retryable.
const RETRYABLE_WORDS: [&str; 4] = [
    "broker_not_leader",
    "recovery_in_progress",
    "broker_not_started",
    "broker_overloaded",
];

/// How the client authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (every request of this broker will be refused; the original accepted
    /// unauthenticated reads).
    None,
    /// HTTP Basic.
    Basic {
        /// User name.
        user: String,
        /// Password (or the user's token).
        password: String,
    },
    /// A bearer token.
    Bearer(String),
}

impl Auth {
    /// Basic credentials.
    pub fn basic(user: impl Into<String>, password: impl Into<String>) -> Auth {
        Auth::Basic {
            user: user.into(),
            password: password.into(),
        }
    }

    /// A bearer token.
    pub fn bearer(token: impl Into<String>) -> Auth {
        Auth::Bearer(token.into())
    }

    /// The bearer token stored in a token file (such as the one `majordodo standalone` writes
    /// into its data directory, [`ADMIN_TOKEN_FILE`]).
    ///
    /// # Errors
    /// [`ClientError::TokenFile`] when the file cannot be read or holds no token.
    pub fn from_token_file(path: &Path) -> Result<Auth, ClientError> {
        let token_file = |problem: String| ClientError::TokenFile {
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| token_file(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(token_file("does not hold one token".into()));
        }
        Ok(Auth::Bearer(token.to_owned()))
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { user, .. } => write!(f, "Basic({user}, <password>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker URL is unusable. Fix it.
    #[error("invalid broker url {url:?}: {problem}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// A token file could not be used.
    #[error("token file {path}: {problem}")]
    TokenFile {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The credentials were refused (401). Not retryable with the same credentials.
    #[error("credentials refused: {0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed (403): a user submitting for another `userid`.
    #[error("forbidden: {}{message}", field_prefix(.field))]
    Forbidden {
        /// The request field at fault.
        field: Option<String>,
        /// The broker's explanation.
        message: String,
    },
    /// The request is malformed or out of range (400). Fix the request.
    #[error("bad request: {}{message}", field_prefix(.field))]
    BadRequest {
        /// The request field at fault.
        field: Option<String>,
        /// The broker's explanation.
        message: String,
    },
    /// The request, or a task in it, is too large (413). Not retryable as is.
    #[error("request too large: {0}")]
    TooLarge(String),
    /// The broker cannot serve now (not leader, recovering, stopped, overloaded). Retryable,
    /// later or against another broker.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// Any other refusal, with its HTTP status.
    #[error("broker answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The broker's explanation.
        message: String,
    },
    /// The broker could not be reached, or the connection failed mid-request. Retryable; for a
    /// submission the tasks may or may not have been created.
    #[error("cannot reach the broker: {0}")]
    Transport(#[source] reqwest::Error),
    /// The broker's TLS certificate was refused: issued by a CA that is not trusted (give the
    /// right one with [`ClientBuilder::ca_file`]), not valid for the host of the URL, or
    /// expired. Not retryable; nothing was sent.
    #[error("the broker's certificate is not trusted: {0}")]
    UntrustedCertificate(String),
    /// The TLS settings cannot be used (a CA file that cannot be read). Fix them.
    #[error("tls settings: {0}")]
    Tls(String),
    /// The answer is not what the API promises (a different service, a proxy's page).
    #[error("unexpected answer from the broker: {0}")]
    Decode(String),
    /// Writing what was downloaded failed (a snapshot's destination file).
    #[error("write the download: {0}")]
    Write(#[source] std::io::Error),
    /// The leader could not be found through ZooKeeper. Retryable when
    /// [`DiscoveryError::is_retryable`] says so.
    #[error("cannot find the leader: {0}")]
    Discovery(#[from] DiscoveryError),
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

impl ClientError {
    /// A failed exchange: [`ClientError::UntrustedCertificate`] when TLS refused the broker's
    /// certificate, else [`ClientError::Transport`].
    fn transport(error: reqwest::Error) -> ClientError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = cause {
            let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
                e.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(rustls::Error::InvalidCertificate(why)) = tls {
                return ClientError::UntrustedCertificate(format!("{why:?}"));
            }
            // The connector may box the TLS error into a type of its own that keeps only its
            // text: rustls's text for a refused certificate is recognisable.
            if let Some(why) = e.to_string().strip_prefix("invalid peer certificate: ") {
                return ClientError::UntrustedCertificate(why.to_owned());
            }
            cause = e.source();
        }
        ClientError::Transport(error)
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable(_) | ClientError::Transport(_) => true,
            ClientError::Refused { status, .. } => *status == 408,
            ClientError::Discovery(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether retrying cannot carry out the request twice: the broker said it did nothing,
    /// or the connection failed before the request was sent. A transport failure after that
    /// is retryable ([`ClientError::is_retryable`]) but may have been carried out.
    pub fn is_retryable_without_key(&self) -> bool {
        match self {
            ClientError::Transport(e) => e.is_connect(),
            other => other.is_retryable(),
        }
    }

    /// The request field the broker named, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Forbidden { field, .. } | ClientError::BadRequest { field, .. } => {
                field.as_deref()
            }
            _ => None,
        }
    }
}

/// What became of one submitted task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Created with this id.
    Created(u64),
    /// Not created, for a reason that is not an error (`slot x already assigned`).
    NotCreated(String),
}

impl Submitted {
    fn from_parts(task_id: u64, outcome: Option<String>) -> Submitted {
        if task_id > 0 {
            Submitted::Created(task_id)
        } else {
            Submitted::NotCreated(outcome.unwrap_or_default())
        }
    }

    /// The task id, if created.
    pub fn task_id(&self) -> Option<u64> {
        match self {
            Submitted::Created(id) => Some(*id),
            Submitted::NotCreated(_) => None,
        }
    }
}

/// A fresh random idempotency key (128 random bits in hex), as the client gives every task
/// submitted without one. Keep it with the submission to send it again safely later.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// Where requests go.
#[derive(Clone, Debug)]
enum Source {
    /// A fixed URL (the API URL, or `http://host:port`).
    Url(String),
    /// The leader named in ZooKeeper.
    ZooKeeper(Arc<ZkDiscovery>),
}

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    source: Source,
    auth: Auth,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    idempotency_keys: bool,
    ca_file: Option<std::path::PathBuf>,
}

impl ClientBuilder {
    /// Verify an `https://` broker against the CA certificates of this PEM file instead of the
    /// system's root certificates (the default). The broker is always verified.
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Credentials.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Time for a whole request; default [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time to connect; default [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How requests the broker could not serve are retried; default [`RetryPolicy::default`]
    /// (at most a minute), [`RetryPolicy::none`] to never retry.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether tasks submitted without an idempotency key get a fresh one (default true).
    /// Without keys, a submission is not retried after a connection that failed once the
    /// request was sent (it may have been carried out); turn keys off only for a broker that
    /// does not know `idempotencyKey`.
    pub fn idempotency_keys(mut self, on: bool) -> Self {
        self.idempotency_keys = on;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when the URL is not `http[s]://host[:port][/majordodo]`.
    pub fn build(self) -> Result<Client, ClientError> {
        let fixed = match &self.source {
            Source::Url(url) => Some(api_url(url)?),
            Source::ZooKeeper(_) => None,
        };
        let tls = majordodo_tls::client_config(&majordodo_tls::ClientTlsFiles {
            ca_file: self.ca_file.clone(),
            ..Default::default()
        });
        let tls = match (tls, &self.ca_file) {
            (Ok(tls), _) => Some(tls),
            (Err(error), Some(_)) => return Err(ClientError::Tls(error.to_string())),
            // Without a CA file and without system roots, only plain http:// can work: an
            // https:// broker is then refused as untrusted.
            (Err(_), None) => None,
        };
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout);
        if let Some(tls) = tls {
            http = http.use_preconfigured_tls(Arc::unwrap_or_clone(tls));
        }
        let http = http.build().map_err(|e| ClientError::InvalidUrl {
            url: self.describe(),
            problem: format!("cannot build an http client: {e}"),
        })?;
        Ok(Client {
            http,
            endpoint: Arc::new(Endpoint {
                discovery: match self.source {
                    Source::ZooKeeper(d) => Some(d),
                    Source::Url(_) => None,
                },
                fixed,
                current: Mutex::new(None),
            }),
            auth: self.auth,
            retry: self.retry,
            idempotency_keys: self.idempotency_keys,
        })
    }

    fn describe(&self) -> String {
        match &self.source {
            Source::Url(url) => url.clone(),
            Source::ZooKeeper(d) => zk_description(d),
        }
    }
}

fn zk_description(d: &ZkDiscovery) -> String {
    format!("zookeeper {} {}", d.connect_string(), d.leader_path())
}

/// Where the next request goes, and what is learnt from failures.
#[derive(Debug)]
struct Endpoint {
    /// Where the leader is published, for a discovering client.
    discovery: Option<Arc<ZkDiscovery>>,
    /// The configured URL, for a client of a fixed URL.
    fixed: Option<reqwest::Url>,
    /// The URL in use, when it is not `fixed`: the leader found in ZooKeeper, or the leader
    /// a `broker_not_leader` answer named. Cleared after a failure.
    current: Mutex<Option<reqwest::Url>>,
}

impl Endpoint {
    fn current(&self) -> Option<reqwest::Url> {
        self.current
            .lock()
            .expect("the endpoint lock is never held across a panic")
            .clone()
    }

    fn set_current(&self, url: Option<reqwest::Url>) {
        *self
            .current
            .lock()
            .expect("the endpoint lock is never held across a panic") = url;
    }

    /// The URL of the next attempt: the current one, else the fixed one, else the leader read
    /// from ZooKeeper now.
    async fn resolve(&self) -> Result<reqwest::Url, ClientError> {
        if let Some(url) = self.current() {
            return Ok(url);
        }
        if let Some(url) = &self.fixed {
            return Ok(url.clone());
        }
        let discovery = self
            .discovery
            .as_ref()
            .expect("a client has a fixed url or discovery");
        let published = discovery.leader_api_url().await?;
        let url = api_url(&published).map_err(|e| {
            ClientError::Discovery(DiscoveryError::Malformed {
                path: discovery.leader_path().to_owned(),
                problem: format!("client.api.url: {e}"),
            })
        })?;
        debug!(url = %url, "leader found in zookeeper");
        self.set_current(Some(url.clone()));
        Ok(url)
    }

    /// An attempt failed: go to the leader the broker named, if it named a usable one, else
    /// back to the fixed URL or to ZooKeeper.
    fn failed(&self, leader: Option<&str>) {
        let next = leader.and_then(|url| api_url(url).ok());
        if let Some(url) = &next {
            debug!(url = %url, "following the leader the broker named");
        }
        self.set_current(next);
    }

    fn describe(&self) -> String {
        match (self.current(), &self.fixed, &self.discovery) {
            (Some(url), _, _) => url.to_string(),
            (None, Some(url), _) => url.to_string(),
            (None, None, Some(d)) => zk_description(d),
            (None, None, None) => String::new(),
        }
    }
}

/// One request, sent again on each attempt.
enum Call<'a> {
    Get(&'a [(&'static str, String)]),
    Post(&'a [u8]),
}

/// A failed attempt: the error, and the leader URL the broker named, if any.
struct Failure {
    error: ClientError,
    leader: Option<String>,
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure {
            error,
            leader: None,
        }
    }
}

/// The API URL of a broker address: `http://host:port` gets [`API_PATH`] appended; a URL with a
/// path is taken as the API URL.
fn api_url(url: &str) -> Result<reqwest::Url, ClientError> {
    let invalid = |problem: &str| ClientError::InvalidUrl {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let mut parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(invalid("only http:// and https:// are supported"));
    }
    if parsed.host_str().is_none() {
        return Err(invalid("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("must not have a query or a fragment"));
    }
    if parsed.path() == "/" || parsed.path().is_empty() {
        parsed.set_path(API_PATH);
    }
    Ok(parsed)
}

/// A client of a broker, or of whichever broker leads. Cheap to clone (connections are pooled,
/// and the leader found is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: Arc<Endpoint>,
    auth: Auth,
    retry: RetryPolicy,
    idempotency_keys: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.endpoint.describe())
            .field("auth", &self.auth)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Client {
    /// A client of the broker at `url` (`http://host:port`, or the full API URL).
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`].
    pub fn new(url: &str, auth: Auth) -> Result<Client, ClientError> {
        Client::builder(url).auth(auth).build()
    }

    /// Settings for a client of the broker at `url`.
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder::with_source(Source::Url(url.to_owned()))
    }

    /// Settings for a client of the leader that `discovery` finds in ZooKeeper (read on the
    /// first request and again after each failure).
    pub fn discover(discovery: ZkDiscovery) -> ClientBuilder {
        ClientBuilder::with_source(Source::ZooKeeper(Arc::new(discovery)))
    }

    /// The API URL requests go to now (for a discovering client before it found the leader:
    /// where it looks for it).
    pub fn url(&self) -> String {
        self.endpoint.describe()
    }

    /// Submits one task; answered once it is durable. Without an idempotency key the task gets
    /// a fresh one (unless turned off, [`ClientBuilder::idempotency_keys`]); retries reuse it.
    ///
    /// # Errors
    /// [`ClientError`]: bad field (400), other user's `userid` (403), broker unavailable once
    /// the retries are spent, `outcome_unknown` (500), ...
    pub async fn submit(&self, task: &TaskSubmission) -> Result<Submitted, ClientError> {
        let task = self.keyed(task.clone());
        let keyed = task.idempotency_key.is_some();
        let body = ActionRequest::SubmitTask(task).to_json();
        let r: SubmitTaskResponse = self.post(&body, keyed).await?;
        Ok(Submitted::from_parts(r.task_id, r.result.or(r.outcome)))
    }

    /// `task` with a fresh idempotency key if it has none and keys are on (not inside a
    /// transaction, where keys are refused: the commit is what a client repeats).
    fn keyed(&self, mut task: TaskSubmission) -> TaskSubmission {
        if self.idempotency_keys && task.idempotency_key.is_none() && task.transaction.is_none() {
            task.idempotency_key = Some(new_idempotency_key());
        }
        task
    }

    /// Submits a batch as one request (one log write); results come in request order.
    ///
    /// # Errors
    /// As [`Client::submit`]; a bad task fails the whole batch (nothing is created) and the
    /// error's field says which (`tasks[3].maxattempts`).
    pub async fn submit_many(
        &self,
        tasks: &[TaskSubmission],
    ) -> Result<Vec<Submitted>, ClientError> {
        let tasks: Vec<TaskSubmission> = tasks.iter().map(|t| self.keyed(t.clone())).collect();
        let keyed = tasks.iter().all(|t| t.idempotency_key.is_some());
        let n = tasks.len();
        let body = ActionRequest::SubmitTasks(tasks).to_json();
        let r: SubmitTasksResponse = self.post(&body, keyed).await?;
        if r.results.len() != n {
            return Err(ClientError::Decode(format!(
                "{} results for {n} tasks",
                r.results.len(),
            )));
        }
        Ok(r.results
            .into_iter()
            .map(
                |SubmitResult {
                     task_id,
                     result,
                     outcome,
                     ..
                 }| { Submitted::from_parts(task_id, result.or(outcome)) },
            )
            .collect())
    }

    /// Opens a transaction owned by the caller and returns its id; submit into it with
    /// [`TaskSubmission::in_transaction`], then commit or roll it back. Not retried after a lost
    /// answer (that would open a second one; an abandoned one is rolled back by the broker).
    ///
    /// # Errors
    /// [`ClientError`]: 429 when the broker's open transactions are at their limit, ...
    pub async fn begin_transaction(&self) -> Result<u64, ClientError> {
        let body = ActionRequest::BeginTransaction.to_json();
        let r: TransactionResponse = self.post(&body, false).await?;
        Ok(r.transaction)
    }

    /// Publishes every task prepared in transaction `id` at once.
    ///
    /// # Errors
    /// [`ClientError`]: 404 never begun, 409 no longer open (committed, rolled back, expired),
    /// 403 somebody else's.
    pub async fn commit_transaction(&self, id: u64) -> Result<(), ClientError> {
        let body = ActionRequest::CommitTransaction(id).to_json();
        let _: TransactionResponse = self.post(&body, false).await?;
        Ok(())
    }

    /// Discards every task prepared in transaction `id`.
    ///
    /// # Errors
    /// As [`Client::commit_transaction`].
    pub async fn rollback_transaction(&self, id: u64) -> Result<(), ClientError> {
        let body = ActionRequest::RollbackTransaction(id).to_json();
        let _: TransactionResponse = self.post(&body, false).await?;
        Ok(())
    }

    /// Cancels task `id`; returns the status it had (`waiting`, `delayed` or `running`).
    ///
    /// # Errors
    /// [`ClientError`]: 404 unknown (or not the caller's), 409 already ended.
    pub async fn cancel_task(&self, id: u64) -> Result<String, ClientError> {
        let body = ActionRequest::CancelTask(id).to_json();
        let r: CancelTaskResponse = self.post(&body, false).await?;
        Ok(r.previous_status)
    }

    /// The open transactions (at most `max`, the broker's default when `None`).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn transactions(&self, max: Option<u32>) -> Result<TransactionsView, ClientError> {
        self.view(&ViewRequest::Transactions { max }).await
    }

    /// The busy slots and their holders.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn slots(&self, max: Option<u32>) -> Result<SlotsView, ClientError> {
        self.view(&ViewRequest::Slots { max }).await
    }

    /// The delayed tasks, soonest first.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn delayed_queue(&self, max: Option<u32>) -> Result<DelayedQueueView, ClientError> {
        self.view(&ViewRequest::DelayedQueue { max }).await
    }

    /// One task, or `None` if the broker does not know it (or the caller may not see it).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn task(&self, id: u64) -> Result<Option<TaskInfo>, ClientError> {
        let v: TaskView = self.view(&ViewRequest::Task { id }).await?;
        Ok(v.task)
    }

    /// One answer of the `tasks` view: a filtered listing bounded by the broker's budgets. When
    /// `next_task_id` is set in the answer, asking again with `from_task_id` set to it continues
    /// the listing; [`Client::list_tasks`] does that until it has what was asked for.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn tasks(&self, query: &TasksQuery) -> Result<TasksView, ClientError> {
        self.view(&ViewRequest::Tasks(query.clone())).await
    }

    /// Counts of tasks by type.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn tasks_overview(
        &self,
        query: &TasksOverviewQuery,
    ) -> Result<TasksOverviewView, ClientError> {
        self.view(&ViewRequest::TasksOverview(query.clone())).await
    }

    /// The broker's status and task counts.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.view(&ViewRequest::Status).await
    }

    /// Known workers.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, ClientError> {
        let v: WorkersView = self.view(&ViewRequest::Workers).await?;
        Ok(v.workers)
    }

    /// Sets (or with `None` clears) a user's service level: its group and the named resources
    /// each of its tasks uses. Admin only. Carrying it out twice is harmless, so it is retried
    /// like a read.
    ///
    /// # Errors
    /// [`ClientError`]: an unknown group (400, field `group`), not an admin (403), ...
    pub async fn set_service_level(
        &self,
        user_id: &str,
        level: Option<(u32, Vec<String>)>,
        weight: u32,
    ) -> Result<serde_json::Value, ClientError> {
        let body =
            ActionRequest::SetServiceLevel(majordodo_proto::http::request::ServiceLevelChange {
                user_id: user_id.to_string(),
                level,
                weight,
            })
            .to_json();
        self.post(&body, true).await
    }

    /// Sets (or, with `None`, removes) the quota of a user or a group: amounts per dimension
    /// (`tasks`, `cpu` millicores, `memory` MiB, named amounts) its running tasks may use
    /// together. Admin only. Carrying it out twice is harmless, so it is retried like a read.
    ///
    /// # Errors
    /// [`ClientError`]: a bad amount (400, field `quota.<dimension>`), not an admin (403), ...
    pub async fn set_quota(
        &self,
        tenant: majordodo_proto::http::request::QuotaTenant,
        quota: Option<Vec<(String, u64)>>,
    ) -> Result<serde_json::Value, ClientError> {
        let body =
            ActionRequest::SetQuota(majordodo_proto::http::request::QuotaChange { tenant, quota })
                .to_json();
        self.post(&body, true).await
    }

    /// Issues a worker credential bound to `worker_id` (admin only). The answer carries the
    /// credential's id and its secret, shown only this once. Not retried: a lost answer would
    /// leave a credential whose secret nobody has (revoke it).
    ///
    /// # Errors
    /// [`ClientError`]: a bad worker id (400, field `workerId`), not an admin (403), ...
    pub async fn add_worker_credential(
        &self,
        worker_id: &str,
        comment: Option<String>,
    ) -> Result<serde_json::Value, ClientError> {
        let body = ActionRequest::AddWorkerCredential {
            worker_id: worker_id.to_owned(),
            comment,
        }
        .to_json();
        self.post(&body, false).await
    }

    /// Revokes a worker credential (admin only); the worker's connection is closed.
    ///
    /// # Errors
    /// [`ClientError`]: unknown id (404, field `credentialId`), already revoked (409), ...
    pub async fn revoke_worker_credential(
        &self,
        credential_id: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let body = ActionRequest::RevokeWorkerCredential {
            credential_id: credential_id.to_owned(),
        }
        .to_json();
        self.post(&body, false).await
    }

    /// The worker credentials (admin only), of `worker_id` if given; never a secret.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn worker_credentials(
        &self,
        worker_id: Option<String>,
    ) -> Result<serde_json::Value, ClientError> {
        self.view(&ViewRequest::WorkerCredentials { worker_id })
            .await
    }

    /// Changes the priority of a waiting or delayed task (higher first among its owner's).
    ///
    /// # Errors
    /// [`ClientError`]: unknown task (404), a task that runs or ended (409), ...
    pub async fn set_task_priority(
        &self,
        task_id: u64,
        priority: i32,
    ) -> Result<serde_json::Value, ClientError> {
        let body = ActionRequest::SetTaskPriority(majordodo_proto::http::request::PriorityChange {
            task_id,
            priority,
        })
        .to_json();
        self.post(&body, true).await
    }

    /// Workers and the broker status object.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn overview(&self) -> Result<OverviewView, ClientError> {
        self.view(&ViewRequest::Overview).await
    }

    /// Creates code pool `id` from `archive` (a zip or tar.gz), kept for `ttl_ms` after its
    /// creation once no task uses it (0 = until deleted). Needs an admin.
    ///
    /// # Errors
    /// [`ClientError`]: the archive refused (400 naming `data`), the id taken (409), not an
    /// admin (403), ... A failure of the broker is not retried blindly: a second create of the
    /// same id would answer 409 if the first one went through.
    pub async fn create_code_pool(
        &self,
        id: &str,
        ttl_ms: i64,
        archive: Vec<u8>,
    ) -> Result<CodePoolActionResponse, ClientError> {
        let body = ActionRequest::CreateCodePool(CreateCodePool {
            id: id.to_owned(),
            ttl: ttl_ms,
            data: archive,
        })
        .to_json();
        self.post(&body, false).await
    }

    /// Deletes code pool `id`. Needs an admin.
    ///
    /// # Errors
    /// [`ClientError`]: unknown (404), in use by live tasks (409), not an admin (403), ...
    pub async fn delete_code_pool(&self, id: &str) -> Result<CodePoolActionResponse, ClientError> {
        let body = ActionRequest::DeleteCodePool(id.to_owned()).to_json();
        self.post(&body, false).await
    }

    /// One code pool, or `None` if the broker does not know it.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn code_pool(&self, id: &str) -> Result<Option<CodePoolInfo>, ClientError> {
        let v: CodePoolView = self
            .view(&ViewRequest::CodePool { id: id.to_owned() })
            .await?;
        Ok(v.code_pool)
    }

    /// One page of code pools in id order, from `from`, at most `max`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn code_pools(
        &self,
        max: Option<u32>,
        from: Option<String>,
    ) -> Result<CodePoolsView, ClientError> {
        self.view(&ViewRequest::CodePools { max, from }).await
    }

    async fn view<T: DeserializeOwned>(&self, view: &ViewRequest) -> Result<T, ClientError> {
        let pairs = view.to_pairs();
        // Reads change nothing: any retryable failure may be retried.
        self.request(Call::Get(&pairs), true).await
    }

    /// Posts an action; `repeatable` when carrying it out twice is harmless (every task has an
    /// idempotency key), so it may be retried after any retryable failure.
    async fn post<T: DeserializeOwned>(
        &self,
        body: &serde_json::Value,
        repeatable: bool,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.request(Call::Post(&bytes), repeatable).await
    }

    /// Sends `call`, retrying per the policy what the broker did not carry out (or, when
    /// `repeatable`, any retryable failure).
    async fn request<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        repeatable: bool,
    ) -> Result<T, ClientError> {
        self.retrying(repeatable, || self.attempt(&call)).await
    }

    /// Runs `attempt` until it succeeds, fails in a way that is not retryable (with
    /// `repeatable`: per [`ClientError::is_retryable`], else
    /// [`ClientError::is_retryable_without_key`]), or the policy's time is up.
    async fn retrying<T, F, Fut>(&self, repeatable: bool, attempt: F) -> Result<T, ClientError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let mut failures: u32 = 0;
        loop {
            let Failure { error, leader } = match attempt().await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let retryable = if repeatable {
                error.is_retryable()
            } else {
                error.is_retryable_without_key()
            };
            if !retryable {
                return Err(error);
            }
            self.endpoint.failed(leader.as_deref());
            failures = failures.saturating_add(1);
            let delay = self.retry.delay(failures, &mut rand::rng());
            if started.elapsed() + delay > self.retry.max_elapsed {
                return Err(error);
            }
            if failures == 1 {
                info!(%error, retry_for_s = self.retry.max_elapsed.as_secs(), "broker unavailable; retrying");
            } else {
                debug!(%error, failures, delay_ms = delay.as_millis() as u64, "retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Downloads a snapshot of the broker's whole state (admin only): the leader takes one now
    /// and streams it into `out`; returns the log position it covers. Refusals of a broker
    /// that did nothing (not the leader, recovering, overloaded, unreachable) are retried per
    /// the policy. A failure once bytes were written is not retried: discard `out` then.
    ///
    /// The file is what a broker keeps in its snapshot directory (versioned, checksummed);
    /// `majordodo restore` makes a data directory from it.
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::Write`] when `out` refused the bytes.
    pub async fn download_snapshot<W>(&self, out: &mut W) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let res = self.retrying(true, || self.snapshot_response()).await?;
        let lsn = res
            .headers()
            .get(majordodo_proto::http::SNAPSHOT_LSN_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                ClientError::Decode(format!(
                    "the answer has no {} header: not a snapshot",
                    majordodo_proto::http::SNAPSHOT_LSN_HEADER
                ))
            })?;
        let mut res = res;
        use tokio::io::AsyncWriteExt;
        while let Some(chunk) = res.chunk().await.map_err(ClientError::transport)? {
            out.write_all(&chunk).await.map_err(ClientError::Write)?;
        }
        out.flush().await.map_err(ClientError::Write)?;
        Ok(lsn)
    }

    /// One request for a snapshot: the response once the broker answered 200.
    async fn snapshot_response(&self) -> Result<reqwest::Response, Failure> {
        let api = self.endpoint.resolve().await?;
        let url = format!(
            "{}{}",
            api.as_str().trim_end_matches('/'),
            majordodo_proto::http::SNAPSHOT_SUBPATH
        );
        let req = self.authorized(self.http.get(url));
        let res = req.send().await.map_err(ClientError::transport)?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let bytes = res.bytes().await.map_err(ClientError::transport)?;
        let error = match decode::<serde_json::Value>(status, &bytes) {
            Err(e) => e,
            Ok(_) => ClientError::Refused {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            },
        };
        Err(Failure {
            error,
            leader: LeaderHint::of_body(&bytes),
        })
    }

    /// `req` with this client's credentials.
    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        }
    }

    async fn attempt<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, Failure> {
        let url = self.endpoint.resolve().await?;
        let req = match call {
            Call::Get(pairs) => self.http.get(url).query(pairs),
            Call::Post(bytes) => self
                .http
                .post(url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json;charset=utf-8",
                )
                .body(bytes.to_vec()),
        };
        let res = self
            .authorized(req)
            .send()
            .await
            .map_err(ClientError::transport)?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(ClientError::transport)?;
        decode(status, &bytes).map_err(|error| Failure {
            error,
            leader: LeaderHint::of_body(&bytes),
        })
    }
}

impl ClientBuilder {
    fn with_source(source: Source) -> ClientBuilder {
        ClientBuilder {
            source,
            auth: Auth::None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
            idempotency_keys: true,
            ca_file: None,
        }
    }
}

/// Turns an answer into a value or the error it says. Also reads the original broker's way of
/// failing: HTTP 200 with `"ok": false`.
fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    let error: Option<ErrorBody> = serde_json::from_slice(body)
        .ok()
        .filter(|e: &ErrorBody| !e.ok);
    if status.is_success() && error.is_none() {
        return serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()));
    }
    let (message, field, retryable) = match error {
        Some(e) => (e.error, e.field, e.retryable),
        None => (
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            None,
            false,
        ),
    };
    let retryable = retryable || RETRYABLE_WORDS.iter().any(|w| message.contains(w));
    Err(match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized(message),
        StatusCode::FORBIDDEN => ClientError::Forbidden { field, message },
        StatusCode::BAD_REQUEST => ClientError::BadRequest { field, message },
        StatusCode::PAYLOAD_TOO_LARGE => ClientError::TooLarge(message),
        _ if retryable || status == StatusCode::SERVICE_UNAVAILABLE => {
            ClientError::Unavailable(message)
        }
        _ => ClientError::Refused {
            status: status.as_u16(),
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_get_the_api_path() {
        // Goal: a host:port URL gets /majordodo (https too); an explicit path is kept; bad URLs
        // are refused.
        assert_eq!(
            api_url("http://127.0.0.1:7364").unwrap().as_str(),
            "http://127.0.0.1:7364/majordodo"
        );
        assert_eq!(
            api_url("http://h:1/custom/api").unwrap().path(),
            "/custom/api"
        );
        assert_eq!(
            api_url("https://h").unwrap().as_str(),
            "https://h/majordodo"
        );
        for bad in ["", "127.0.0.1:7364", "ftp://h", "http://h/majordodo?view=x"] {
            assert!(
                matches!(api_url(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers_map_to_typed_errors() {
        // Goal: each status maps to its error, with the field; the original's 200 + ok:false with
        // a retryable word is retryable.
        let e = decode::<StatusView>(
            StatusCode::BAD_REQUEST,
            br#"{"ok":false,"error":"must not be negative","field":"maxattempts"}"#,
        )
        .unwrap_err();
        assert!(matches!(&e, ClientError::BadRequest { .. }));
        assert_eq!(e.field(), Some("maxattempts"));
        assert!(!e.is_retryable());
        let e = decode::<StatusView>(
            StatusCode::OK,
            br#"{"ok":false,"error":"java.lang.Exception: broker_not_leader"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Unavailable(_)) && e.is_retryable());
        let e = decode::<StatusView>(StatusCode::BAD_GATEWAY, b"<html>proxy</html>").unwrap_err();
        assert!(matches!(e, ClientError::Refused { status: 502, .. }));
        let e = decode::<StatusView>(StatusCode::OK, b"{}").unwrap_err();
        assert!(matches!(e, ClientError::Decode(_)));
    }
}
