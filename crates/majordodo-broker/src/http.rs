//! The client HTTP API at `/majordodo`, compatible with the original Majordodo's.
//!
//! - `GET /majordodo?view=...`: read-only views (`overview`, `status`, `task`, `tasks`,
//!   `tasksoverview`, `workers`, `transactions`, `slots`, `delayedqueue`), answered from the broker state through
//!   [`BrokerHandle::query`] with bounded work ([`select`]).
//! - `POST /majordodo` with a JSON body `{"action": ...}`: `submitTask` and `submitTasks`,
//!   answered once the tasks are durable ([`BrokerHandle::submit_as`]); `beginTransaction`,
//!   `commitTransaction`, `rollbackTransaction` and `cancelTask`, answered once durable or
//!   refused with a 4xx naming the field ([`BrokerHandle::act`]); `createCodePool` and
//!   `deleteCodePool` (admins only; the archive is checked here before anything is decided).
//!
//! Every request is authenticated first ([`auth`]: Basic or bearer), reads included, before it
//! takes one of the `max_concurrent_requests` request slots; a user with role `user` submits
//! and sees only tasks whose `userid` is its name. A request whose `Origin` is foreign is
//! refused (403) unless configured, and a `POST` must be `application/json` (415), so a form
//! on another site cannot drive a browser's cached credentials. Every failure is an
//! [`ApiError`] with a JSON body. Request and answer shapes, limits and every difference from
//! the original are documented in `docs/http-api.md`.
//!
//! `GET /health`, `/ready` and `/metrics` are the operations endpoints ([`ops`]);
//! `GET /openapi.json` describes every endpoint ([`openapi`]).
//!
//! [`router`] builds the service (tests drive it with `oneshot`); [`serve`] runs it on a bound
//! socket until a shutdown signal, with the connection limits and timeouts of [`listener`].

