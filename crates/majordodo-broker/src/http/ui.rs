//! The web dashboard at `/ui`: server-rendered pages over the broker state, for the users of the
//! HTTP API.
//!
//! - **Log-in** (`/ui/login`): a form checks the name and password with the API's
//!   [`Authenticator`](super::auth::Authenticator) (same hashing pool, throttling and
//!   lock-outs), then opens a session ([`session`]) whose random id travels in a cookie that is
//!   `HttpOnly`, `SameSite=Strict`, limited to `/ui`, and `Secure` when the API serves TLS.
//! - **Actions** (log-out, cancel) are `POST`s of forms that carry the session's CSRF token;
//!   one whose token is missing or wrong is refused 403, and so is one whose `Origin` is not the
//!   dashboard's own (whatever `http.allowed_origins` lets call the API).
//! - **Roles** are the API's: a `user` sees only its own tasks (enforced here, on the server,
//!   by the same owner filter as the API's views) and cancels only those.
//! - **Bounded:** every page reads the state once through [`BrokerHandle::query`] with the
//!   API's budgets (`http.scan_budget`, `http.max_response_size`) and pages its lists, so it
//!   costs what a view of the API costs whatever the number of tasks.
//! - **Self-contained:** the stylesheet and the script are embedded in the binary
//!   (`crates/majordodo-broker/ui/`); pages carry no inline script, and a
//!   `Content-Security-Policy` forbids loading anything from elsewhere.
//!
//! Pages: overview (counts by status, throughput chart polled from `/ui/api/overview`), tasks
//! (filters and paging), a task's detail (with Cancel), workers, tenants, cluster. See
//! `docs/ui.md`.

mod html;
mod session;
mod throughput;

use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, FromRequest, Path, Query, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use majordodo_core::{TaskId, TaskStatus};
use majordodo_proto::http::{StatusFilter, TaskInfo, TasksQuery};
use rand::TryRngCore;
use serde::Deserialize;
use tokio::time::Instant;

use super::select::{self, Budget};
use super::{Api, ApiError, Principal, caller_of, peer_of};
use crate::handle::{ActionDone, BrokerAction};
use html::{esc, url_component};
use session::{Session, Sessions};
use throughput::{Counters, History};

/// Where the dashboard is served.
pub const UI_PATH: &str = "/ui";

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "md_session";

/// Tasks on one page of the tasks list unless `max` asks otherwise.
const DEFAULT_PAGE: u32 = 50;

/// Most tasks on one page of the tasks list.
const MAX_PAGE: u32 = 500;

/// Workers and tenants on one page.
const LIST_PAGE: usize = 100;

/// Largest form body accepted (a log-in or an action): far above a name and a password.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Longest text of a task's data or result shown in the tasks list (the detail page shows all).
const LIST_TEXT_CHARS: usize = 80;

/// The embedded stylesheet and script.
const STYLE_CSS: &str = include_str!("../../ui/style.css");
const APP_JS: &str = include_str!("../../ui/app.js");

/// What the dashboard's policy allows: only this origin's stylesheet and script, no inline
/// code, no framing, forms only to itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Validated settings of the dashboard (`http.ui*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UiSettings {
    /// How long a session lasts after its log-in.
    pub(crate) session_ttl: Duration,
    /// Most sessions open at once.
    pub(crate) max_sessions: usize,
}

/// What the dashboard's handlers share.
struct Ui {
    api: Arc<Api>,
    sessions: Sessions,
    history: History,
    /// Set `Secure` on the cookie (the API serves TLS).
    secure: bool,
}

/// The dashboard's routes for the API `api`, or none when the dashboard is off.
pub(super) fn routes(api: &Arc<Api>) -> Router {
    let Some(settings) = api.settings.ui else {
        return Router::new();
    };
    let ui = Arc::new(Ui {
        sessions: Sessions::new(
            settings.session_ttl,
            settings.max_sessions,
            Box::new(rand::rngs::OsRng.unwrap_err()),
        ),
        history: History::default(),
        secure: api.settings.tls.is_some(),
        api: api.clone(),
    });
    start_sampler(&ui);
    Router::new()
        .route(UI_PATH, get(|| async { redirect("/ui/overview") }))
        .route("/ui/", get(|| async { redirect("/ui/overview") }))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/overview", get(overview))
        .route("/ui/api/overview", get(overview_json))
        .route("/ui/tasks", get(tasks))
        .route("/ui/tasks/{id}", get(task_detail))
        .route("/ui/tasks/{id}/cancel", post(cancel))
        .route("/ui/workers", get(workers))
        .route("/ui/tenants", get(tenants))
        .route("/ui/cluster", get(cluster))
        .route(
            "/ui/assets/style.css",
            get(|| async { asset("text/css", STYLE_CSS) }),
        )
        .route(
            "/ui/assets/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .with_state(ui)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::map_response(|mut res: Response| async move {
            let h = res.headers_mut();
            h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
            h.entry(CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
            res
        }))
}

