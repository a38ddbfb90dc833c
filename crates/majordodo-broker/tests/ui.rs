//! The web dashboard at `/ui` against a real broker (memory log), driven through the router:
//! log-in and sessions (cookie attributes, log-out, throttling), CSRF and origin checks on
//! actions, plain users confined to their own tasks, escaping of everything that comes from
//! tasks, filters and paging, and every page with a hundred thousand tasks.
//!
//! The same pages in a real browser: `tests/ui_browser.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use majordodo_broker::http::auth::hash_password_with;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::{Broker, BrokerConfig, SystemClock};
use majordodo_core::{DefaultGroupMapper, TaskStatus};
use majordodo_log::{CommitLog, MemoryLog, MemoryStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bound on every request, so a bug fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(60);
const ADMIN_PASSWORD: &str = "admin password";
const ALICE_PASSWORD: &str = "alice password";
const BOB_PASSWORD: &str = "bob password";

/// Users: `admin` (admin), `alice` and `bob` (users), all with passwords.
fn config() -> HttpConfig {
    let mut rng = StdRng::seed_from_u64(7);
    let user = |name: &str, role, password: &str, rng: &mut StdRng| UserConfig {
        name: name.into(),
        role,
        password_hash: Some(hash_password_with(password, 1_000, rng)),
        token_sha256: None,
    };
    HttpConfig {
        users: vec![
            user("admin", UserRole::Admin, ADMIN_PASSWORD, &mut rng),
            user("alice", UserRole::User, ALICE_PASSWORD, &mut rng),
            user("bob", UserRole::User, BOB_PASSWORD, &mut rng),
        ],
        ..HttpConfig::default()
    }
}

struct Harness {
    broker: Option<Broker>,
    handle: majordodo_broker::BrokerHandle,
    stop: CancellationToken,
    app: Router,
}

/// An answer: status, headers, body as text.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    #[track_caller]
    fn assert_ok(&self) -> &str {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        &self.body
    }
}

impl Harness {
    async fn start() -> Harness {
        Self::with_config(config()).await
    }

    async fn with_config(config: HttpConfig) -> Harness {
        Self::with_settings(config.validate().expect("valid config")).await
    }

    async fn with_settings(settings: http::HttpSettings) -> Harness {
        let store = MemoryStore::new();
        let log = Arc::new(MemoryLog::open(&store));
        let stop = CancellationToken::new();
        let broker = Broker::start(
            BrokerConfig {
                broker_id: "broker-ui".into(),
                ..BrokerConfig::default()
            },
            log as Arc<dyn CommitLog>,
            None,
            Arc::new(DefaultGroupMapper),
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
        .await
        .expect("broker starts");
        let handle = broker.handle();
        let app = http::router(handle.clone(), settings);
        Harness {
            broker: Some(broker),
            handle,
            stop,
            app,
        }
    }

    async fn call(&self, req: Request<Body>) -> Page {
        let res = tokio::time::timeout(WAIT, self.app.clone().oneshot(req))
            .await
            .expect("answered in time")
            .expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
            .await
            .unwrap();
        Page {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).expect("UTF-8 answer"),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut req = Request::get(path);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("md_session={c}"));
        }
        self.call(req.body(Body::empty()).unwrap()).await
    }

    /// A form POST as a browser sends it from the dashboard's own pages.
    async fn post_form(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &str,
        origin: Option<&str>,
    ) -> Page {
        let mut req = Request::post(path)
            .header(header::HOST, "127.0.0.1:7364")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, format!("md_session={c}"));
        }
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        self.call(req.body(Body::from(form.to_owned())).unwrap())
            .await
    }

    /// Logs in; the session cookie's value.
    async fn login(&self, name: &str, password: &str) -> String {
        let page = self
            .post_form(
                "/ui/login",
                None,
                &format!("name={name}&password={}", password.replace(' ', "+")),
                Some(OWN_ORIGIN),
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        cookie_of(&page).expect("a session cookie")
    }

    /// Submits one task through the JSON API as `user`; its id.
    async fn submit(&self, auth: &str, body: Value) -> u64 {
        let req = Request::post("/majordodo")
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let page = self.call(req).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let v: Value = serde_json::from_str(&page.body).unwrap();
        v["taskId"].as_u64().expect("a task id")
    }

    async fn task_status(&self, id: u64) -> Option<TaskStatus> {
        self.handle
            .query(move |v| v.state.task(majordodo_core::TaskId(id)).map(|t| t.status))
            .await
            .unwrap()
    }

    /// A digest of the whole state and its log position: what a refused action leaves as is.
    async fn state_mark(&self) -> (String, u64) {
        self.handle
            .query(|v| {
                let bytes = majordodo_proto::snapshot::encode_snapshot(&v.state.snapshot_source());
                let digest: String = sha2::Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                (digest, v.state.last_lsn())
            })
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(b) = self.broker.take() {
            let _ = b.wait().await;
        }
    }
}