pub mod auth;
pub mod config;
mod error;
mod listener;
pub mod openapi;
pub mod ops;
mod select;
pub mod ui;

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use majordodo_core::leader::{Caller, SubmitOutcome, SubmitRequest};
use majordodo_core::{TaskId, TransactionId};
use majordodo_proto::http::codepool::{
    CodePoolActionResponse, CodePoolInfo, CodePoolView, CodePoolsView, CreateCodePool,
};
use majordodo_proto::http::{
    API_PATH, API_VERSION, API_VERSION_HEADER, ActionRequest, BODY_FIELD, CancelTaskResponse,
    DEFAULT_TASKS_MAX, DelayedQueueView, FieldError, OverviewView, SlotsView, StatusView,
    SubmitResult, SubmitTaskResponse, SubmitTasksResponse, TaskSubmission, TaskView,
    TasksOverviewView, TasksView, TransactionResponse, TransactionsView, ViewRequest, WorkersView,
    parse_action, parse_view,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::compression::CompressionLayer;
use tracing::debug;

pub use auth::{AuthCounters, Principal};
pub use config::{HttpConfig, HttpConfigError, HttpSettings, UserConfig, UserRole};
pub use error::{ApiError, ERROR_CODES};

use crate::BrokerHandle;
use crate::handle::{ActionDone, BrokerAction};
use crate::handle::{AdminChange, AdminRefusal};
use auth::Authenticator;
use majordodo_core::model::ServiceLevel;
use select::Budget;

/// Most workers listed by the `overview` and `workers` views. Far above a real cluster's
/// thousands of hosts; bounds the answer if worker ids were ever abused.
pub const MAX_WORKERS_LISTED: usize = 100_000;

/// Where the leader serves a fresh snapshot to brokers that boot (admin only).
pub const SNAPSHOT_PATH: &str = "/majordodo/snapshot";

pub use majordodo_proto::http::SNAPSHOT_LSN_HEADER;

/// Version of this broker, sent in the `status` view.
pub const BROKER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every handler shares.
struct Api {
    /// Where submissions and reads go.
    broker: BrokerHandle,
    /// Checks credentials.
    auth: Authenticator,
    /// Validated limits.
    settings: HttpSettings,
    /// Requests handled at once (taken after authentication).
    requests: Arc<Semaphore>,
    /// Body bytes buffered at once, in KiB.
    body_kib: Arc<Semaphore>,
}

impl Api {
    /// Authenticates `req`, then takes a request slot: credentials are checked (and a flood of
    /// bad ones refused) without waiting behind the requests in progress.
    async fn admit(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(Principal, OwnedSemaphorePermit), ApiError> {
        let principal = self.auth.authenticate(headers, peer).await?;
        let slot = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("request limiter closed"))?;
        Ok((principal, slot))
    }
}

/// Builds the API's service for `broker`. The caller serves it ([`serve`]) or drives it directly
/// (tests, with `tower::ServiceExt::oneshot`).
pub fn router(broker: BrokerHandle, settings: HttpSettings) -> Router {
    let api = Arc::new(Api {
        auth: Authenticator::new(
            settings.users.clone(),
            settings.max_concurrent_hashes,
            settings.max_queued_hashes,
            settings.throttle,
        ),
        broker,
        settings: settings.clone(),
        requests: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        body_kib: Arc::new(Semaphore::new(kib(settings.max_buffered_body_bytes))),
    });
    let cors = settings.cors_allow_origin.clone();
    let origins = settings.allowed_origins.clone();
    let basic_challenge = settings.basic_challenge;
    let mut router = Router::new()
        .route(
            API_PATH,
            get(get_view)
                .post(post_action)
                .options(preflight)
                .fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .route(
            SNAPSHOT_PATH,
            get(get_snapshot).fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .route(
            ops::HEALTH_PATH,
            get(ops::health).fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .route(
            ops::READY_PATH,
            get(ops::ready).fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .route(
            ops::METRICS_PATH,
            get(ops::metrics).fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .route(
            openapi::OPENAPI_PATH,
            get(|| async { json_response(StatusCode::OK, &openapi::document()) })
                .fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .fallback(|| async { ApiError::NotFound })
        .with_state(api.clone())
        .merge(ui::routes(&api))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let refused = foreign_origin(&req, origins.as_deref());
            async move {
                match refused {
                    Some(e) => e.into_response(),
                    None => next.run(req).await,
                }
            }
        }))
        .layer(middleware::map_response(move |mut res: Response| {
            let cors = cors.clone();
            async move {
                if basic_challenge && res.status() == StatusCode::UNAUTHORIZED {
                    res.headers_mut().append(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static(error::BASIC_CHALLENGE),
                    );
                }
                let h = res.headers_mut();
                h.insert(
                    HeaderName::from_static(API_VERSION_HEADER),
                    HeaderValue::from(API_VERSION),
                );
                if let Some(origin) = cors {
                    h.insert(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                }
                res
            }
        }));
    if settings.gzip {
        router = router.layer(CompressionLayer::new());
    }
    router
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in progress finish, and returns. At most `max_connections` connections are open at
/// once (more wait in the kernel's accept queue), at most `max_connections_per_address` from
/// one address (more are closed); a request head must arrive within `header_read_timeout_secs`
/// and an idle connection closes after `keep_alive_timeout_secs`.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    broker: BrokerHandle,
    settings: HttpSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "http api started");
    let limits = listener::ConnectionLimits {
        max_connections: settings.max_connections,
        max_per_address: settings.max_connections_per_address,
        header_read_timeout: settings.header_read_timeout,
        keep_alive_timeout: settings.keep_alive_timeout,
    };
    let tls = settings.tls.clone();
    let result = listener::serve(listener, router(broker, settings), limits, tls, shutdown).await;
    tracing::info!("http api stopped");
    result
}

/// The address a request came from, when it came over a socket.
fn peer_of(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Whole KiB covering `bytes` (at least one), as permits of the body budget.
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS)
}

/// The refusal of a request whose `Origin` header names another site than the API's own (the
/// `Host` it was sent to) and not one of `allowed` (`None` allows any). Requests without
/// `Origin` (not from a browser, or same-origin navigation) pass.
fn foreign_origin(req: &Request, allowed: Option<&[String]>) -> Option<ApiError> {
    let allowed = allowed?;
    let origin = req.headers().get(ORIGIN)?;
    let refuse = |why: String| Some(ApiError::Forbidden(FieldError::new("origin", why)));
    let Ok(origin) = origin.to_str() else {
        return refuse("is not a valid origin".to_owned());
    };
    let origin = origin.trim().to_ascii_lowercase();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let same_site = host.is_some_and(|host| {
        origin
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == host)
    });
    if same_site || allowed.contains(&origin) {
        return None;
    }
    refuse(format!(
        "{} is not allowed to call this API from a browser (http.allowed_origins)",
        majordodo_proto::http::request::clip(&origin)
    ))
}

/// Refuses a `POST` whose body is not declared JSON (`application/json`, any parameters).
fn require_json(req: &Request) -> Result<(), ApiError> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// A successful answer; built inside the dispatcher (for views), serialized outside it.
#[derive(Serialize)]
// Built once per request and moved once: boxing the large variants would only add allocations.
#[allow(clippy::large_enum_variant)]
#[serde(untagged)]
enum Answer {
    OverviewView(OverviewView),
    WorkersView(WorkersView),
    StatusView(StatusView),
    TaskView(TaskView),
    TasksView(TasksView),
    TasksOverviewView(TasksOverviewView),
    SubmitTaskResponse(SubmitTaskResponse),
    SubmitTasksResponse(SubmitTasksResponse),
    CodePoolView(CodePoolView),
    CodePoolsView(CodePoolsView),
    CodePoolActionResponse(CodePoolActionResponse),
    TransactionResponse(TransactionResponse),
    CancelTaskResponse(CancelTaskResponse),
    TransactionsView(TransactionsView),
    SlotsView(SlotsView),
    DelayedQueueView(DelayedQueueView),
    /// Answers of the scheduling actions and views, built as JSON directly.
    Json(serde_json::Value),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        json_response(StatusCode::OK, &self)
    }
}

/// A JSON answer with the original's content type.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=utf-8"),
            )],
            bytes,
        )
            .into_response(),
        // Our own types always serialize; should one not, say nothing internal.
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=utf-8"),
            )],
            r#"{"ok":false,"error":"internal error"}"#,
        )
            .into_response(),
    }
}