/// Samples the throughput counters every [`throughput::SAMPLE_INTERVAL`] while the dashboard
/// exists (outside a Tokio runtime there is no sampler, and the chart stays empty).
fn start_sampler(ui: &Arc<Ui>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Ui> = Arc::downgrade(ui);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(throughput::SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(ui) = weak.upgrade() else {
                return;
            };
            let broker = ui.api.broker.clone();
            drop(ui);
            let Ok(sample) = broker.query(|v| Counters::of(v.state, v.now)).await else {
                continue;
            };
            match weak.upgrade() {
                Some(ui) => ui.history.push(sample),
                None => return,
            }
        }
    });
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
        ],
        body,
    )
        .into_response()
}

fn redirect(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(LOCATION, v);
    }
    res
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// The session id sent in the request's cookie, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
}

/// Why a request of the dashboard was refused.
enum UiError {
    /// No (live) session: log in first.
    LoggedOut,
    /// The API's refusal, shown as a page.
    Api(ApiError),
    /// A refusal of the dashboard itself: status and message.
    Refused(StatusCode, String),
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError::Api(e)
    }
}

impl From<crate::BrokerError> for UiError {
    fn from(e: crate::BrokerError) -> Self {
        UiError::Api(ApiError::Broker(e))
    }
}

impl UiError {
    fn render(self, who: Option<&Session>) -> Response {
        let (status, message) = match self {
            UiError::LoggedOut => return redirect("/ui/login"),
            UiError::Api(e) => {
                let mut status = e.status();
                // The API answers some broker conditions 200 with ok: false; a page says 503.
                if status == StatusCode::OK {
                    status = StatusCode::SERVICE_UNAVAILABLE;
                }
                (status, e.to_string())
            }
            UiError::Refused(status, message) => (status, message),
        };
        let body = format!(
            "<p class=\"error\" id=\"error\">{}</p><p><a href=\"/ui/overview\">Back to the overview</a></p>",
            esc(&message)
        );
        match who {
            Some(s) => html(
                status,
                html::page("Error", "", &s.principal, &s.csrf, &body),
            ),
            None => html(status, html::login_page(Some(&message), "")),
        }
    }
}

impl Ui {
    /// The request's live session, or [`UiError::LoggedOut`].
    fn session(&self, headers: &HeaderMap) -> Result<Session, UiError> {
        session_cookie(headers)
            .and_then(|id| self.sessions.get(&id, Instant::now()))
            .ok_or(UiError::LoggedOut)
    }

    /// Takes one of the API's request slots (pages and API requests share them).
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, UiError> {
        self.api
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| UiError::Api(ApiError::Internal("request limiter closed")))
    }

    /// The set-cookie value of a session id (`max_age` 0 ends it).
    fn cookie(&self, id: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let value = format!(
            "{SESSION_COOKIE}={id}; Path={UI_PATH}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            max_age.as_secs()
        );
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("md_session=; Max-Age=0"))
    }

    /// The read budget of one page, `max` tasks at most.
    fn budget(&self, max: usize) -> Budget {
        Budget {
            max,
            scan: self.api.settings.scan_budget,
            bytes: self.api.settings.max_response_bytes,
        }
    }
}

/// Refuses an action whose `Origin` is not the dashboard's own (the `Host` it was sent to).
/// A request without `Origin` passes: browsers send one with every `POST`, and the CSRF token
/// is checked anyway.
fn same_origin(headers: &HeaderMap) -> Result<(), UiError> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let ok = origin.to_str().ok().zip(host).is_some_and(|(o, host)| {
        o.trim()
            .to_ascii_lowercase()
            .split_once("://")
            .is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && rest == host.to_ascii_lowercase()
            })
    });
    if ok {
        Ok(())
    } else {
        Err(UiError::Refused(
            StatusCode::FORBIDDEN,
            "origin: the dashboard's actions are accepted from its own pages only".into(),
        ))
    }
}

/// An action's form: the CSRF token of the session.
#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// Checks an action: a live session, the dashboard's own origin, and the session's CSRF token.
async fn action_session(ui: &Ui, req: Request) -> Result<Session, UiError> {
    same_origin(req.headers())?;
    let session = ui.session(req.headers())?;
    let Form(form) = Form::<ActionForm>::from_request(req, &())
        .await
        .map_err(|e| UiError::Refused(e.status(), format!("form: {}", e.body_text())))?;
    if !session.csrf_matches(&form.csrf) {
        return Err(UiError::Refused(
            StatusCode::FORBIDDEN,
            "csrf: the form's token does not match this session; reload the page and try again"
                .into(),
        ));
    }
    Ok(session)
}

