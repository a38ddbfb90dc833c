//! A replicated cluster of real processes on 127.0.0.1, for the tests that break it: ZooKeeper
//! and the bookies (majordodo-testkit's `BkCluster`), `majordodo broker` processes with
//! generated files, and other programs next to them (`majordodo worker --zk`, the Java
//! client). Every process is started with `spawn_tied_to_process`, so it dies with the test
//! process however that ends, and is killed when its handle drops; every wait is bounded.
//!
//! Each broker reaches ZooKeeper through a proxy of its own ([`ZkProxy`]): cutting it makes the
//! broker's ZooKeeper session expire while the broker runs on and keeps its connections to the
//! bookies, the workers and the clients (a broker cut off from ZooKeeper alone).
//!
//! ```text
//! <dir>/admin.token, worker.secret, ledger.password    shared by every broker
//! <dir>/<id>/broker.toml, broker.log, data/             broker <id> (b1, b2, ...)
//! ```
//!
//! Needs a tokio runtime (the proxies run on it) with more than one thread: blocking calls of
//! this module (starting a process, waiting for its exit) are short.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use majordodo_client::{Auth, Client, RetryPolicy, ZkDiscovery};
use majordodo_testkit::{BkCluster, BkClusterOptions, spawn_tied_to_process};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{majordodo, ok, run_in};

/// Base path of the cluster's znodes.
pub(crate) const ZK_PATH: &str = "/majordodo";

/// File holding the ledgers' password, in the cluster's directory.
pub(crate) const LEDGER_PASSWORD_FILE: &str = "ledger.password";

/// File holding the workers' shared secret, in the cluster's directory.
pub(crate) const WORKER_SECRET_FILE: &str = "worker.secret";

/// File holding the admin token (also the brokers' peer token), in the cluster's directory.
pub(crate) const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Longest a broker may take to print its addresses; JVMs starting next to it on a 2-core
/// machine slow everything down.
pub(crate) const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a process may take to exit after SIGKILL or, for a graceful stop, after SIGTERM
/// (a broker's own stop is bounded by 10 s per step).
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time limit of one HTTP request of the tests: short, so that asking a stopped broker fails
/// quickly instead of hanging.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// How often waits poll.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// What the cluster is made of, and the timings its brokers get.
#[derive(Clone, Debug)]
pub(crate) struct ClusterOptions {
    pub(crate) brokers: usize,
    pub(crate) bookies: usize,
    /// Ensemble, write quorum and ack quorum of the ledgers.
    pub(crate) quorums: (usize, usize, usize),
    /// The brokers' ZooKeeper session timeout.
    pub(crate) session_timeout: Duration,
    /// `snapshots.interval` of the brokers.
    pub(crate) snapshot_interval: Duration,
    /// `workers.keepalive_interval`, `workers.max_idle_time` and `workers.dead_after`.
    pub(crate) worker_timings: (Duration, Duration, Duration),
}

impl ClusterOptions {
    /// `brokers` brokers on 3 bookies, ledgers 2/2/2, a 3 s session timeout.
    pub(crate) fn new(brokers: usize) -> ClusterOptions {
        ClusterOptions {
            brokers,
            bookies: 3,
            quorums: (2, 2, 2),
            session_timeout: Duration::from_secs(3),
            snapshot_interval: Duration::from_secs(600),
            worker_timings: (
                Duration::from_secs(1),
                Duration::from_secs(4),
                Duration::from_secs(20),
            ),
        }
    }
}

/// The cluster: ZooKeeper, the bookies and the brokers. Dropping it kills every process.
pub(crate) struct TestCluster {
    /// The brokers, `b1` first; a killed one keeps its place (and directory) for a restart.
    pub(crate) brokers: Vec<BrokerProcess>,
    /// ZooKeeper and the bookies; `None` only while dropping.
    bk: Option<BkCluster>,
    /// The admin token of every broker.
    pub(crate) token: String,
    /// The cluster's directory (see the module documentation).
    pub(crate) dir: PathBuf,
    /// Removes `dir` on drop, unless the test fails or [`TestCluster::keep_dir`] was called.
    dir_guard: Option<tempfile::TempDir>,
    keep: bool,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.brokers.clear();
        if let Some(bk) = self.bk.take() {
            // Stopping the JVMs blocks for a second or two.
            tokio::task::block_in_place(|| drop(bk));
        }
        if (self.keep || std::thread::panicking())
            && let Some(guard) = self.dir_guard.take()
        {
            eprintln!(
                "the cluster's files and logs are kept in {}",
                guard.keep().display()
            );
        }
    }
}