/// CORS preflight: browsers send it without credentials before an authenticated request.
async fn preflight(State(api): State<Arc<Api>>) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    if api.settings.cors_allow_origin.is_some() {
        let h = res.headers_mut();
        h.insert(
            axum::http::header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            axum::http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
    }
    res
}

/// `GET /majordodo/snapshot`: the leader takes a snapshot and streams its file (the format of
/// `majordodo_log::SnapshotStore`, checksummed; the receiver validates it before use).
async fn get_snapshot(State(api): State<Arc<Api>>, req: Request) -> Result<Response, ApiError> {
    let (principal, _slot) = api.admit(req.headers(), peer_of(&req)).await?;
    if !principal.is_admin() {
        return Err(ApiError::Forbidden(FieldError::new(
            "user",
            format!(
                "user {} is not an admin: only admins download snapshots",
                principal.name
            ),
        )));
    }
    let (lsn, path) = match api.broker.snapshot_for_download().await {
        Ok(found) => found,
        Err(e) => {
            // No client of the original reads this endpoint, so its refusals need not keep the
            // original's 200 `ok: false` shape: a broker that cannot serve a snapshot yet
            // answers 503, and nothing that is not a snapshot is ever answered 200.
            let mut refusal = ApiError::from(e).into_response();
            if refusal.status() == StatusCode::OK {
                *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                refusal
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            return Ok(refusal);
        }
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::Internal("open the snapshot file"))?;
    let len = file
        .metadata()
        .await
        .map_err(|_| ApiError::Internal("stat the snapshot file"))?
        .len();
    debug!(user = %principal.name, lsn, bytes = len, "serving a snapshot");
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        HeaderName::from_static(SNAPSHOT_LSN_HEADER),
        HeaderValue::from(lsn),
    );
    Ok(response)
}