async fn login_form(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    if ui.session(&headers).is_ok() {
        return redirect("/ui/overview");
    }
    html(StatusCode::OK, html::login_page(None, ""))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

async fn login(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    if let Err(e) = same_origin(req.headers()) {
        return e.render(None);
    }
    let peer = peer_of(&req);
    let form = match Form::<LoginForm>::from_request(req, &()).await {
        Ok(Form(f)) => f,
        Err(e) => {
            return UiError::Refused(e.status(), format!("form: {}", e.body_text())).render(None);
        }
    };
    let page = |status: StatusCode, message: &str| {
        html(status, html::login_page(Some(message), &form.name))
    };
    if form.name.is_empty() || form.password.is_empty() {
        return page(StatusCode::BAD_REQUEST, "Enter a user name and a password.");
    }
    match ui.api.auth.login(&form.name, &form.password, peer).await {
        Ok(Some(principal)) => {
            tracing::info!(user = %principal.name, "dashboard log-in");
            let (id, _) = ui.sessions.create(principal, Instant::now());
            let mut res = redirect("/ui/overview");
            res.headers_mut()
                .insert(SET_COOKIE, ui.cookie(&id, ui.sessions.ttl()));
            res
        }
        Ok(None) => page(StatusCode::UNAUTHORIZED, "Wrong user name or password."),
        Err(ApiError::LoginsLockedOut(secs)) => page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed log-ins: try again in {secs} s."),
        ),
        Err(e) => page(e.status(), &e.to_string()),
    }
}

async fn logout(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let id = session_cookie(req.headers());
    if let Err(e) = action_session(&ui, req).await {
        return e.render(None);
    }
    if let Some(id) = id {
        ui.sessions.remove(&id);
    }
    let mut res = redirect("/ui/login");
    res.headers_mut()
        .insert(SET_COOKIE, ui.cookie("", Duration::ZERO));
    res
}

/// Runs a page handler: a session first, then one request slot, then the page.
async fn with_session<F, Fut>(ui: Arc<Ui>, headers: &HeaderMap, page: F) -> Response
where
    F: FnOnce(Arc<Ui>, Session) -> Fut,
    Fut: std::future::Future<Output = Result<Response, UiError>>,
{
    let session = match ui.session(headers) {
        Ok(s) => s,
        Err(e) => return e.render(None),
    };
    let _slot = match ui.slot().await {
        Ok(s) => s,
        Err(e) => return e.render(Some(&session)),
    };
    match page(ui, session.clone()).await {
        Ok(res) => res,
        Err(e) => e.render(Some(&session)),
    }
}

/// Counts shown on the overview.
#[derive(serde::Serialize)]
struct OverviewCounts {
    role: String,
    tasks: u64,
    waiting: u64,
    delayed: u64,
    running: u64,
    finished: u64,
    error: u64,
    workers: u64,
    connected_workers: u64,
    lsn: u64,
}

async fn read_counts(ui: &Ui) -> Result<OverviewCounts, UiError> {
    Ok(ui
        .api
        .broker
        .query(|v| {
            let s = v.state;
            // Worker records are few (one per worker host); the bound is the API's.
            let (mut workers, mut connected) = (0u64, 0u64);
            for w in s.workers().take(super::MAX_WORKERS_LISTED) {
                workers += 1;
                if w.status == majordodo_core::model::WorkerStatus::Connected {
                    connected += 1;
                }
            }
            OverviewCounts {
                role: v.role.as_str().to_owned(),
                tasks: s.task_count() as u64,
                waiting: s.count(TaskStatus::Waiting),
                delayed: s.count(TaskStatus::Delayed),
                running: s.count(TaskStatus::Running),
                finished: s.count(TaskStatus::Finished),
                error: s.count(TaskStatus::Error),
                workers,
                connected_workers: connected,
                lsn: s.last_lsn(),
            }
        })
        .await?)
}

async fn overview(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    with_session(ui, &headers, |ui, s| async move {
        let c = read_counts(&ui).await?;
        let card = |id: &str, label: &str, n: u64| {
            format!(
                "<div class=\"card\"><span class=\"label\">{label}</span>\
                 <span class=\"count\" id=\"count-{id}\">{n}</span></div>"
            )
        };
        let mut body = String::from("<section class=\"cards\">");
        body.push_str(&card("waiting", "Waiting", c.waiting));
        body.push_str(&card("delayed", "Delayed", c.delayed));
        body.push_str(&card("running", "Running", c.running));
        body.push_str(&card("finished", "Finished", c.finished));
        body.push_str(&card("error", "Error", c.error));
        body.push_str(&card("tasks", "All tasks", c.tasks));
        body.push_str("</section>");
        let _ = write!(
            body,
            "<p class=\"meta\">Broker <b id=\"role\">{}</b> · log position <span id=\"lsn\">{}</span> · \
             workers <span id=\"workers\">{}</span> connected of {}</p>",
            esc(&c.role),
            c.lsn,
            c.connected_workers,
            c.workers
        );
        if !s.principal.is_admin() {
            body.push_str(
                "<p class=\"hint\">Counts and throughput are the whole broker's; the tasks \
                 page lists your own tasks only.</p>",
            );
        }
        body.push_str(
            "<h2>Throughput (up to the last 10 minutes)</h2>\
             <div class=\"chart\"><svg id=\"chart\" viewBox=\"0 0 800 240\" \
             preserveAspectRatio=\"none\" role=\"img\" aria-label=\"throughput chart\"></svg>\
             <p class=\"legend\"><span class=\"submitted\">submitted/s</span> \
             <span class=\"ended\">ended/s</span> \
             <span id=\"chart-now\"></span></p></div>\
             <noscript><p>The chart needs JavaScript; the counts above are current.</p></noscript>",
        );
        Ok(html(
            StatusCode::OK,
            html::page("Overview", "overview", &s.principal, &s.csrf, &body),
        ))
    })
    .await
}