const OWN_ORIGIN: &str = "http://127.0.0.1:7364";

/// An origin the API accepts (`http.allowed_origins`) in some tests.
const PARTNER: &str = "https://partner.example";

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn admin() -> String {
    basic("admin", ADMIN_PASSWORD)
}

fn task(user: &str, task_type: &str, data: &str) -> Value {
    json!({"action": "submitTask", "userid": user, "tasktype": task_type, "data": data,
           "maxattempts": 1})
}

/// The session id a `Set-Cookie` answer sets, if any.
fn cookie_of(page: &Page) -> Option<String> {
    let set = page.headers.get(header::SET_COOKIE)?.to_str().ok()?;
    let value = set.strip_prefix("md_session=")?.split(';').next()?;
    (!value.is_empty()).then(|| value.to_owned())
}

/// The CSRF token of a page's forms.
fn csrf_of(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &body[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The task ids linked from a tasks page, in order.
fn listed_ids(body: &str) -> Vec<u64> {
    body.match_indices("class=\"task-link\" href=\"/ui/tasks/")
        .map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn log_in_opens_a_strict_http_only_session_and_log_out_ends_it() {
    // Goal: pages need a session (else they redirect to the log-in); a wrong password opens
    // none; a right one sets a cookie that is HttpOnly, SameSite=Strict, limited to /ui and
    // not Secure without TLS; log-out needs the CSRF token and then ends the session.
    let h = Harness::start().await;
    let page = h.get("/ui/overview", None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/ui/login");
    let page = h.get("/ui/tasks", Some("forged-session-id")).await;
    assert_eq!(page.location(), "/ui/login", "an unknown session is none");
    let form = h.get("/ui/login", None).await;
    assert!(
        form.assert_ok()
            .contains("<form method=\"post\" action=\"/ui/login\"")
    );

    let wrong = h
        .post_form(
            "/ui/login",
            None,
            "name=alice&password=nope",
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong user name or password."));
    assert!(cookie_of(&wrong).is_none());
    let unknown = h
        .post_form("/ui/login", None, "name=mallory&password=x", None)
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(unknown.body.contains("Wrong user name or password."));

    let page = h
        .post_form(
            "/ui/login",
            None,
            "name=alice&password=alice+password",
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/ui/overview");
    let set = page.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Secure"), "no TLS, no Secure: {set}");
    let cookie = cookie_of(&page).unwrap();
    assert_eq!(
        STANDARD
            .decode(cookie.replace('-', "+").replace('_', "/") + "=")
            .unwrap()
            .len(),
        32,
        "a 256-bit session id"
    );

    let overview = h.get("/ui/overview", Some(&cookie)).await;
    let body = overview.assert_ok();
    assert!(body.contains("alice (user)"), "{body}");
    let headers = &overview.headers;
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let csrf = csrf_of(body);

    let refused = h.post_form("/ui/logout", Some(&cookie), "", None).await;
    assert_eq!(
        refused.status,
        StatusCode::FORBIDDEN,
        "log-out without a token"
    );
    h.get("/ui/overview", Some(&cookie)).await.assert_ok();
    let out = h
        .post_form(
            "/ui/logout",
            Some(&cookie),
            &format!("csrf={csrf}"),
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        h.get("/ui/overview", Some(&cookie)).await.location(),
        "/ui/login"
    );
    h.stop().await;
}

#[tokio::test]
async fn with_tls_the_session_cookie_is_secure() {
    // Goal: when the API serves TLS, the session cookie carries Secure (browsers then never
    // send it over plain HTTP).
    let dir = tempfile::tempdir().unwrap();
    let ca = majordodo_testkit::certs::TestCa::new("ui test ca");
    let (cert_file, key_file) = ca.write_issued(dir.path(), "broker", &["localhost"]);
    let tls = majordodo_tls::ServerTls::load(
        "http",
        majordodo_tls::ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: None,
        },
    )
    .unwrap();
    let settings = config().validate().unwrap().with_tls(Some(tls));
    let h = Harness::with_settings(settings).await;
    let page = h
        .post_form(
            "/ui/login",
            None,
            "name=bob&password=bob+password",
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let set = page.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.ends_with("; Secure"), "{set}");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    h.stop().await;
}

#[tokio::test]
async fn actions_need_the_session_csrf_token_and_the_dashboards_own_origin() {
    // Goal: a cancel without the session's CSRF token, with another session's token, or from
    // a foreign origin is refused 403 and changes nothing; with the token from the dashboard's
    // own page it cancels the task. A log-in posted from a foreign origin is refused too.
    // An origin the API accepts (http.allowed_origins) is foreign to the dashboard all the same.
    let h = Harness::with_config(HttpConfig {
        allowed_origins: vec![PARTNER.into()],
        ..config()
    })
    .await;
    let id = h.submit(&admin(), task("alice", "report", "x")).await;
    let admin_cookie = h.login("admin", ADMIN_PASSWORD).await;
    let other_cookie = h.login("admin", ADMIN_PASSWORD).await;
    let page = h.get(&format!("/ui/tasks/{id}"), Some(&admin_cookie)).await;
    let csrf = csrf_of(page.assert_ok());
    let other_csrf = csrf_of(h.get("/ui/overview", Some(&other_cookie)).await.assert_ok());
    assert_ne!(csrf, other_csrf);
    let path = format!("/ui/tasks/{id}/cancel");
    let before = h.state_mark().await;
    for (form, origin, why) in [
        (String::new(), Some(OWN_ORIGIN), "no token"),
        ("csrf=wrong".to_owned(), Some(OWN_ORIGIN), "a wrong token"),
        (
            format!("csrf={other_csrf}"),
            Some(OWN_ORIGIN),
            "another session's token",
        ),
        (
            format!("csrf={csrf}"),
            Some("http://evil.example"),
            "a foreign origin",
        ),
        (
            format!("csrf={csrf}"),
            Some(PARTNER),
            "an origin allowed for the API",
        ),
    ] {
        let page = h.post_form(&path, Some(&admin_cookie), &form, origin).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{why}: {}", page.body);
        assert_eq!(h.state_mark().await, before, "{why} changed the state");
    }
    let no_session = h
        .post_form(&path, None, &format!("csrf={csrf}"), Some(OWN_ORIGIN))
        .await;
    assert_eq!(no_session.location(), "/ui/login");
    assert_eq!(h.state_mark().await, before);

    let done = h
        .post_form(
            &path,
            Some(&admin_cookie),
            &format!("csrf={csrf}"),
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), format!("/ui/tasks/{id}"));
    assert_eq!(h.task_status(id).await, Some(TaskStatus::Error));
    let detail = h.get(&format!("/ui/tasks/{id}"), Some(&admin_cookie)).await;
    let body = detail.assert_ok();
    assert!(body.contains("<dd id=\"task-status\"><span class=\"status status-error\">error"));
    assert!(body.contains("cancelled"), "{body}");
    assert!(
        !body.contains("id=\"cancel\""),
        "an ended task has no Cancel"
    );
    // Cancelling again: the API's 409, shown as a page.
    let again = h
        .post_form(
            &path,
            Some(&admin_cookie),
            &format!("csrf={csrf}"),
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.body.contains("already ended"), "{}", again.body);

    for origin in ["https://evil.example", PARTNER] {
        let foreign = h
            .post_form(
                "/ui/login",
                None,
                "name=admin&password=admin+password",
                Some(origin),
            )
            .await;
        assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{origin}");
        assert!(cookie_of(&foreign).is_none());
    }
    // The API itself accepts that origin.
    let req = Request::get("/majordodo?view=status")
        .header(header::AUTHORIZATION, admin())
        .header(header::ORIGIN, PARTNER)
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.call(req).await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn plain_users_see_and_cancel_only_their_own_tasks() {
    // Goal: alice's tasks page lists her tasks and never bob's, whatever the user filter; bob's
    // task's detail is unknown to her (404), and her cancel of it is refused and changes
    // nothing; the admin sees both.
    let h = Harness::start().await;
    let hers = h.submit(&admin(), task("alice", "report", "hers")).await;
    let his = h.submit(&admin(), task("bob", "report", "his")).await;
    let alice = h.login("alice", ALICE_PASSWORD).await;
    let admin_cookie = h.login("admin", ADMIN_PASSWORD).await;
    for path in [
        "/ui/tasks",
        "/ui/tasks?status=waiting",
        "/ui/tasks?type=report",
        "/ui/tasks?user=alice",
    ] {
        let page = h.get(path, Some(&alice)).await;
        assert_eq!(listed_ids(page.assert_ok()), vec![hers], "{path}");
    }
    for path in ["/ui/tasks?user=bob", "/ui/tasks?user=bob&status=waiting"] {
        let page = h.get(path, Some(&alice)).await;
        assert_eq!(listed_ids(page.assert_ok()), Vec::<u64>::new(), "{path}");
    }
    let page = h.get(&format!("/ui/tasks?id={his}"), Some(&alice)).await;
    assert_eq!(listed_ids(page.assert_ok()), Vec::<u64>::new());
    let detail = h.get(&format!("/ui/tasks/{his}"), Some(&alice)).await;
    assert_eq!(detail.status, StatusCode::NOT_FOUND);
    assert!(!detail.body.contains("his"), "{}", detail.body);
    let csrf = csrf_of(h.get("/ui/overview", Some(&alice)).await.assert_ok());
    let before = h.state_mark().await;
    let refused = h
        .post_form(
            &format!("/ui/tasks/{his}/cancel"),
            Some(&alice),
            &format!("csrf={csrf}"),
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
    assert_eq!(h.state_mark().await, before);
    assert_eq!(h.task_status(his).await, Some(TaskStatus::Waiting));
    let tenants = h.get("/ui/tenants", Some(&alice)).await;
    let body = tenants.assert_ok();
    assert!(body.contains("<td>alice</td>") && !body.contains("<td>bob</td>"));

    let page = h.get("/ui/tasks", Some(&admin_cookie)).await;
    assert_eq!(listed_ids(page.assert_ok()), vec![hers, his]);
    let page = h.get("/ui/tasks?user=BOB", Some(&admin_cookie)).await;
    assert_eq!(listed_ids(page.assert_ok()), vec![his]);
    h.stop().await;
}

#[tokio::test]
async fn task_data_and_names_are_shown_escaped() {
    // Goal: markup in a task's data, type, slot and user never reaches a page as markup: the
    // list, the detail and the tenants page show it escaped.
    let h = Harness::start().await;
    let evil = "<script>alert('x')</script>";
    let id = h
        .submit(
            &admin(),
            json!({"action": "submitTask", "userid": "<b>eve</b>", "tasktype": "<i>t</i>",
                   "data": evil, "slot": "\"><img src=x>", "maxattempts": 1}),
        )
        .await;
    let cookie = h.login("admin", ADMIN_PASSWORD).await;
    for path in [
        "/ui/tasks".to_owned(),
        format!("/ui/tasks/{id}"),
        "/ui/tenants".to_owned(),
        format!("/ui/tasks?type={}", "%3Ci%3Et%3C%2Fi%3E"),
    ] {
        let page = h.get(&path, Some(&cookie)).await;
        let body = page.assert_ok();
        for raw in ["<script>alert", "<b>eve", "<i>t</i>", "<img src=x>"] {
            assert!(!body.contains(raw), "{path} shows {raw} unescaped");
        }
        assert!(body.contains("&lt;b&gt;eve&lt;/b&gt;"), "{path}: {body}");
    }
    let detail = h.get(&format!("/ui/tasks/{id}"), Some(&cookie)).await;
    assert!(
        detail
            .body
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
    );
    assert!(detail.body.contains("&quot;&gt;&lt;img src=x&gt;"));
    // Filter values come back into the form escaped too.
    let page = h
        .get("/ui/tasks?worker=%22%3E%3Cscript%3E", Some(&cookie))
        .await;
    assert!(!page.assert_ok().contains("\"><script>"));
    h.stop().await;
}

#[tokio::test]
async fn tasks_are_filtered_and_paged_on_the_server() {
    // Goal: each filter (id, status, user, type, slot, worker) narrows the list as the API's
    // view does; pages in id order go on with their next link, pages of a status go on with
    // skip, and following the links visits every matching task once.
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for i in 0..30u64 {
        let ty = if i % 3 == 0 { "render" } else { "report" };
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let mut t = task(user, ty, &format!("data {i}"));
        if i == 7 {
            t["slot"] = json!("the-slot");
        }
        ids.push(h.submit(&admin(), t).await);
    }
    let cookie = h.login("admin", ADMIN_PASSWORD).await;
    let list = |path: String| {
        let h = &h;
        let cookie = cookie.clone();
        async move { listed_ids(h.get(&path, Some(&cookie)).await.assert_ok()) }
    };
    assert_eq!(list("/ui/tasks?max=100".into()).await, ids);
    let renders: Vec<u64> = ids.iter().step_by(3).copied().collect();
    assert_eq!(list("/ui/tasks?type=render&max=100".into()).await, renders);
    let alices: Vec<u64> = ids.iter().step_by(2).copied().collect();
    assert_eq!(list("/ui/tasks?user=alice&max=100".into()).await, alices);
    assert_eq!(list("/ui/tasks?slot=the-slot".into()).await, vec![ids[7]]);
    assert_eq!(list(format!("/ui/tasks?id={}", ids[4])).await, vec![ids[4]]);
    assert_eq!(
        list(format!("/ui/tasks?id={}&status=running", ids[4])).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        list("/ui/tasks?status=running".into()).await,
        Vec::<u64>::new()
    );
    assert_eq!(list("/ui/tasks?worker=w1".into()).await, Vec::<u64>::new());
    assert_eq!(
        list("/ui/tasks?status=waiting&max=100".into()).await.len(),
        30
    );
    let bad = h.get("/ui/tasks?status=sleeping", Some(&cookie)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("status: must be"));
    let bad = h.get("/ui/tasks?id=abc", Some(&cookie)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Follow the "Next page" links, in id order and by status.
    for start in ["/ui/tasks?max=7", "/ui/tasks?status=waiting&max=7"] {
        let mut seen = Vec::new();
        let mut path = start.to_owned();
        for _ in 0..10 {
            let page = h.get(&path, Some(&cookie)).await;
            let body = page.assert_ok().to_owned();
            let got = listed_ids(&body);
            assert!(got.len() <= 7);
            seen.extend(got);
            let Some(at) = body.find("id=\"next-page\" href=\"") else {
                break;
            };
            let rest = &body[at + "id=\"next-page\" href=\"".len()..];
            path = rest[..rest.find('"').unwrap()].replace("&amp;", "&");
        }
        seen.sort_unstable();
        assert_eq!(seen, ids, "{start}: every task once");
    }
    h.stop().await;
}

#[tokio::test]
async fn bad_actions_are_refused_with_the_field_and_change_nothing() {
    // Goal: a malformed task id, an unknown task, an oversized form and a body that is not a
    // form are each refused with a 4xx naming the problem, and leave the state (digest and log
    // position) as it was.
    let h = Harness::start().await;
    let id = h.submit(&admin(), task("alice", "report", "x")).await;
    let cookie = h.login("admin", ADMIN_PASSWORD).await;
    let csrf = csrf_of(h.get("/ui/overview", Some(&cookie)).await.assert_ok());
    let token = format!("csrf={csrf}");
    let big = format!("{token}&pad={}", "x".repeat(20_000));
    let before = h.state_mark().await;
    for (path, form, want, says) in [
        (
            "/ui/tasks/abc/cancel".to_owned(),
            token.clone(),
            StatusCode::BAD_REQUEST,
            "id: must be",
        ),
        (
            "/ui/tasks/99999/cancel".to_owned(),
            token.clone(),
            StatusCode::NOT_FOUND,
            "task 99999 does not exist",
        ),
        (
            format!("/ui/tasks/{id}/cancel"),
            big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "form:",
        ),
        (
            "/ui/login".to_owned(),
            big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "form:",
        ),
        (
            "/ui/login".to_owned(),
            "name=admin".to_owned(),
            StatusCode::BAD_REQUEST,
            "Enter a user name and a password.",
        ),
    ] {
        let page = h
            .post_form(&path, Some(&cookie), &form, Some(OWN_ORIGIN))
            .await;
        assert_eq!(page.status, want, "{path}: {}", page.body);
        assert!(page.body.contains(says), "{path}: {}", page.body);
        assert_eq!(h.state_mark().await, before, "{path} changed the state");
    }
    let req = Request::post(format!("/ui/tasks/{id}/cancel"))
        .header(header::COOKIE, format!("md_session={cookie}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(token))
        .unwrap();
    let page = h.call(req).await;
    assert_eq!(
        page.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        page.body
    );
    assert_eq!(h.state_mark().await, before);
    assert_eq!(h.task_status(id).await, Some(TaskStatus::Waiting));
    h.stop().await;
}

#[tokio::test]
async fn failed_log_ins_are_throttled_like_the_api() {
    // Goal: the log-in form goes through the API's authenticator: after auth_failure_limit
    // wrong passwords for a user, its log-ins are refused 429 without checking the password,
    // even the right one.
    let h = Harness::with_config(HttpConfig {
        auth_failure_limit: 3,
        ..config()
    })
    .await;
    for _ in 0..3 {
        let page = h
            .post_form("/ui/login", None, "name=bob&password=wrong", None)
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    let page = h
        .post_form("/ui/login", None, "name=bob&password=bob+password", None)
        .await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{}", page.body);
    assert!(page.body.contains("Too many failed log-ins"));
    assert!(cookie_of(&page).is_none());
    // The lock-out is the API's own: Basic logins of bob are refused too.
    let req = Request::get("/majordodo?view=status")
        .header(header::AUTHORIZATION, basic("bob", BOB_PASSWORD))
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.call(req).await.status, StatusCode::TOO_MANY_REQUESTS);
    h.stop().await;
}

#[tokio::test]
async fn overview_workers_tenants_and_cluster_pages_show_the_broker() {
    // Goal: the overview counts tasks by status (the page and its JSON), the cluster page of a
    // standalone broker says so, workers and tenants answer; the assets are served embedded.
    let h = Harness::start().await;
    let a = h.submit(&admin(), task("alice", "report", "1")).await;
    h.submit(&admin(), task("alice", "report", "2")).await;
    let cookie = h.login("admin", ADMIN_PASSWORD).await;
    let csrf = csrf_of(h.get("/ui/overview", Some(&cookie)).await.assert_ok());
    let page = h
        .post_form(
            &format!("/ui/tasks/{a}/cancel"),
            Some(&cookie),
            &format!("csrf={csrf}"),
            Some(OWN_ORIGIN),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let page = h.get("/ui/overview", Some(&cookie)).await;
    let body = page.assert_ok();
    assert!(body.contains("id=\"count-waiting\">1<"), "{body}");
    assert!(body.contains("id=\"count-error\">1<"));
    assert!(body.contains("id=\"count-tasks\">2<"));
    assert!(body.contains("<b id=\"role\">LEADER</b>"));
    let json = h.get("/ui/api/overview", Some(&cookie)).await;
    let v: Value = serde_json::from_str(json.assert_ok()).unwrap();
    assert_eq!(v["counts"]["waiting"], 1);
    assert_eq!(v["counts"]["error"], 1);
    assert!(v["rates"].is_array());
    assert_eq!(
        h.get("/ui/api/overview", None).await.status,
        StatusCode::UNAUTHORIZED
    );

    let cluster = h.get("/ui/cluster", Some(&cookie)).await;
    let body = cluster.assert_ok();
    assert!(body.contains("standalone, file log"), "{body}");
    assert!(body.contains("broker-ui"));
    let workers = h.get("/ui/workers", Some(&cookie)).await;
    assert!(workers.assert_ok().contains("No worker has connected yet."));
    let tenants = h.get("/ui/tenants", Some(&cookie)).await;
    let body = tenants.assert_ok();
    assert!(body.contains("<td>alice</td>"));
    assert!(body.contains("<h2>Cluster use</h2>"));
    assert!(body.contains("No named resource is in use or limited."));

    let css = h.get("/ui/assets/style.css", None).await;
    assert!(css.assert_ok().contains("--accent"));
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css");
    let js = h.get("/ui/assets/app.js", None).await;
    assert!(js.assert_ok().contains("/ui/api/overview"));
    assert_eq!(h.get("/ui", None).await.location(), "/ui/overview");
    h.stop().await;
}

#[tokio::test]
async fn the_dashboard_can_be_turned_off() {
    // Goal: with http.ui = false nothing is served under /ui, and the API still works.
    let h = Harness::with_config(HttpConfig {
        ui: false,
        ..config()
    })
    .await;
    assert_eq!(h.get("/ui/login", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.get("/ui", None).await.status, StatusCode::NOT_FOUND);
    h.submit(&admin(), task("alice", "t", "d")).await;
    h.stop().await;
}

#[tokio::test]
async fn every_page_answers_with_a_hundred_thousand_tasks() {
    // Goal: with 100 000 tasks every page answers, each list shows one bounded page (the
    // default 50 tasks, found within the scan budget) and paging goes on. No timing is
    // asserted: the bound is the number of tasks a page examines.
    let h = Harness::with_config(HttpConfig {
        scan_budget: 20_000,
        ..config()
    })
    .await;
    const TOTAL: usize = 100_000;
    const BATCH: usize = 10_000;
    for b in 0..TOTAL / BATCH {
        let tasks: Vec<Value> = (0..BATCH)
            .map(|i| {
                let user = if i % 10 == 0 { "alice" } else { "bob" };
                json!({"userid": user, "tasktype": format!("type-{}", i % 7),
                       "data": format!("{b}-{i}"), "maxattempts": 1})
            })
            .collect();
        let req = Request::post("/majordodo")
            .header(header::AUTHORIZATION, admin())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_vec(&json!({"action": "submitTasks", "tasks": tasks})).unwrap(),
            ))
            .unwrap();
        let page = h.call(req).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    }
    let count = h.handle.query(|v| v.state.task_count()).await.unwrap();
    assert_eq!(count, TOTAL);
    let cookie = h.login("admin", ADMIN_PASSWORD).await;
    for path in [
        "/ui/overview",
        "/ui/api/overview",
        "/ui/workers",
        "/ui/tenants",
        "/ui/cluster",
        "/ui/tasks/99999",
    ] {
        h.get(path, Some(&cookie)).await.assert_ok();
    }
    for path in [
        "/ui/tasks",
        "/ui/tasks?status=waiting",
        "/ui/tasks?type=type-3",
        "/ui/tasks?status=waiting&skip=5000",
        "/ui/tasks?from=90000",
        "/ui/tasks?user=alice&status=waiting",
    ] {
        let page = h.get(path, Some(&cookie)).await;
        let body = page.assert_ok();
        assert_eq!(listed_ids(body).len(), 50, "{path}");
        assert!(body.contains("id=\"next-page\""), "{path} goes on");
    }
    // A filter that matches nothing stops at the scan budget and says so.
    let page = h.get("/ui/tasks?slot=none", Some(&cookie)).await;
    let body = page.assert_ok();
    assert!(listed_ids(body).is_empty());
    assert!(body.contains("20000 examined"), "{body}");
    assert!(body.contains("http.scan_budget"));
    let alice = h.login("alice", ALICE_PASSWORD).await;
    let page = h.get("/ui/tasks", Some(&alice)).await;
    assert_eq!(listed_ids(page.assert_ok()).len(), 50);
    h.stop().await;
}
