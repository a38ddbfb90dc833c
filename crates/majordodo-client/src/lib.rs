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
//! may succeed later (the broker is unavailable, not the request wrong). The client does not
//! retry on its own: a submission whose answer was lost may have been carried out, and only the
//! caller knows whether submitting again is harmless.
//!
//! [`Client::tasks`] reads one answer of the `tasks` view, which the broker bounds by its scan
//! budget; [`Client::list_tasks`] follows its paging until it has the tasks asked for, and says
//! how the listing ended ([`ListEnd`]).

mod list;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use majordodo_proto::http::{
    ActionRequest, ErrorBody, OverviewView, StatusView, SubmitResult, SubmitTaskResponse,
    SubmitTasksResponse, TaskView, TasksOverviewView, TasksView, ViewRequest, WorkersView,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

pub use list::{DEFAULT_LIST_MAX_REQUESTS, DEFAULT_LIST_MAX_TIME, ListEnd, ListLimits, TaskList};
pub use majordodo_proto::http::{
    ADMIN_TOKEN_FILE, API_PATH, BrokerStatusInfo, StatusFilter, TaskInfo, TaskSubmission,
    TasksOverviewQuery, TasksQuery, WorkerInfo,
};

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
    /// The answer is not what the API promises (a different service, a proxy's page).
    #[error("unexpected answer from the broker: {0}")]
    Decode(String),
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

impl ClientError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable(_) | ClientError::Transport(_)
        ) || matches!(self, ClientError::Refused { status, .. } if *status == 408)
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

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    url: String,
    auth: Auth,
    timeout: Duration,
    connect_timeout: Duration,
}

impl ClientBuilder {
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

    /// Builds the client.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when the URL is not `http://host[:port][/majordodo]`.
    pub fn build(self) -> Result<Client, ClientError> {
        let url = api_url(&self.url)?;
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| ClientError::InvalidUrl {
                url: self.url.clone(),
                problem: format!("cannot build an http client: {e}"),
            })?;
        Ok(Client {
            http,
            url,
            auth: self.auth,
        })
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
    if parsed.scheme() != "http" {
        return Err(invalid("only http:// is supported"));
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

/// A client of one broker. Cheap to clone (connections are pooled and shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    auth: Auth,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.as_str())
            .field("auth", &self.auth)
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
        ClientBuilder {
            url: url.to_owned(),
            auth: Auth::None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The API URL requests go to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Submits one task; answered once it is durable.
    ///
    /// # Errors
    /// [`ClientError`]: bad field (400), other user's `userid` (403), broker unavailable, ...
    pub async fn submit(&self, task: &TaskSubmission) -> Result<Submitted, ClientError> {
        let body = ActionRequest::SubmitTask(task.clone()).to_json();
        let r: SubmitTaskResponse = self.post(&body).await?;
        Ok(Submitted::from_parts(r.task_id, r.result.or(r.outcome)))
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
        let body = ActionRequest::SubmitTasks(tasks.to_vec()).to_json();
        let r: SubmitTasksResponse = self.post(&body).await?;
        if r.results.len() != tasks.len() {
            return Err(ClientError::Decode(format!(
                "{} results for {} tasks",
                r.results.len(),
                tasks.len()
            )));
        }
        Ok(r.results
            .into_iter()
            .map(
                |SubmitResult {
                     task_id,
                     result,
                     outcome,
                 }| { Submitted::from_parts(task_id, result.or(outcome)) },
            )
            .collect())
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

    /// Workers and the broker status object.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn overview(&self) -> Result<OverviewView, ClientError> {
        self.view(&ViewRequest::Overview).await
    }

    async fn view<T: DeserializeOwned>(&self, view: &ViewRequest) -> Result<T, ClientError> {
        let req = self.http.get(self.url.clone()).query(&view.to_pairs());
        self.send(req).await
    }

    async fn post<T: DeserializeOwned>(&self, body: &serde_json::Value) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let req = self
            .http
            .post(self.url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json;charset=utf-8",
            )
            .body(bytes);
        self.send(req).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        };
        let res = req.send().await.map_err(ClientError::Transport)?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(ClientError::Transport)?;
        decode(status, &bytes)
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
        // Goal: a host:port URL gets /majordodo; an explicit path is kept; bad URLs are refused.
        assert_eq!(
            api_url("http://127.0.0.1:7364").unwrap().as_str(),
            "http://127.0.0.1:7364/majordodo"
        );
        assert_eq!(
            api_url("http://h:1/custom/api").unwrap().path(),
            "/custom/api"
        );
        for bad in [
            "",
            "127.0.0.1:7364",
            "https://h",
            "http://h/majordodo?view=x",
        ] {
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