async fn overview_json(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let Ok(_session) = ui.session(&headers) else {
        return super::json_response(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"ok": false, "error": "log in first"}),
        );
    };
    let Ok(_slot) = ui.slot().await else {
        return ApiError::Internal("request limiter closed").into_response();
    };
    match read_counts(&ui).await {
        Ok(counts) => super::json_response(
            StatusCode::OK,
            &serde_json::json!({
                "ok": true,
                "counts": counts,
                "rates": ui.history.rates(),
                "intervalMs": throughput::SAMPLE_INTERVAL.as_millis() as u64,
            }),
        ),
        Err(UiError::Api(e)) => e.into_response(),
        Err(_) => ApiError::Internal("overview").into_response(),
    }
}

/// The tasks page's query string. Empty fields are no filter.
#[derive(Clone, Debug, Default, Deserialize)]
struct TasksParams {
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    user: String,
    #[serde(default, rename = "type")]
    task_type: String,
    #[serde(default)]
    slot: String,
    #[serde(default)]
    worker: String,
    /// First task id of a page in id order.
    #[serde(default)]
    from: String,
    /// Matching tasks left out before a page not in id order.
    #[serde(default)]
    skip: String,
    #[serde(default)]
    max: String,
}

impl TasksParams {
    /// The query string of these filters (paging left out), for links.
    fn filters(&self) -> String {
        let mut q = String::new();
        for (k, v) in [
            ("status", &self.status),
            ("user", &self.user),
            ("type", &self.task_type),
            ("slot", &self.slot),
            ("worker", &self.worker),
            ("max", &self.max),
        ] {
            if !v.is_empty() {
                let _ = write!(q, "&{k}={}", url_component(v));
            }
        }
        q
    }
}

fn bad_field(field: &str, problem: &str) -> UiError {
    UiError::Refused(StatusCode::BAD_REQUEST, format!("{field}: {problem}"))
}

fn number<T: std::str::FromStr>(field: &str, v: &str) -> Result<Option<T>, UiError> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| bad_field(field, "must be a non-negative whole number"))
}