async fn get_view(State(api): State<Arc<Api>>, req: Request) -> Result<Answer, ApiError> {
    let (principal, _slot) = api.admit(req.headers(), peer_of(&req)).await?;
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map_err(|_| FieldError::new("query", "is not a valid query string"))?;
    let view = parse_view(&pairs)?;
    debug!(user = %principal.name, view = view.name(), "http view");
    if matches!(view, ViewRequest::WorkerCredentials { .. }) {
        admin_only(&principal, "see worker credentials")?;
    }
    let owner = principal.owner_filter();
    let reveal_workers = principal.is_admin();
    let s = &api.settings;
    let budget = Budget {
        max: 0,
        scan: s.scan_budget,
        bytes: s.max_response_bytes,
    };
    let tasks_max_limit = s.tasks_max_limit;
    let answer = api
        .broker
        .query(move |v| {
            let status = select::status_info(v);
            match view {
                ViewRequest::Overview => Answer::OverviewView(OverviewView {
                    ok: true,
                    workers: select::workers(v, MAX_WORKERS_LISTED, reveal_workers),
                    status,
                }),
                ViewRequest::Workers => Answer::WorkersView(WorkersView {
                    ok: true,
                    workers: select::workers(v, MAX_WORKERS_LISTED, reveal_workers),
                    status,
                }),
                ViewRequest::Status => {
                    let (quotas, at_quota) = select::quota_counts(v.state);
                    Answer::StatusView(StatusView {
                    ok: true,
                    status: status.cluster_mode.clone(),
                    current_ledger_id: status.current_ledger_id.to_string(),
                    current_sequence_number: status.current_sequence_number.to_string(),
                    version: BROKER_VERSION.to_owned(),
                    tasks: status.tasks,
                    pendingtasks: status.pending_tasks,
                    runningtasks: status.running_tasks,
                    errortasks: status.error_tasks,
                    waitingtasks: status.waiting_tasks,
                    finishedtasks: status.finished_tasks,
                    delayedtasks: status.delayed_tasks,
                    cluster: v.cluster.map(select::cluster_status),
                    quotas: quotas as u64,
                    tenants_at_quota: at_quota as u64,
                })
                }
                ViewRequest::Task { id } => {
                    // Another user's task answers as an unknown one.
                    let task = v
                        .state
                        .task(TaskId(id))
                        .filter(|t| owner.as_deref().is_none_or(|o| *t.user_id == *o))
                        .map(select::task_info);
                    Answer::TaskView(TaskView {
                        ok: true,
                        task,
                        status,
                    })
                }
                ViewRequest::Tasks(q) => {
                    let max = q.max.unwrap_or(DEFAULT_TASKS_MAX).min(tasks_max_limit);
                    let listing = select::list_tasks(
                        v.state,
                        &q,
                        owner.as_deref(),
                        Budget {
                            max: max as usize,
                            ..budget
                        },
                    );
                    Answer::TasksView(TasksView {
                        ok: true,
                        count: listing.tasks.len() as u64,
                        tasks: listing.tasks,
                        max,
                        scanned: listing.scanned,
                        truncated: listing.truncated,
                        next_task_id: listing.next_task_id,
                        status,
                    })
                }
                ViewRequest::CodePool { id } => Answer::CodePoolView(CodePoolView {
                    ok: true,
                    code_pool: v
                        .state
                        .codepool(&id)
                        .filter(|p| p.is_complete())
                        .map(|p| code_pool_info(v.state, p)),
                    status,
                }),
                ViewRequest::CodePools { max, from } => {
                    let max = max.unwrap_or(DEFAULT_TASKS_MAX).min(tasks_max_limit) as usize;
                    let mut pools = v
                        .state
                        .codepools()
                        .filter(|p| p.is_complete())
                        .filter(|p| from.as_deref().is_none_or(|f| p.id.as_str() >= f));
                    let code_pools: Vec<CodePoolInfo> = pools
                        .by_ref()
                        .take(max)
                        .map(|p| code_pool_info(v.state, p))
                        .collect();
                    let next_code_pool_id = pools.next().map(|p| p.id.clone());
                    Answer::CodePoolsView(CodePoolsView {
                        ok: true,
                        count: code_pools.len() as u64,
                        code_pools,
                        truncated: next_code_pool_id.is_some(),
                        next_code_pool_id,
                        status,
                    })
                }
                ViewRequest::Transactions { max } => Answer::TransactionsView(TransactionsView {
                    ok: true,
                    transactions: select::transactions(
                        v.state,
                        owner.as_deref(),
                        Budget {
                            max: max.unwrap_or(DEFAULT_TASKS_MAX).min(tasks_max_limit) as usize,
                            ..budget
                        },
                    ),
                    status,
                }),
                ViewRequest::Slots { max } => Answer::SlotsView(SlotsView {
                    ok: true,
                    slots: select::slots(
                        v.state,
                        owner.as_deref(),
                        Budget {
                            max: max.unwrap_or(DEFAULT_TASKS_MAX).min(tasks_max_limit) as usize,
                            ..budget
                        },
                    ),
                    status,
                }),
                ViewRequest::DelayedQueue { max } => Answer::DelayedQueueView(DelayedQueueView {
                    ok: true,
                    delayedqueue: select::delayed_queue(
                        v.state,
                        owner.as_deref(),
                        v.now,
                        Budget {
                            max: max.unwrap_or(DEFAULT_TASKS_MAX).min(tasks_max_limit) as usize,
                            ..budget
                        },
                    ),
                    status,
                }),
                ViewRequest::Resources { worker_id } => Answer::Json(serde_json::json!({
                    "ok": true,
                    "resources": select::resources(v, worker_id.as_deref()),
                    "amounts": select::amounts(v, worker_id.as_deref()),
                    "quotas": if worker_id.is_none() && owner.is_none() {
                        select::quotas(v.state, tasks_max_limit as usize)
                    } else {
                        serde_json::Value::Array(Vec::new())
                    },
                    "status": status,
                })),
                ViewRequest::Tenants { max, from } => {
                    let max = max.unwrap_or(DEFAULT_TASKS_MAX).min(tasks_max_limit) as usize;
                    Answer::Json(serde_json::json!({
                        "ok": true,
                        "tenants": select::tenants(v.state, owner.as_deref(), from.as_deref(), max),
                        "status": status,
                    }))
                }
                ViewRequest::WorkerCredentials { worker_id } => {
                    let credentials: Vec<serde_json::Value> = v
                        .state
                        .credentials()
                        .filter(|c| worker_id.as_deref().is_none_or(|w| c.worker_id == w))
                        .map(|c| {
                            serde_json::json!({
                                "credentialId": c.id,
                                "workerId": c.worker_id,
                                "created": c.created,
                                "comment": c.comment,
                                "revoked": c.revoked.is_some(),
                                "revokedAt": c.revoked,
                            })
                        })
                        .collect();
                    Answer::Json(serde_json::json!({
                        "ok": true,
                        "count": credentials.len(),
                        "credentials": credentials,
                        "status": status,
                    }))
                }
                ViewRequest::TasksHeap { max } => {
                    let max = max.unwrap_or(DEFAULT_TASKS_MAX).min(tasks_max_limit);
                    Answer::Json(serde_json::json!({
                        "ok": true,
                        "tasksheap": select::tasks_heap(v.state, owner.as_deref(), max as usize, budget.scan),
                        "status": status,
                    }))
                }
                ViewRequest::TasksOverview(q) => {
                    let (tasks, scanned, truncated) =
                        select::count_by_type(v.state, &q, owner.as_deref(), budget.scan);
                    Answer::TasksOverviewView(TasksOverviewView {
                        ok: true,
                        count: tasks.values().sum(),
                        tasks,
                        scanned,
                        truncated,
                        status,
                    })
                }
            }
        })
        .await?;
    Ok(answer)
}