impl TestCluster {
    /// Starts ZooKeeper and the bookies, then the brokers one after the other (`b1` first, so
    /// it is the first leader), and waits until every broker is registered.
    pub(crate) async fn start(options: &ClusterOptions) -> TestCluster {
        let tmp = tempfile::Builder::new()
            .prefix("majordodo-cluster-")
            .tempdir()
            .expect("create the cluster's directory");
        let dir = tmp.path().to_owned();
        let bk = BkCluster::start_with(BkClusterOptions::new(options.bookies))
            .await
            .expect("start ZooKeeper and the bookies (run scripts/test-deps first)");
        std::fs::write(dir.join(WORKER_SECRET_FILE), "a-shared-secret-for-chaos\n").unwrap();
        std::fs::write(dir.join(LEDGER_PASSWORD_FILE), "a-ledger-password\n").unwrap();
        let users = ok(&run_in(
            &dir,
            &["auth", "new-token", "--out", ADMIN_TOKEN_FILE],
        ));
        let token = std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_owned();
        let mut cluster = TestCluster {
            brokers: Vec::new(),
            bk: Some(bk),
            token,
            dir,
            dir_guard: Some(tmp),
            keep: false,
        };
        for i in 1..=options.brokers {
            let id = format!("b{i}");
            let proxy = ZkProxy::start(&cluster.zk_connect()).await;
            let file = broker_file(options, &proxy.connect_string(), &users);
            let broker = BrokerProcess::create(&cluster.dir, &id, &file, proxy);
            cluster.brokers.push(broker);
            cluster.brokers[i - 1].start().await;
            if i == 1 {
                cluster.wait_leader(BROKER_START_TIMEOUT).await;
            }
        }
        cluster.wait_registered(BROKER_START_TIMEOUT).await;
        cluster
    }

    /// Keeps the cluster's directory (its brokers' files and logs) when it drops.
    pub(crate) fn keep_dir(&mut self) {
        self.keep = true;
    }

    pub(crate) fn bk(&self) -> &BkCluster {
        self.bk
            .as_ref()
            .expect("the bookies run until the cluster drops")
    }

    pub(crate) fn bk_mut(&mut self) -> &mut BkCluster {
        self.bk
            .as_mut()
            .expect("the bookies run until the cluster drops")
    }

    /// The real ZooKeeper (the brokers reach it through their proxies).
    pub(crate) fn zk_connect(&self) -> String {
        self.bk().zk_connect_string()
    }

    /// Discovery of the cluster's leader through the real ZooKeeper.
    pub(crate) fn discovery(&self) -> ZkDiscovery {
        ZkDiscovery::new(self.zk_connect(), ZK_PATH).expect("a valid connect string and path")
    }

    /// A client of broker `i`'s own API (no retries, a short time limit).
    pub(crate) fn client_of(&self, i: usize) -> Client {
        Client::builder(&self.brokers[i].api_url)
            .auth(Auth::bearer(&self.token))
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .retry(RetryPolicy::none())
            .build()
            .expect("a valid url")
    }

    /// The index of the broker the leader znode names, if any.
    pub(crate) async fn leader(&self) -> Option<usize> {
        let info = self.discovery().leader().await.ok()?;
        let id = info.broker_id()?;
        self.brokers.iter().position(|b| b.id == id)
    }