fn text(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// One page of tasks as read from the state.
struct TasksPage {
    tasks: Vec<TaskInfo>,
    scanned: u64,
    truncated: bool,
    next_task_id: Option<u64>,
    id_ordered: bool,
}

async fn tasks(State(ui): State<Arc<Ui>>, headers: HeaderMap, req: Request) -> Response {
    let params = Query::<TasksParams>::try_from_uri(req.uri()).map(|Query(p)| p);
    with_session(ui, &headers, |ui, s| async move {
        let p = params.map_err(|_| bad_field("query", "is not a valid query string"))?;
        let status = match p.status.trim() {
            "" => StatusFilter::All,
            v if v.eq_ignore_ascii_case("all") => StatusFilter::All,
            v => TaskStatus::parse(&v.to_ascii_lowercase())
                .map(StatusFilter::Only)
                .ok_or_else(|| {
                    bad_field(
                        "status",
                        "must be all, waiting, delayed, running, finished or error",
                    )
                })?,
        };
        let id: Option<u64> = number("id", &p.id)?;
        let from: Option<u64> = number("from", &p.from)?;
        let skip: usize = number("skip", &p.skip)?.unwrap_or(0);
        let max: u32 = number("max", &p.max)?
            .unwrap_or(DEFAULT_PAGE)
            .clamp(1, MAX_PAGE);
        let query = TasksQuery {
            max: Some(max),
            status,
            worker_id: text(&p.worker),
            task_type: text(&p.task_type),
            slot: text(&p.slot),
            user_id: text(&p.user),
            from_task_id: from,
        };
        let owner = s.principal.owner_filter();
        let budget = ui.budget(max as usize);
        let page = ui
            .api
            .broker
            .query(move |v| {
                if let Some(id) = id {
                    // One task by id: the listing from that id, one candidate examined, with
                    // the other filters (and the owner) applied to it.
                    let one = TasksQuery {
                        from_task_id: Some(id),
                        status: StatusFilter::All,
                        ..query
                    };
                    let one_budget = Budget {
                        max: 1,
                        scan: 1,
                        ..budget
                    };
                    let tasks = select::list_tasks(v.state, &one, owner.as_deref(), one_budget)
                        .tasks
                        .into_iter()
                        .filter(|t| {
                            t.task_id == id
                                && TaskStatus::parse(&t.status).is_some_and(|st| status.accepts(st))
                        })
                        .collect();
                    return TasksPage {
                        scanned: 1,
                        tasks,
                        truncated: false,
                        next_task_id: None,
                        id_ordered: true,
                    };
                }
                let listing = select::page_tasks(v.state, &query, owner.as_deref(), budget, skip);
                TasksPage {
                    tasks: listing.tasks,
                    scanned: listing.scanned,
                    truncated: listing.truncated,
                    next_task_id: listing.next_task_id,
                    id_ordered: status == StatusFilter::All,
                }
            })
            .await?;
        Ok(html(
            StatusCode::OK,
            html::page(
                "Tasks",
                "tasks",
                &s.principal,
                &s.csrf,
                &tasks_body(&p, &page, skip, max, &s.principal),
            ),
        ))
    })
    .await
}

fn clip(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn tasks_body(p: &TasksParams, page: &TasksPage, skip: usize, max: u32, who: &Principal) -> String {
    let mut body = String::new();
    let option = |value: &str, label: &str| {
        let selected = if p.status.eq_ignore_ascii_case(value) {
            " selected"
        } else {
            ""
        };
        format!("<option value=\"{value}\"{selected}>{label}</option>")
    };
    let field = |name: &str, label: &str, value: &str| {
        format!(
            "<label>{label} <input name=\"{name}\" id=\"filter-{name}\" value=\"{}\"></label>",
            esc(value)
        )
    };
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/ui/tasks\" id=\"filters\">{}\
         <label>Status <select name=\"status\" id=\"filter-status\">{}{}{}{}{}{}</select></label>\
         {}{}{}{}<input type=\"hidden\" name=\"max\" value=\"{}\">\
         <button type=\"submit\" id=\"filter-button\">Filter</button> \
         <a href=\"/ui/tasks\">Clear</a></form>",
        field("id", "Id", &p.id),
        option("all", "all"),
        option("waiting", "waiting"),
        option("delayed", "delayed"),
        option("running", "running"),
        option("finished", "finished"),
        option("error", "error"),
        if who.is_admin() {
            field("user", "User", &p.user)
        } else {
            String::new()
        },
        field("type", "Type", &p.task_type),
        field("slot", "Slot", &p.slot),
        field("worker", "Worker", &p.worker),
        max,
    );
    if !who.is_admin() {
        let _ = write!(
            body,
            "<p class=\"hint\">Tasks of user <b>{}</b>.</p>",
            esc(&who.name)
        );
    }
    let rows: Vec<Vec<String>> = page
        .tasks
        .iter()
        .map(|t| {
            vec![
                format!(
                    "<a class=\"task-link\" href=\"/ui/tasks/{0}\">{0}</a>",
                    t.task_id
                ),
                format!(
                    "<span class=\"status status-{0}\">{0}</span>",
                    esc(&t.status)
                ),
                esc(&t.user_id),
                esc(&t.task_type),
                esc(t.slot.as_deref().unwrap_or("-")),
                esc(t.worker_id.as_deref().unwrap_or("-")),
                format!("{}/{}", t.attempts, t.maxattempts),
                html::time(t.created_timestamp),
                esc(&clip(&t.data, LIST_TEXT_CHARS)),
            ]
        })
        .collect();
    body.push_str(&html::table(
        "tasks",
        &[
            "Id", "Status", "User", "Type", "Slot", "Worker", "Attempts", "Created", "Data",
        ],
        &rows,
        "No task matches.",
    ));
    let _ = write!(
        body,
        "<p class=\"meta\" id=\"page-info\">{} tasks on this page · {} examined",
        page.tasks.len(),
        page.scanned
    );
    if page.truncated {
        body.push_str(
            " · <span class=\"warn\">the search stopped at the scan budget \
             (<code>http.scan_budget</code>): narrow the filters or go on to the next page</span>",
        );
    }
    body.push_str("</p><p class=\"pager\">");
    let filters = p.filters();
    if page.id_ordered {
        if p.from.trim().is_empty() {
            body.push_str("<span>First page</span>");
        } else {
            let _ = write!(
                body,
                "<a href=\"/ui/tasks?{}\">First page</a>",
                &filters[1.min(filters.len())..]
            );
        }
        if let Some(next) = page.next_task_id {
            let _ = write!(
                body,
                " <a id=\"next-page\" href=\"/ui/tasks?from={next}{filters}\">Next page</a>"
            );
        }
    } else {
        if skip > 0 {
            let _ = write!(
                body,
                "<a id=\"prev-page\" href=\"/ui/tasks?skip={}{filters}\">Previous page</a>",
                skip.saturating_sub(max as usize)
            );
        }
        if page.tasks.len() >= max as usize || page.truncated {
            let _ = write!(
                body,
                " <a id=\"next-page\" href=\"/ui/tasks?skip={}{filters}\">Next page</a>",
                skip + page.tasks.len()
            );
        }
    }
    body.push_str("</p>");
    body
}

async fn task_detail(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    with_session(ui, &headers, |ui, s| async move {
        let id: u64 = id
            .parse()
            .map_err(|_| bad_field("id", "must be a task id (a whole number)"))?;
        let owner = s.principal.owner_filter();
        let task = ui
            .api
            .broker
            .query(move |v| {
                v.state
                    .task(TaskId(id))
                    .filter(|t| owner.as_deref().is_none_or(|o| *t.user_id == *o))
                    .map(select::task_info)
            })
            .await?;
        // Another user's task reads as an unknown one, as in the API.
        let Some(t) = task else {
            return Err(UiError::Refused(
                StatusCode::NOT_FOUND,
                format!("taskId: task {id} does not exist"),
            ));
        };
        Ok(html(
            StatusCode::OK,
            html::page(
                &format!("Task {id}"),
                "tasks",
                &s.principal,
                &s.csrf,
                &task_body(&t, &s.csrf),
            ),
        ))
    })
    .await
}

fn task_body(t: &TaskInfo, csrf: &str) -> String {
    let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or("-"));
    let rows: [(&str, &str, String); 15] = [
        (
            "status",
            "Status",
            format!(
                "<span class=\"status status-{0}\">{0}</span>",
                esc(&t.status)
            ),
        ),
        ("user", "User", esc(&t.user_id)),
        ("type", "Type", esc(&t.task_type)),
        ("slot", "Slot", opt(&t.slot)),
        ("worker", "Worker", opt(&t.worker_id)),
        (
            "attempts",
            "Attempts",
            format!("{} of {}", t.attempts, t.maxattempts),
        ),
        ("created", "Created", html::time(t.created_timestamp)),
        (
            "start",
            "Requested start",
            html::time(t.requested_start_time),
        ),
        ("deadline", "Deadline", html::time(t.deadline)),
        ("mode", "Mode", opt(&t.mode)),
        ("codepool", "Code pool", opt(&t.codepool)),
        ("resources", "Resources", opt(&t.resources)),
        ("data", "Data", format!("<pre>{}</pre>", esc(&t.data))),
        ("result", "Result", format!("<pre>{}</pre>", opt(&t.result))),
        ("id", "Id", t.task_id.to_string()),
    ];
    let mut body = String::from("<dl class=\"task\" id=\"task\">");
    for (id, label, value) in rows {
        let _ = write!(body, "<dt>{label}</dt><dd id=\"task-{id}\">{value}</dd>");
    }
    body.push_str("</dl>");
    let live = matches!(t.status.as_str(), "waiting" | "delayed" | "running");
    if live {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/ui/tasks/{}/cancel\" class=\"actions\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" id=\"cancel\" class=\"danger\">Cancel task</button></form>",
            t.task_id,
            esc(csrf)
        );
    }
    body.push_str("<p><a href=\"/ui/tasks\">All tasks</a></p>");
    body
}

