//! The web dashboard in a real headless Chromium, driven over WebDriver by `chromedriver`
//! (Debian packages `chromium` and `chromium-driver`, installed by `scripts/test-deps`).
//!
//! A real broker serves its HTTP API on 127.0.0.1 with a real worker connected over TCP; the
//! test logs in through the form, submits tasks through the JSON API, finds them on the tasks
//! page, filters, opens a task, cancels it and sees its status change, visits every page, logs
//! out, and logs in as a plain user who does not see the other user's task.
//!
//! With `MAJORDODO_UI_SCREENSHOTS=<dir>` (relative to the repository root, e.g. `docs`) it
//! saves a screenshot of each page there as `ui-<page>.png`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use majordodo_broker::http::auth::hash_password_with;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, SystemClock};
use majordodo_core::DefaultGroupMapper;
use majordodo_log::{CommitLog, MemoryLog, MemoryStore};
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_worker::{Executors, TaskFailure, WorkerConfig, executor_fn};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bound on every wait for the browser or the broker.
const WAIT: Duration = Duration::from_secs(30);
/// Bound on chromedriver's start (a first start on a new machine is the slowest).
const DRIVER_START: Duration = Duration::from_secs(90);
const SECRET: &str = "ui-browser-secret";
const ADMIN_PASSWORD: &str = "admin password";
const ALICE_PASSWORD: &str = "alice password";
const BOB_PASSWORD: &str = "bob password";

/// Where Debian's packages put the browser and its driver, unless the environment says
/// otherwise.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.exists(),
        "{} not found (set {var} to another path): run scripts/test-deps, which installs the \
         Debian packages chromium and chromium-driver",
        path.display()
    );
    path
}

/// A minimal WebDriver client: the W3C commands this test needs.
struct WebDriver {
    http: reqwest::Client,
    base: String,
}