async fn post_action(State(api): State<Arc<Api>>, req: Request) -> Result<Answer, ApiError> {
    require_json(&req)?;
    let (principal, _slot) = api.admit(req.headers(), peer_of(&req)).await?;
    let (body, budget) = read_body(&api, req).await?;
    let action = parse_action(&body)?;
    drop(body);
    drop(budget);
    match action {
        ActionRequest::SubmitTask(task) => {
            if !principal.may_use(&task.user_id) {
                return Err(forbidden_user("userid", &principal));
            }
            debug!(user = %principal.name, "http submitTask");
            let transaction = task.transaction;
            let outcome = submit(&api, &principal, vec![task], false).await?.pop();
            let (task_id, result) = outcome_parts(outcome);
            Ok(Answer::SubmitTaskResponse(SubmitTaskResponse {
                action: "submitTask".into(),
                task_id,
                outcome: result.clone(),
                result,
                error: String::new(),
                ok: true,
                transaction,
            }))
        }
        ActionRequest::SubmitTasks(tasks) => {
            if let Some(i) = tasks.iter().position(|t| !principal.may_use(&t.user_id)) {
                return Err(forbidden_user(&format!("tasks[{i}].userid"), &principal));
            }
            debug!(user = %principal.name, tasks = tasks.len(), "http submitTasks");
            let transactions: Vec<Option<u64>> = tasks.iter().map(|t| t.transaction).collect();
            let outcomes = if tasks.is_empty() {
                Vec::new()
            } else {
                submit(&api, &principal, tasks, true).await?
            };
            let results = outcomes
                .into_iter()
                .zip(transactions)
                .map(|(o, transaction)| {
                    let (task_id, result) = outcome_parts(Some(o));
                    SubmitResult {
                        task_id,
                        outcome: result.clone(),
                        result,
                        transaction,
                    }
                })
                .collect();
            Ok(Answer::SubmitTasksResponse(SubmitTasksResponse {
                action: "submitTasks".into(),
                results,
                error: String::new(),
                ok: true,
            }))
        }
        ActionRequest::CreateCodePool(create) => {
            admin_only(&principal, "createCodePool")?;
            let id = create.id.clone();
            debug!(user = %principal.name, pool = %id, bytes = create.data.len(), "http createCodePool");
            create_code_pool(&api, create).await?;
            Ok(code_pool_done("createCodePool", id, "created"))
        }
        ActionRequest::DeleteCodePool(id) => {
            admin_only(&principal, "deleteCodePool")?;
            debug!(user = %principal.name, pool = %id, "http deleteCodePool");
            api.broker
                .delete_code_pool(id.clone())
                .await
                .map_err(code_pool_error)?;
            Ok(code_pool_done("deleteCodePool", id, "deleted"))
        }
        ActionRequest::SetServiceLevel(c) => {
            admin_only(&principal, "setServiceLevel")?;
            let weight = c.weight;
            let level = c.level.clone().map(|(group, resources)| ServiceLevel {
                group,
                resources,
                weight,
            });
            admin_change(
                &api,
                AdminChange::SetServiceLevel {
                    user_id: c.user_id.clone(),
                    level,
                },
            )
            .await?;
            Ok(Answer::Json(serde_json::json!({
                "ok": true,
                "action": "setServiceLevel",
                "userid": c.user_id,
                "serviceLevel": c.level.map(|(group, resources)| serde_json::json!({
                    "group": group,
                    "resources": resources,
                    "weight": weight.max(1),
                })),
            })))
        }
        ActionRequest::SetQuota(c) => {
            admin_only(&principal, "setQuota")?;
            debug!(user = %principal.name, tenant = %c.tenant, "http setQuota");
            admin_change(
                &api,
                AdminChange::SetQuota {
                    tenant: c.tenant.clone(),
                    quota: c.quota.clone(),
                },
            )
            .await?;
            let mut answer = serde_json::json!({
                "ok": true,
                "action": "setQuota",
                "quota": c.quota.map(|q| q.into_iter().map(|(d, n)| (d, serde_json::Value::from(n))).collect::<serde_json::Map<String, serde_json::Value>>()),
            });
            match c.tenant {
                majordodo_core::quota::QuotaTenant::User(u) => answer["userid"] = u.into(),
                majordodo_core::quota::QuotaTenant::Group(g) => answer["group"] = g.into(),
            }
            Ok(Answer::Json(answer))
        }
        ActionRequest::AddWorkerCredential { worker_id, comment } => {
            admin_only(&principal, "addWorkerCredential")?;
            // The secret is generated here and answered once; the state keeps its verifier.
            let secret = majordodo_proto::worker::random_credential_secret();
            let credential_id = format!(
                "wc-{}",
                majordodo_proto::worker::random_nonce()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            tracing::info!(user = %principal.name, %worker_id, %credential_id, "http addWorkerCredential");
            admin_change(
                &api,
                AdminChange::AddWorkerCredential {
                    credential_id: credential_id.clone(),
                    worker_id: worker_id.clone(),
                    verifier: majordodo_proto::worker::credential_verifier(&secret),
                    comment: comment.clone(),
                },
            )
            .await?;
            Ok(Answer::Json(serde_json::json!({
                "ok": true,
                "action": "addWorkerCredential",
                "credentialId": credential_id,
                "workerId": worker_id,
                "comment": comment,
                "secret": secret.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            })))
        }
        ActionRequest::RevokeWorkerCredential { credential_id } => {
            admin_only(&principal, "revokeWorkerCredential")?;
            tracing::info!(user = %principal.name, %credential_id, "http revokeWorkerCredential");
            admin_change(
                &api,
                AdminChange::RevokeWorkerCredential {
                    credential_id: credential_id.clone(),
                },
            )
            .await?;
            Ok(Answer::Json(serde_json::json!({
                "ok": true,
                "action": "revokeWorkerCredential",
                "credentialId": credential_id,
                "revoked": true,
            })))
        }
        ActionRequest::SetTaskPriority(c) => {
            let task_id = TaskId(c.task_id);
            if !principal.is_admin() {
                // A user may change only its own tasks; an unknown task and another's look
                // the same to it.
                let name = principal.name.clone();
                let owned = api
                    .broker
                    .query(move |v| v.state.task(task_id).is_some_and(|t| *t.user_id == *name))
                    .await?;
                if !owned {
                    return Err(ApiError::Missing(FieldError::new(
                        "taskId",
                        format!("task {task_id} does not exist"),
                    )));
                }
            }
            admin_change(
                &api,
                AdminChange::SetTaskPriority {
                    task_id,
                    priority: c.priority,
                },
            )
            .await?;
            Ok(Answer::Json(serde_json::json!({
                "ok": true,
                "action": "setTaskPriority",
                "taskId": c.task_id,
                "priority": c.priority,
            })))
        }
        other => act(&api, &principal, other).await,
    }
}

/// Carries out a transaction action or a cancel and answers it in the original's shape.
async fn act(api: &Api, principal: &Principal, request: ActionRequest) -> Result<Answer, ApiError> {
    let action = match request {
        ActionRequest::BeginTransaction => BrokerAction::BeginTransaction,
        ActionRequest::CommitTransaction(id) => BrokerAction::CommitTransaction(TransactionId(id)),
        ActionRequest::RollbackTransaction(id) => {
            BrokerAction::RollbackTransaction(TransactionId(id))
        }
        ActionRequest::CancelTask(id) => BrokerAction::CancelTask(TaskId(id)),
        ActionRequest::SubmitTask(_)
        | ActionRequest::SubmitTasks(_)
        | ActionRequest::CreateCodePool(_)
        | ActionRequest::DeleteCodePool(_)
        | ActionRequest::SetServiceLevel(_)
        | ActionRequest::SetTaskPriority(_)
        | ActionRequest::SetQuota(_)
        | ActionRequest::AddWorkerCredential { .. }
        | ActionRequest::RevokeWorkerCredential { .. } => {
            return Err(ApiError::Internal("request routed as an action"));
        }
    };
    let name = request_name(&action);
    debug!(user = %principal.name, action = name, "http action");
    let done = api
        .broker
        .act(action, caller_of(principal))
        .await?
        .map_err(|refused| ApiError::refused(&refused))?;
    Ok(match done {
        ActionDone::Transaction(id) => Answer::TransactionResponse(TransactionResponse {
            action: name.into(),
            transaction: id.0,
            error: String::new(),
            ok: true,
        }),
        ActionDone::Cancelled(id, before) => Answer::CancelTaskResponse(CancelTaskResponse {
            action: name.into(),
            task_id: id.0,
            previous_status: before.as_str().into(),
            error: String::new(),
            ok: true,
        }),
    })
}

fn request_name(action: &BrokerAction) -> &'static str {
    match action {
        BrokerAction::BeginTransaction => "beginTransaction",
        BrokerAction::CommitTransaction(_) => "commitTransaction",
        BrokerAction::RollbackTransaction(_) => "rollbackTransaction",
        BrokerAction::CancelTask(_) => "cancelTask",
    }
}