async fn cancel(State(ui): State<Arc<Ui>>, Path(id): Path<String>, req: Request) -> Response {
    let session = match action_session(&ui, req).await {
        Ok(s) => s,
        Err(e) => return e.render(None),
    };
    let Ok(id) = id.parse::<u64>() else {
        return bad_field("id", "must be a task id (a whole number)").render(Some(&session));
    };
    let _slot = match ui.slot().await {
        Ok(s) => s,
        Err(e) => return e.render(Some(&session)),
    };
    let done = ui
        .api
        .broker
        .act(
            BrokerAction::CancelTask(TaskId(id)),
            caller_of(&session.principal),
        )
        .await;
    match done {
        Ok(Ok(ActionDone::Cancelled(..))) => {
            tracing::info!(user = %session.principal.name, task = id, "dashboard cancelTask");
            redirect(&format!("/ui/tasks/{id}"))
        }
        Ok(Ok(_)) => UiError::Api(ApiError::Internal("unexpected answer")).render(Some(&session)),
        Ok(Err(refused)) => UiError::Api(ApiError::refused(&refused)).render(Some(&session)),
        Err(e) => UiError::from(e).render(Some(&session)),
    }
}

#[derive(Default, Deserialize)]
struct FromParam {
    #[serde(default)]
    from: String,
}