    /// Waits until a broker leads and answers as leader through its own API; returns it.
    pub(crate) async fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let discovery = self.discovery();
        loop {
            self.check_alive();
            if let Ok(info) = discovery.leader().await
                && let Some(i) = self
                    .brokers
                    .iter()
                    .position(|b| Some(b.id.as_str()) == info.broker_id())
                && self.brokers[i].is_running()
                && let Ok(status) = self.client_of(i).status().await
                && status.status == "LEADER"
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no leader answering within {timeout:?}; the brokers' logs are in {}",
                self.dir.display()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every running broker is registered in the discovery directory.
    pub(crate) async fn wait_registered(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let zk = zookeeper_client::Client::connect(&self.zk_connect())
            .await
            .expect("connect to ZooKeeper");
        loop {
            self.check_alive();
            let mut ids = Vec::new();
            let path = format!("{ZK_PATH}/discoverypath");
            if let Ok(children) = zk.list_children(&path).await {
                for child in children {
                    if let Ok((data, _)) = zk.get_data(&format!("{path}/{child}")).await
                        && let Ok(info) = majordodo_proto::cluster::BrokerInfo::from_json(&data)
                        && let Some(id) = info.broker_id()
                    {
                        ids.push(id.to_owned());
                    }
                }
            }
            let missing: Vec<&str> = self
                .brokers
                .iter()
                .filter(|b| b.is_running() && !ids.contains(&b.id))
                .map(|b| b.id.as_str())
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "brokers {missing:?} not registered within {timeout:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Panics, with the end of its log, if a broker that should run has exited.
    pub(crate) fn check_alive(&mut self) {
        for b in &mut self.brokers {
            if let Some(status) = b.exited() {
                panic!(
                    "broker {} exited on its own ({status}); end of {}:\n{}",
                    b.id,
                    b.log().display(),
                    tail(&b.log(), 40)
                );
            }
        }
    }

    /// `majordodo <args>` with the cluster's ZooKeeper and token, run on a blocking thread.
    pub(crate) async fn run_tool(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = majordodo();
        cmd.current_dir(&self.dir)
            .env("MAJORDODO_ZK", self.zk_connect())
            .env("MAJORDODO_TOKEN", &self.token)
            .args(args);
        tokio::task::spawn_blocking(move || super::run(cmd))
            .await
            .expect("the command's thread")
    }
}

/// The file of every broker of the cluster; ids, directories and ports come from the command
/// line and the file's directory.
fn broker_file(options: &ClusterOptions, zk: &str, users: &str) -> String {
    let (ensemble, write, ack) = options.quorums;
    let (keepalive, idle, dead) = options.worker_timings;
    format!(
        r#"data_dir = "data"

[http]
listen = "127.0.0.1:0"

{users}

[workers]
listen = "127.0.0.1:0"
auth = "credentials-or-shared-secret"
shared_secret_file = "../{WORKER_SECRET_FILE}"
keepalive_interval = "{keepalive}ms"
max_idle_time = "{idle}ms"
dead_after = "{dead}ms"

[snapshots]
interval = "{snapshots}ms"

[cluster]
zk = "{zk}"
zk_path = "{ZK_PATH}"
session_timeout = "{session}ms"
ensemble = {ensemble}
write_quorum = {write}
ack_quorum = {ack}
ledger_password_file = "../{LEDGER_PASSWORD_FILE}"
peer_token_file = "../{ADMIN_TOKEN_FILE}"
"#,
        keepalive = keepalive.as_millis(),
        idle = idle.as_millis(),
        dead = dead.as_millis(),
        snapshots = options.snapshot_interval.as_millis(),
        session = options.session_timeout.as_millis(),
    )
}

/// One `majordodo broker` process, which can be killed, frozen and started again on the same
/// directory. Its stdout and stderr go to `<id>/broker.log`, across restarts.
pub(crate) struct BrokerProcess {
    pub(crate) id: String,
    /// `<cluster dir>/<id>`.
    pub(crate) dir: PathBuf,
    /// The process, while one was started and not reaped after a kill.
    child: Option<Child>,
    /// Its HTTP API, as printed at its last start.
    pub(crate) api_url: String,
    /// Its worker port, as printed at its last start.
    pub(crate) worker_addr: String,
    /// Whether it is frozen (SIGSTOP): the next step must be SIGCONT or SIGKILL.
    paused: bool,
    /// Its own way to ZooKeeper.
    pub(crate) proxy: ZkProxy,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl BrokerProcess {
    fn create(cluster_dir: &Path, id: &str, file: &str, proxy: ZkProxy) -> BrokerProcess {
        let dir = cluster_dir.join(id);
        std::fs::create_dir(&dir).expect("create the broker's directory");
        std::fs::write(dir.join("broker.toml"), file).expect("write the broker's file");
        BrokerProcess {
            id: id.to_owned(),
            dir,
            child: None,
            api_url: String::new(),
            worker_addr: String::new(),
            paused: false,
            proxy,
        }
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a process was started and not killed (it may be frozen).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// How it ended, if it exited though nobody killed it.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts the broker on its directory and waits until it prints its addresses.
    pub(crate) async fn start(&mut self) {
        assert!(self.child.is_none(), "broker {} runs already", self.id);
        let log_path = self.log();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the broker's log");
        writeln!(log, "=== test: starting broker {}", self.id).unwrap();
        let mut cmd = majordodo();
        cmd.current_dir(&self.dir)
            .args(["broker", "--config", "broker.toml", "--broker-id", &self.id])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("clone the log's handle"));
        let mut child = spawn_tied_to_process(cmd).expect("start majordodo broker");
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);
        let (tx, lines) = mpsc::channel();
        // Every line goes to the log; the first ones to this start, for the addresses.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = writeln!(log, "{line}");
                let _ = tx.send(line);
            }
        });
        self.api_url.clear();
        self.worker_addr.clear();
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        while self.api_url.is_empty() || self.worker_addr.is_empty() {
            match lines.try_recv() {
                Ok(line) => {
                    let value =
                        |label: &str| line.split_once(label).map(|(_, v)| v.trim().to_owned());
                    if let Some(url) = value("HTTP API:") {
                        self.api_url = url;
                    } else if let Some(addr) = value("worker port:") {
                        self.worker_addr = addr;
                    }
                }
                Err(_) => {
                    if let Some(status) = self.exited() {
                        panic!(
                            "broker {} exited while starting ({status}):\n{}",
                            self.id,
                            tail(&log_path, 40)
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "broker {} printed no addresses within {BROKER_START_TIMEOUT:?}; see {}",
                        self.id,
                        log_path.display()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// SIGKILL (after SIGCONT if frozen, so the kernel reaps it at once), waiting for the exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if self.paused {
                super::signal(child.id(), "CONT");
                self.paused = false;
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (bounded); returns how it ended.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        self.resume();
        let mut child = self.child.take().expect("the broker runs");
        majordodo_testkit::terminate(&mut child).expect("signal the broker");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll the broker") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker {} did not stop within {EXIT_TIMEOUT:?} of SIGTERM",
                    self.id
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Freezes the process (SIGSTOP).
    pub(crate) fn pause(&mut self) {
        if let Some(pid) = self.pid()
            && !self.paused
        {
            super::signal(pid, "STOP");
            self.paused = true;
        }
    }

    /// Unfreezes the process (SIGCONT).
    pub(crate) fn resume(&mut self) {
        if let Some(pid) = self.pid()
            && self.paused
        {
            super::signal(pid, "CONT");
            self.paused = false;
        }
    }
}

/// A TCP proxy in front of ZooKeeper for one broker. While it is cut, it closes every
/// connection through it and every new one at once, so the broker's ZooKeeper session expires
/// on the server after its timeout (the server hears nothing from it).
pub(crate) struct ZkProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for ZkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ZkProxy {
    /// A proxy on a free port of 127.0.0.1 to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: &str) -> ZkProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (cut, _) = watch::channel(false);
        let upstream = upstream.to_owned();
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut = cuts.subscribe();
                if *cut.borrow_and_update() {
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        ZkProxy { addr, cut, task }
    }

    pub(crate) fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// Closes every connection and refuses new ones until [`ZkProxy::restore`].
    pub(crate) fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub(crate) fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// A program other than a broker (a worker, the Java client), its stdout and stderr appended
/// to a log. Killed when dropped.
pub(crate) struct LoggedProcess {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl LoggedProcess {
    /// Starts `cmd` (stdin closed; stdout and stderr appended to `log`).
    pub(crate) fn start(name: &str, mut cmd: Command, log: &Path) -> LoggedProcess {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the log");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log's handle"))
            .stderr(file);
        let child = spawn_tied_to_process(cmd).unwrap_or_else(|e| panic!("start {name}: {e}"));
        LoggedProcess {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    /// Panics, with the end of its log, if it exited.
    pub(crate) fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited on its own ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }

    /// SIGTERM, then waits for the exit (bounded); returns how it ended.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        majordodo_testkit::terminate(&mut self.child).expect("signal the process");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the process") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {EXIT_TIMEOUT:?} of SIGTERM",
                self.name
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The last `lines` lines of a file (best effort).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