/// The core's view of who asks.
fn caller_of(principal: &Principal) -> Caller {
    Caller {
        name: principal.name.to_string(),
        admin: principal.is_admin(),
    }
}

fn admin_only(principal: &Principal, action: &str) -> Result<(), ApiError> {
    if principal.is_admin() {
        return Ok(());
    }
    Err(ApiError::Forbidden(FieldError::new(
        "action",
        format!(
            "user {} is not an admin: only admins may {action}",
            principal.name
        ),
    )))
}

fn code_pool_done(action: &str, id: String, result: &str) -> Answer {
    Answer::CodePoolActionResponse(CodePoolActionResponse {
        action: action.into(),
        code_pool_id: id,
        result: Some(result.into()),
        error: String::new(),
        ok: true,
    })
}

/// Checks the archive (size, format, every entry; on a blocking thread: it decompresses it
/// all) and creates the pool. Nothing is decided unless the archive passes.
async fn create_code_pool(api: &Api, create: CreateCodePool) -> Result<(), ApiError> {
    let CreateCodePool { id, ttl, data } = create;
    let max = api.settings.codepool_max_archive_bytes;
    if data.len() > max {
        return Err(ApiError::TooLarge(FieldError::new(
            "data",
            format!(
                "is an archive of {} bytes; at most {max} are accepted (http.codepool_max_archive_bytes)",
                data.len()
            ),
        )));
    }
    let limits = api.settings.codepool_limits;
    let data = tokio::task::spawn_blocking(move || {
        majordodo_proto::archive::validate(&data, limits).map(|_| data)
    })
    .await
    .map_err(|_| ApiError::Internal("archive check failed"))?
    .map_err(|e| ApiError::BadRequest(FieldError::new("data", e.to_string())))?;
    api.broker
        .create_code_pool(id, ttl, data)
        .await
        .map_err(code_pool_error)
}