async fn workers(State(ui): State<Arc<Ui>>, headers: HeaderMap, req: Request) -> Response {
    let from = Query::<FromParam>::try_from_uri(req.uri())
        .map(|Query(p)| p.from)
        .unwrap_or_default();
    with_session(ui, &headers, |ui, s| async move {
        let reveal = s.principal.is_admin();
        let start = from.clone();
        let (rows, next, now) = ui
            .api
            .broker
            .query(move |v| {
                let mut rows = Vec::new();
                let mut next = None;
                for w in v.state.workers().filter(|w| *w.id >= *start) {
                    if rows.len() >= LIST_PAGE {
                        next = Some(w.id.to_string());
                        break;
                    }
                    let capacity = v.leader_core.and_then(|l| l.worker_capacity(&w.id));
                    let running = v.state.running_on(&w.id).map_or(0, |r| r.len());
                    let mut row = vec![
                        format!(
                            "<a href=\"/ui/tasks?status=running&amp;worker={}\">{}</a>",
                            url_component(&w.id),
                            esc(&w.id)
                        ),
                        esc(w.status.as_str()),
                        capacity.map_or_else(
                            || "-".to_owned(),
                            |c| {
                                let threads = std::iter::once(("threads", u64::from(c.max_threads)));
                                html::amounts(
                                    threads.chain(c.amounts.iter().map(|(d, n)| (d.as_str(), *n))),
                                )
                            },
                        ),
                        running.to_string(),
                        format!(
                            "{} <span class=\"ago\">({})</span>",
                            html::time(w.last_connection),
                            html::ago(w.last_connection, v.now)
                        ),
                    ];
                    if reveal {
                        row.push(esc(&w.process_id));
                        row.push(esc(&w.location));
                    }
                    rows.push(row);
                }
                (rows, next, v.now)
            })
            .await?;
        let mut head = vec!["Worker", "Status", "Capacity", "Running tasks", "Last contact"];
        if reveal {
            head.extend(["Process", "Location"]);
        }
        let mut body = html::table("workers", &head, &rows, "No worker has connected yet.");
        let _ = write!(
            body,
            "<p class=\"meta\">Broker time {}. Capacity is what a connected worker declared \
             (known to the leader only).</p>",
            html::time(now)
        );
        if let Some(next) = next {
            let _ = write!(
                body,
                "<p class=\"pager\"><a id=\"next-page\" href=\"/ui/workers?from={}\">Next page</a></p>",
                url_component(&next)
            );
        }
        Ok(html(
            StatusCode::OK,
            html::page("Workers", "workers", &s.principal, &s.csrf, &body),
        ))
    })
    .await
}

/// `{"cpu": 1, ...}` as `cpu 1, ...`.
fn json_amounts(v: &serde_json::Value) -> String {
    match v.as_object() {
        Some(map) => html::amounts(
            map.iter()
                .map(|(d, n)| (d.as_str(), n.as_u64().unwrap_or(0))),
        ),
        None => "-".to_owned(),
    }
}

async fn tenants(State(ui): State<Arc<Ui>>, headers: HeaderMap, req: Request) -> Response {
    let from = Query::<FromParam>::try_from_uri(req.uri())
        .map(|Query(p)| p.from)
        .unwrap_or_default();
    with_session(ui, &headers, |ui, s| async move {
        let owner = s.principal.owner_filter();
        let start = text(&from);
        let (view, resources, amounts) = ui
            .api
            .broker
            .query(move |v| {
                (
                    select::tenants(v.state, owner.as_deref(), start.as_deref(), LIST_PAGE),
                    select::resources(v, None),
                    select::amounts(v, None),
                )
            })
            .await?;
        let empty = Vec::new();
        let cell = |v: &serde_json::Value, k: &str| match &v[k] {
            serde_json::Value::String(s) => esc(s),
            serde_json::Value::Null => "-".to_owned(),
            other => esc(&other.to_string()),
        };
        let users: Vec<Vec<String>> = view["users"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|u| {
                vec![
                    cell(u, "userId"),
                    cell(u, "group"),
                    cell(u, "weight"),
                    cell(u, "waitingTasks"),
                    cell(u, "runningTasks"),
                    json_amounts(&u["use"]),
                    json_amounts(&u["quota"]),
                    if u["atQuota"].as_bool() == Some(true) {
                        "<span class=\"warn\">at quota</span>".to_owned()
                    } else {
                        "no".to_owned()
                    },
                ]
            })
            .collect();
        let groups: Vec<Vec<String>> = view["groups"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|g| {
                vec![
                    cell(g, "group"),
                    cell(g, "runningTasks"),
                    json_amounts(&g["use"]),
                    json_amounts(&g["quota"]),
                    if g["atQuota"].as_bool() == Some(true) {
                        "<span class=\"warn\">at quota</span>".to_owned()
                    } else {
                        "no".to_owned()
                    },
                ]
            })
            .collect();
        let mut body = String::from("<h2>Users</h2>");
        body.push_str(&html::table(
            "tenants",
            &[
                "User", "Group", "Weight", "Waiting", "Running", "Use", "Quota", "At quota",
            ],
            &users,
            "No user has tasks, a service level or a quota.",
        ));
        if let Some(next) = view["nextUserId"].as_str() {
            let _ = write!(
                body,
                "<p class=\"pager\"><a id=\"next-page\" href=\"/ui/tenants?from={}\">Next page</a></p>",
                url_component(next)
            );
        }
        if s.principal.is_admin() {
            body.push_str("<h2>Groups</h2>");
            body.push_str(&html::table(
                "groups",
                &["Group", "Running", "Use", "Quota", "At quota"],
                &groups,
                "No group has a use or a quota.",
            ));
        }
        body.push_str(
            "<p class=\"meta\">Use counts the running tasks and what they need per dimension; \
             a tenant at quota starts no new task that needs the dimension at its limit \
             (quotas are set with <code>setQuota</code>).</p>",
        );
        // The whole cluster's use, as the API's resources view shows it.
        let rows = |v: &serde_json::Value, keys: &[&str]| -> Vec<Vec<String>> {
            v.as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|r| keys.iter().map(|k| cell(r, k)).collect())
                .collect()
        };
        body.push_str("<h2>Cluster use</h2>");
        body.push_str(&html::table(
            "amounts",
            &["Dimension", "Used by running tasks", "Capacity of connected workers"],
            &rows(&amounts, &["dimension", "used", "capacity"]),
            "No running task needs an amount and no worker declares one.",
        ));
        body.push_str(&html::table(
            "resources",
            &["Resource", "Running tasks", "Limit (0: none)"],
            &rows(&resources, &["id", "runningTasks", "actualLimit"]),
            "No named resource is in use or limited.",
        ));
        Ok(html(
            StatusCode::OK,
            html::page("Tenants", "tenants", &s.principal, &s.csrf, &body),
        ))
    })
    .await
}