/// Key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl WebDriver {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method.clone(), path, body).await {
            Ok(v) => v,
            Err((status, v)) => panic!("{method} {path}: {status} {v}"),
        }
    }

    /// As [`WebDriver::call`], an error answer (status and body) returned instead of failing.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (reqwest::StatusCode, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = res.status();
        let v: Value = res.json().await.expect("WebDriver answers JSON");
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err((status, v))
        }
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn find_now(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found.as_array().and_then(|a| a.first()).map(|e| {
            e[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("element {e}"))
                .to_owned()
        })
    }

    /// The first element matching `css`, waiting for it to appear.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_now(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css} appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element matching `css`, waiting for it; an element the page
    /// replaced between finding and reading it (a navigation under way) is found again.
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let e = self.find(css).await;
            match self
                .try_call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                .await
            {
                Ok(text) => return text.as_str().unwrap().to_owned(),
                Err((_, v)) if v["value"]["error"] == "stale element reference" => {
                    assert!(Instant::now() < deadline, "{css} kept going stale");
                }
                Err((status, v)) => panic!("text of {css}: {status} {v}"),
            }
        }
    }

    /// Waits until the text of `css` contains `want`; the text.
    async fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = match self.find_now(css).await {
                Some(_) => self.text(css).await,
                None => String::new(),
            };
            if text.contains(want) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {want:?}; it shows {text:?} at {}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the task list says it shows exactly `n` tasks ("41 tasks" also contains
    /// "1 tasks", so a plain [`WebDriver::wait_text`] could pass on the page before).
    async fn wait_listed(&self, n: usize) {
        let want = format!("{n} tasks on this page");
        let deadline = Instant::now() + WAIT;
        loop {
            let text = match self.find_now("#page-info").await {
                Some(_) => self.text("#page-info").await,
                None => String::new(),
            };
            if text.starts_with(&want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the list never showed {want:?}; it shows {text:?} at {}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css`, which leads to another address, and waits until the browser is there.
    async fn click_away(&self, css: &str) {
        let before = self.current_url().await;
        self.click(css).await;
        let deadline = Instant::now() + WAIT;
        while self.current_url().await == before {
            assert!(
                Instant::now() < deadline,
                "clicking {css} never left {before}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The listed task ids of the tasks page shown.
    async fn listed_ids(&self) -> Vec<u64> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({
                    "script": "return Array.from(document.querySelectorAll('a.task-link')).map(a => a.textContent);",
                    "args": [],
                })),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Saves a screenshot of the page as `ui-<name>.png` when screenshots are asked for.
    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("MAJORDODO_UI_SCREENSHOTS") else {
            return;
        };
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = STANDARD.decode(png.as_str().unwrap()).unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("ui-{name}.png")), bytes).unwrap();
    }
}

/// `chromedriver` on loopback only (127.0.0.1 and ::1), on a port it picks itself, ended when
/// dropped.
struct Driver {
    child: tokio::process::Child,
    port: u16,
}

/// The line by which chromedriver says it listens, with the port it took.
const DRIVER_READY: &str = "ChromeDriver was started successfully on port ";

impl Driver {
    async fn start() -> Driver {
        use tokio::io::{AsyncBufReadExt, BufReader};

        let driver = tool("MAJORDODO_CHROMEDRIVER", "/usr/bin/chromedriver");
        // No --allowed-ips: with it chromedriver listens on every interface; without it, on
        // loopback only. --port=0 lets it take a free port, so no other process can take the
        // port between our choosing and its binding.
        let mut child = tokio::process::Command::new(&driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", driver.display()));
        let mut stderr = child.stderr.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut said = Vec::new();
        let port = tokio::time::timeout(DRIVER_START, async {
            while let Some(line) = stdout.next_line().await.expect("chromedriver's output") {
                if let Some(port) = line.strip_prefix(DRIVER_READY) {
                    return Some(port.trim_end_matches('.').parse::<u16>().unwrap());
                }
                said.push(line);
            }
            None
        })
        .await;
        let port = match port {
            Ok(Some(port)) => port,
            failed => {
                let why = match failed {
                    Err(_) => format!("it did not say it was ready within {DRIVER_START:?}"),
                    _ => format!("it ended: {:?}", child.wait().await),
                };
                let _ = child.start_kill();
                let mut errors = String::new();
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut errors),
                )
                .await;
                panic!(
                    "chromedriver ({}) did not get ready: {why}\nits output:\n{}\nits errors:\n{errors}",
                    driver.display(),
                    said.join("\n")
                );
            }
        };
        // what it writes from now on is read and dropped, so that it never blocks on a full pipe
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        });
        let http = loopback_client(Duration::from_secs(5));
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await;
            if let Ok(res) = ready
                && let Ok(v) = res.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver listens on port {port} but its /status does not say ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, port }
    }

    /// A headless Chromium session.
    async fn session(&self) -> WebDriver {
        let chromium = tool("MAJORDODO_CHROMIUM", "/usr/bin/chromium");
        let http = loopback_client(Duration::from_secs(60));
        let res = http
            .post(format!("http://127.0.0.1:{}/session", self.port))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900",
                             "--no-first-run", "--no-default-browser-check"],
                },
            }}}))
            .send()
            .await
            .expect("new session");
        let v: Value = res.json().await.unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        WebDriver {
            http,
            base: format!("http://127.0.0.1:{}/session/{id}", self.port),
        }
    }

    async fn stop(mut self, session: WebDriver) {
        session.call(reqwest::Method::DELETE, "", None).await;
        let _ = self.child.kill().await;
    }
}

/// An HTTP client for servers on this machine: no proxy from the environment stands between.
fn loopback_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap()
}

fn users() -> Vec<UserConfig> {
    let mut rng = StdRng::seed_from_u64(11);
    [
        ("admin", UserRole::Admin, ADMIN_PASSWORD),
        ("alice", UserRole::User, ALICE_PASSWORD),
        ("bob", UserRole::User, BOB_PASSWORD),
    ]
    .into_iter()
    .map(|(name, role, password)| UserConfig {
        name: name.into(),
        role,
        password_hash: Some(hash_password_with(password, 1_000, &mut rng)),
        token_sha256: None,
    })
    .collect()
}

/// Submits tasks through the JSON API as the admin; their ids.
async fn submit(http: &reqwest::Client, api: &str, tasks: Vec<Value>) -> Vec<u64> {
    let res = http
        .post(api)
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&json!({"action": "submitTasks", "tasks": tasks}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let v: Value = res.json().await.unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["taskId"].as_u64().expect("created"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    // Goal: in headless Chromium, log-in, the tasks page (a task submitted through the API
    // appears; filters narrow the list), the task's page and its Cancel button (the status
    // changes to error, result cancelled), every other page, log-out, and a plain user who
    // does not see another user's task — all asserted on the pages' content.
    let driver = Driver::start().await;

    // A broker with its HTTP API and worker port on loopback, and one worker.
    let stop = CancellationToken::new();
    let broker = Broker::start(
        BrokerConfig {
            broker_id: "broker-ui".into(),
            ..BrokerConfig::default()
        },
        Arc::new(MemoryLog::open(&MemoryStore::new())) as Arc<dyn CommitLog>,
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("broker starts");
    let worker_port = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = worker_port.local_addr().unwrap();
    let events = broker.worker_events();
    let listener_stop = stop.clone();
    let listener = tokio::spawn(async move {
        let config = ListenerConfig::new("broker-ui", SharedSecret::new(SECRET));
        worker_listener::run(worker_port, config, events, listener_stop.cancelled_owned())
            .await
            .expect("listener config is valid");
    });
    let settings = HttpConfig {
        users: users(),
        ..HttpConfig::default()
    }
    .validate()
    .unwrap();
    let http_port = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr: SocketAddr = http_port.local_addr().unwrap();
    let server = tokio::spawn(http::serve(
        http_port,
        broker.handle(),
        settings,
        stop.clone().cancelled_owned(),
    ));
    let mut wc = WorkerConfig::new(worker_addr.to_string(), SharedSecret::new(SECRET));
    wc.worker_id = "worker-1".into();
    wc.capacity = Capacity {
        max_threads: 4,
        ..Capacity::default()
    };
    wc.capacity.groups = vec![0];
    let executors = Executors::new()
        .with(
            "echo",
            executor_fn(|t| async move { Ok::<_, TaskFailure>(format!("echo {}", t.data)) }),
        )
        .with(
            "slow",
            executor_fn(|_| async move {
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok::<_, TaskFailure>("late".to_owned())
            }),
        );
    let worker_stop = CancellationToken::new();
    let worker = {
        let s = worker_stop.clone();
        tokio::spawn(async move {
            let _ = majordodo_worker::run(wc, executors, s.cancelled_owned()).await;
        })
    };

    let base = format!("http://{http_addr}");
    let api = format!("{base}/majordodo");
    let http = loopback_client(WAIT);
    // Some finished work for the overview and the tenants.
    let echo: Vec<Value> = (0..40)
        .map(|i| {
            json!({"userid": if i % 2 == 0 { "alice" } else { "bob" }, "tasktype": "echo",
                   "data": format!("job {i}"), "maxattempts": 1})
        })
        .collect();
    submit(&http, &api, echo).await;
    for quota in [
        json!({"action": "setQuota", "userid": "alice", "quota": {"tasks": 5}}),
        json!({"action": "setQuota", "userid": "bob", "quota": {"tasks": 2, "cpu": 4000}}),
    ] {
        let res = http
            .post(&api)
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&quota)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }

    let web = driver.session().await;
    // Not logged in: the log-in page.
    web.goto(&format!("{base}/ui/tasks")).await;
    web.find("form#login").await;
    assert!(web.current_url().await.ends_with("/ui/login"));
    web.type_into("#name", "admin").await;
    web.type_into("#password", "wrong").await;
    web.click("#login-button").await;
    web.wait_text("#login-error", "Wrong user name or password.")
        .await;
    web.type_into("#name", "admin").await;
    web.type_into("#password", ADMIN_PASSWORD).await;
    web.screenshot("login").await;
    web.click("#login-button").await;
    web.wait_text("h1", "Overview").await;
    assert_eq!(web.text("#who").await, "admin (admin)");

    // The overview counts the finished tasks and draws the chart from its samples, taken
    // every 2 s while more work arrives.
    web.wait_text("#count-finished", "40").await;
    for wave in 1..=4u64 {
        let tasks: Vec<Value> = (0..10 * wave)
            .map(|i| {
                json!({"userid": "bob", "tasktype": "echo", "data": format!("wave {wave} {i}"),
                            "maxattempts": 1})
            })
            .collect();
        submit(&http, &api, tasks).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    web.wait_text("#count-finished", "140").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let samples = web
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({"script": "return document.getElementById('chart').getAttribute('data-samples');", "args": []})),
            )
            .await;
        if samples
            .as_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 4)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the chart got no samples");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        web.find_now("#chart polyline.submitted").await.is_some(),
        "the chart draws the submitted series"
    );
    web.screenshot("overview").await;

    // A task submitted through the API appears on the tasks page.
    let slow = submit(
        &http,
        &api,
        vec![
            json!({"userid": "alice", "tasktype": "slow", "data": "<b>long job</b>",
                    "maxattempts": 1}),
        ],
    )
    .await[0];
    web.click("nav a[href='/ui/tasks']").await;
    web.wait_text("h1", "Tasks").await;
    let first = web.listed_ids().await;
    assert_eq!(first.len(), 50, "one page of the default 50");
    assert_eq!(first[0], 1);
    web.screenshot("tasks").await;
    // Paging on the server: the "Next page" links lead to the new task.
    let mut pages = 1;
    while !web.listed_ids().await.contains(&slow) {
        assert!(pages < 5, "task {slow} not found within {pages} pages");
        web.click_away("#next-page").await;
        pages += 1;
        web.wait_text("#page-info", "tasks on this page").await;
    }
    assert_eq!(pages, 3, "141 tasks, 50 a page");

    // Filters: by type, then by status; the list shows just that task.
    web.type_into("#filter-type", "slow").await;
    web.click_away("#filter-button").await;
    web.wait_listed(1).await;
    assert_eq!(web.listed_ids().await, vec![slow]);
    web.type_into("#filter-type", "").await;
    web.type_into("#filter-user", "bob").await;
    web.click_away("#filter-button").await;
    web.wait_listed(50).await;
    assert!(!web.listed_ids().await.contains(&slow));
    web.goto(&format!("{base}/ui/tasks?status=running")).await;
    web.wait_listed(1).await;
    assert_eq!(web.listed_ids().await, vec![slow]);

    // Its page, then Cancel: the status changes.
    web.click(&format!("a.task-link[href='/ui/tasks/{slow}']"))
        .await;
    web.wait_text("h1", &format!("Task {slow}")).await;
    web.wait_text("#task-status", "running").await;
    assert_eq!(web.text("#task-worker").await, "worker-1");
    assert_eq!(web.text("#task-data").await, "<b>long job</b>");
    web.screenshot("task").await;
    web.click("#cancel").await;
    web.wait_text("#task-status", "error").await;
    assert_eq!(web.text("#task-result").await, "cancelled");
    assert!(
        web.find_now("#cancel").await.is_none(),
        "no Cancel any more"
    );

    // The other pages.
    web.click("nav a[href='/ui/workers']").await;
    web.wait_text("#workers", "worker-1").await;
    assert!(web.text("#workers").await.contains("CONNECTED"));
    web.screenshot("workers").await;
    web.click("nav a[href='/ui/tenants']").await;
    web.wait_text("#tenants", "alice").await;
    assert!(web.text("#tenants").await.contains("cpu 4000, tasks 2"));
    web.screenshot("tenants").await;
    web.click("nav a[href='/ui/cluster']").await;
    web.wait_text("#cluster-mode", "standalone, file log").await;
    assert_eq!(web.text("#cluster-role").await, "LEADER");
    web.screenshot("cluster").await;

    // Log out; bob logs in and sees his tasks only, and alice's task's page is unknown to him.
    web.click("header .logout button").await;
    web.find("form#login").await;
    web.goto(&format!("{base}/ui/tasks")).await;
    web.find("form#login").await;
    web.type_into("#name", "bob").await;
    web.type_into("#password", BOB_PASSWORD).await;
    web.click("#login-button").await;
    web.wait_text("#who", "bob (user)").await;
    web.goto(&format!("{base}/ui/tasks?max=500")).await;
    web.wait_listed(120).await;
    assert!(!web.listed_ids().await.contains(&slow));
    assert!(web.find_now("#filter-user").await.is_none());
    web.goto(&format!("{base}/ui/tasks/{slow}")).await;
    web.wait_text("#error", &format!("task {slow} does not exist"))
        .await;
    assert!(!web.source().await.contains("long job"));

    driver.stop(web).await;
    worker_stop.cancel();
    let _ = worker.await;
    stop.cancel();
    server.await.unwrap().unwrap();
    listener.await.unwrap();
    broker.wait().await.unwrap();
}