/// The 4xx of a code-pool refusal, naming the field at fault.
fn code_pool_error(e: crate::BrokerError) -> ApiError {
    use majordodo_core::leader::CodePoolRefusal as R;
    let crate::BrokerError::CodePool { task, refusal } = e else {
        return ApiError::Broker(e);
    };
    let text = refusal.to_string();
    match (task, &refusal) {
        (Some(i), _) => {
            let field = if i == usize::MAX {
                "codePoolId".to_owned()
            } else {
                format!("tasks[{i}].codePoolId")
            };
            ApiError::BadRequest(FieldError::new(&field, text))
        }
        (None, R::Unknown(_)) => ApiError::Missing(FieldError::new("id", text)),
        (None, R::Exists(_) | R::InUse { .. } | R::Busy(_)) => {
            ApiError::Conflict(FieldError::new("id", text), false)
        }
    }
}

/// A pool as the views show it.
fn code_pool_info(
    state: &majordodo_core::BrokerState,
    p: &majordodo_core::model::CodePool,
) -> CodePoolInfo {
    CodePoolInfo {
        code_pool_id: p.id.clone(),
        creation_timestamp: p.created,
        ttl: p.ttl,
        size: p.size,
        sha256: majordodo_core::codepool::hex(&p.sha256),
        chunks: p.chunk_count,
        tasks: state.code_pool_users(&p.id),
    }
}