async fn cluster(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    with_session(ui, &headers, |ui, s| async move {
        let body = ui
            .api
            .broker
            .query(|v| {
                let mut body = format!(
                    "<dl class=\"task\" id=\"cluster\"><dt>This broker</dt><dd id=\"broker-id\">{}</dd>\
                     <dt>Role</dt><dd id=\"cluster-role\">{}</dd>\
                     <dt>Log position</dt><dd>{}</dd>",
                    esc(v.broker_id),
                    esc(v.role.as_str()),
                    v.state.last_lsn()
                );
                match v.cluster {
                    None => {
                        body.push_str(
                            "<dt>Replication</dt><dd id=\"cluster-mode\">standalone, file log</dd></dl>\
                             <p class=\"meta\">This broker runs alone on its file log: there are no \
                             followers and no ledgers.</p>",
                        );
                    }
                    Some(c) => {
                        let status = select::cluster_status(c);
                        let _ = write!(
                            body,
                            "<dt>Replication</dt><dd id=\"cluster-mode\">BookKeeper ledgers, ZooKeeper</dd>\
                             <dt>Leader</dt><dd id=\"leader\">{}</dd>\
                             <dt>Current ledger</dt><dd id=\"ledger\">{}</dd>",
                            esc(status.leader_id.as_deref().unwrap_or("unknown")),
                            c.current_ledger.map_or("-".to_owned(), |l| l.to_string()),
                        );
                        if let Some(url) = v.leader {
                            let _ = write!(body, "<dt>Leader's API</dt><dd>{}</dd>", esc(url));
                        }
                        body.push_str("</dl>");
                        let rows: Vec<Vec<String>> = status
                            .brokers
                            .iter()
                            .map(|b| {
                                vec![
                                    esc(&b.broker_id),
                                    if b.leader { "leader" } else { "follower" }.to_owned(),
                                    esc(&b.api_url),
                                    b.applied_lsn.map_or("-".to_owned(), |n| n.to_string()),
                                    b.lag.map_or("-".to_owned(), |n| n.to_string()),
                                ]
                            })
                            .collect();
                        body.push_str("<h2>Brokers</h2>");
                        body.push_str(&html::table(
                            "brokers",
                            &["Broker", "Role", "API", "Applied position", "Lag (entries)"],
                            &rows,
                            "No broker has published itself yet.",
                        ));
                        let last = status.ledgers.len().saturating_sub(1);
                        let rows: Vec<Vec<String>> = status
                            .ledgers
                            .iter()
                            .enumerate()
                            .map(|(i, l)| {
                                vec![
                                    l.ledger_id.to_string(),
                                    if i == last { "current" } else { "closed" }.to_owned(),
                                    l.first_lsn.to_string(),
                                    html::time(l.created_at),
                                ]
                            })
                            .collect();
                        body.push_str("<h2>Ledgers</h2>");
                        body.push_str(&html::table(
                            "ledgers",
                            &["Ledger", "State", "First position", "Created"],
                            &rows,
                            "No ledger is listed yet.",
                        ));
                    }
                }
                body
            })
            .await?;
        Ok(html(
            StatusCode::OK,
            html::page("Cluster", "cluster", &s.principal, &s.csrf, &body),
        ))
    })
    .await
}