/// Asks the leader for a scheduling change and maps its refusal to an API error.
async fn admin_change(api: &Api, change: AdminChange) -> Result<(), ApiError> {
    match api.broker.admin(change).await? {
        Ok(()) => Ok(()),
        Err(AdminRefusal::Invalid { field, reason }) => {
            Err(ApiError::BadRequest(FieldError::new(field, reason)))
        }
        Err(AdminRefusal::NoSuchTask(id)) => Err(ApiError::Missing(FieldError::new(
            "taskId",
            format!("task {id} does not exist"),
        ))),
        Err(AdminRefusal::Conflict(why)) => {
            Err(ApiError::Conflict(FieldError::new("taskId", why), false))
        }
        Err(AdminRefusal::NoSuchCredential(id)) => Err(ApiError::Missing(FieldError::new(
            "credentialId",
            format!("credential {id} does not exist"),
        ))),
        Err(AdminRefusal::CredentialConflict(why)) => Err(ApiError::Conflict(
            FieldError::new("credentialId", why),
            false,
        )),
    }
}

fn forbidden_user(field: &str, principal: &Principal) -> ApiError {
    ApiError::Forbidden(FieldError::new(
        field,
        format!(
            "user {} may only submit tasks with userid {}",
            principal.name, principal.name
        ),
    ))
}

/// Submits; `batch` tells whether the request was `submitTasks`, so a field at fault is named
/// `tasks[i].<field>` rather than `<field>`.
async fn submit(
    api: &Api,
    principal: &Principal,
    tasks: Vec<TaskSubmission>,
    batch: bool,
) -> Result<Vec<SubmitOutcome>, ApiError> {
    let requests = tasks.into_iter().map(submit_request).collect();
    let caller = caller_of(principal);
    api.broker
        .submit_as(requests, caller)
        .await
        .map_err(|e| match e {
            crate::BrokerError::TooLarge {
                task,
                field,
                detail,
            } => {
                let field = if batch {
                    format!("tasks[{task}].{field}")
                } else {
                    field.to_owned()
                };
                ApiError::TooLarge(FieldError::new(&field, detail))
            }
            crate::BrokerError::Needs { task, refusal } => {
                let dimension = refusal.dimension();
                let field = match dimension {
                    "" => "needs".to_owned(),
                    majordodo_core::quota::CPU | majordodo_core::quota::MEMORY => {
                        dimension.to_owned()
                    }
                    d => format!("needs.{d}"),
                };
                let field = if batch {
                    format!("tasks[{task}].{field}")
                } else {
                    field
                };
                ApiError::BadRequest(FieldError::new(&field, refusal.to_string()))
            }
            crate::BrokerError::CodePool {
                task: Some(i),
                refusal,
            } => code_pool_error(crate::BrokerError::CodePool {
                // A single submitTask names the field without the index.
                task: Some(if batch { i } else { usize::MAX }),
                refusal,
            }),
            other => ApiError::Broker(other),
        })
}

fn submit_request(t: TaskSubmission) -> SubmitRequest {
    SubmitRequest {
        task_type: t.task_type,
        user_id: t.user_id,
        data: t.data,
        max_attempts: t.max_attempts,
        attempts: t.attempt,
        requested_start_time: t.requested_start_time,
        deadline: t.deadline,
        slot: t.slot,
        codepool: t.codepool,
        mode: t.mode,
        idempotency_key: t.idempotency_key,
        transaction: t.transaction.map(TransactionId),
        priority: t.priority,
        needs: t.needs,
    }
}

/// The id (0 when not created) and the outcome text of a submission.
fn outcome_parts(o: Option<SubmitOutcome>) -> (u64, Option<String>) {
    match o {
        Some(SubmitOutcome::Accepted(id)) => (id.0, None),
        Some(SubmitOutcome::NotCreated(why)) => (0, Some(why)),
        None => (0, Some("no outcome".into())),
    }
}

/// Reads the whole body, refusing more than `max_body_bytes` and bodies slower than
/// `body_timeout`. Its declared length (or `max_body_bytes` when it declares none) is reserved
/// from the `max_buffered_body_bytes` budget first, and held with the body.
async fn read_body(api: &Api, req: Request) -> Result<(Vec<u8>, OwnedSemaphorePermit), ApiError> {
    let limit = api.settings.max_body_bytes;
    let timeout = api.settings.body_timeout;
    let too_large = || {
        ApiError::TooLarge(FieldError::new(
            BODY_FIELD,
            format!("is larger than the limit of {limit} bytes"),
        ))
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let reserve = declared.map_or(limit, |n| n as usize);
    let budget = tokio::time::timeout(
        timeout,
        api.body_kib.clone().acquire_many_owned(kib(reserve) as u32),
    )
    .await
    .map_err(|_| ApiError::Broker(crate::BrokerError::Overloaded("request bodies")))?
    .map_err(|_| ApiError::Internal("body budget closed"))?;
    let mut stream = Body::into_data_stream(req.into_body());
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                ApiError::BadRequest(FieldError::new(BODY_FIELD, "could not be read"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout)??;
    Ok((buf, budget))
}
