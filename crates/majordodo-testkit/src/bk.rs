//! A real BookKeeper cluster: its own [`ZkServer`] and N bookies, each in its own JVM
//! (`org.apache.bookkeeper.server.Main`), all on 127.0.0.1, with per-bookie fault injection
//! (kill, pause, resume, restart) and a runner for Java tools against the cluster.
//!
//! Directory layout (one fresh temporary directory per cluster):
//! ```text
//! log4j2.properties     logging of every BookKeeper JVM (level from -Dtestkit.log.level)
//! client.conf           metadataServiceUri, for BookieShell
//! bookie-<i>/bookie.conf, bookie.log, journal/, ledgers/
//! tools/<n>-<Class>.stdout, .stderr    output of each run_java_tool call
//! ```

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use zookeeper_client as zkc;

use crate::deps::BkDeps;
use crate::error::TestkitError;
use crate::process::{self, ChildProcess};
use crate::tools::{BOOKIE_SHELL, METADATA_URI_ENV, TOOLS_PACKAGE};
use crate::zk::{self, ZkServer};

/// How long one bookie may take from spawn to registered and accepting connections. A bookie
/// starts in about 1.5–3 s alone; several JVMs starting at once on 2 busy cores take several
/// times longer.
pub const BOOKIE_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Default ZooKeeper session timeout of the bookies (`zkTimeout`). BookKeeper's own default is
/// 10 s; 4 s lets tests see a killed bookie leave `/ledgers/available` quickly, while a live
/// bookie on a loaded 2-core machine still heartbeats well within it.
pub const DEFAULT_BOOKIE_ZK_TIMEOUT: Duration = Duration::from_secs(4);

/// Session timeout of the harness's own ZooKeeper client (set-up and registration checks).
const HARNESS_ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the harness checks a bookie's registration while waiting.
const REGISTRATION_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Lines of a log shown when a test panics while the cluster is alive.
const PANIC_LOG_LINES: usize = 20;

/// The ledgers root every cluster uses.
const LEDGERS_ROOT: &str = "/ledgers";

/// JVM flags every BookKeeper JVM needs on Java 17 (from BookKeeper's `bin/common.sh`).
const BK_JVM_COMMON_FLAGS: &[&str] = &[
    "-Djava.net.preferIPv4Stack=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "--add-opens",
    "java.base/java.nio=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util.zip=ALL-UNNAMED",
];

/// Bookie JVM sizing: small heap and direct memory (tests write little), serial GC and C1 only
/// so that several bookies start quickly on 2 cores.
const BOOKIE_JVM_FLAGS: &[&str] = &[
    "-Xms64m",
    "-Xmx256m",
    "-XX:MaxDirectMemorySize=256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
];

/// Tool JVM sizing: full JIT (BkBench measures the client), JVM warnings on stderr so that
/// stdout carries only the tool's JSON lines.
const TOOL_JVM_FLAGS: &[&str] = &[
    "-Xms32m",
    "-Xmx512m",
    "-XX:MaxDirectMemorySize=256m",
    "-XX:+UseSerialGC",
    "-Xlog:disable",
    "-Xlog:all=warning:stderr",
];

/// Logging of the BookKeeper JVMs: everything to stderr (the bookie's log file, or the tool's
/// stderr), level chosen per JVM with `-Dtestkit.log.level`.
const LOG4J2_PROPERTIES: &str = "\
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %-5p [%t] %c{1} - %m%n
rootLogger.level = ${sys:testkit.log.level:-INFO}
rootLogger.appenderRef.console.ref = console
";

/// How a [`BkCluster`] is started.
#[derive(Debug, Clone)]
pub struct BkClusterOptions {
    /// Number of bookies (at least 1).
    pub bookies: usize,
    /// `journalSyncData`: fsync the journal before acknowledging an add. Default `true`, as
    /// users run bookies; `false` makes adds faster where durability is not under test.
    pub journal_sync: bool,
    /// The bookies' ZooKeeper session timeout (`zkTimeout`): how long a killed or paused bookie
    /// stays registered. At least 1 s (the ZooKeeper server's minimum).
    pub bookie_zk_timeout: Duration,
    /// Extra `key=value` settings for every bookie; they replace the harness's value of the same
    /// key.
    pub bookie_conf: Vec<(String, String)>,
    /// Extra JVM arguments for every bookie, after the harness's own (so they win).
    pub bookie_jvm_args: Vec<String>,
    /// How long each bookie may take to start (see [`BOOKIE_START_TIMEOUT`]).
    pub start_timeout: Duration,
}

impl Default for BkClusterOptions {
    fn default() -> Self {
        BkClusterOptions {
            bookies: 3,
            journal_sync: true,
            bookie_zk_timeout: DEFAULT_BOOKIE_ZK_TIMEOUT,
            bookie_conf: Vec::new(),
            bookie_jvm_args: Vec::new(),
            start_timeout: BOOKIE_START_TIMEOUT,
        }
    }
}

impl BkClusterOptions {
    /// Defaults with `bookies` bookies.
    pub fn new(bookies: usize) -> Self {
        BkClusterOptions {
            bookies,
            ..Default::default()
        }
    }

    /// Sets `journalSyncData`.
    pub fn journal_sync(mut self, on: bool) -> Self {
        self.journal_sync = on;
        self
    }

    /// Sets the bookies' ZooKeeper session timeout.
    pub fn bookie_zk_timeout(mut self, timeout: Duration) -> Self {
        self.bookie_zk_timeout = timeout;
        self
    }

    /// Adds (or overrides) one bookie setting.
    pub fn bookie_conf(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.bookie_conf.push((key.into(), value.into()));
        self
    }

    /// Adds one JVM argument for the bookies.
    pub fn bookie_jvm_arg(mut self, arg: impl Into<String>) -> Self {
        self.bookie_jvm_args.push(arg.into());
        self
    }

    fn validate(&self) -> Result<(), TestkitError> {
        if self.bookies == 0 {
            return Err(TestkitError::InvalidOptions(
                "a cluster needs at least one bookie".to_owned(),
            ));
        }
        if self.bookie_zk_timeout < Duration::from_secs(1) {
            return Err(TestkitError::InvalidOptions(
                "bookie_zk_timeout must be at least 1 s".to_owned(),
            ));
        }
        if let Some((key, _)) = self
            .bookie_conf
            .iter()
            .find(|(k, v)| k.contains(['=', '\n']) || v.contains('\n') || k.is_empty())
        {
            return Err(TestkitError::InvalidOptions(format!(
                "bookie setting {key:?} is not a single key=value line"
            )));
        }
        Ok(())
    }
}

/// One bookie of a cluster.
#[derive(Debug)]
struct Bookie {
    index: usize,
    /// Port on 127.0.0.1; the bookie id is `127.0.0.1:<port>`. Kept across restarts.
    port: u16,
    /// `bookie.conf`, `bookie.log`, `journal/`, `ledgers/`.
    dir: PathBuf,
    /// The JVM, `None` once killed.
    process: Option<ChildProcess>,
    /// ZooKeeper session that owned the registration when the bookie was last seen ready. A
    /// restarted bookie counts as registered only under another session: the old ephemeral
    /// node lingers until its session expires.
    registered_session: Option<i64>,
}

impl Bookie {
    fn id(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn name(&self) -> String {
        format!("bookie {} ({})", self.index, self.id())
    }

    fn log(&self) -> PathBuf {
        self.dir.join("bookie.log")
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("bookie.conf")
    }
}

/// A running BookKeeper cluster. Dropping it kills every process (SIGTERM, then SIGKILL after
/// a short grace) and removes its directories.
#[derive(Debug)]
pub struct BkCluster {
    bookies: Vec<Bookie>,
    zk: ZkServer,
    /// Cluster directory; dropped after the processes.
    dir: crate::TempDir,
    deps: BkDeps,
    options: BkClusterOptions,
    /// Numbers the output files of tool runs.
    tool_runs: AtomicUsize,
    /// How long `start_with` took.
    started_in: Duration,
    /// Slot of the process-wide cluster limit, released on drop (`None` if the wait for one
    /// timed out).
    _slot: Option<OwnedSemaphorePermit>,
}

impl BkCluster {
    /// Starts ZooKeeper and `bookies` bookies with default options; returns once every bookie
    /// is registered in ZooKeeper and accepts TCP connections.
    ///
    /// # Errors
    /// As [`BkCluster::start_with`].
    pub async fn start(bookies: usize) -> Result<BkCluster, TestkitError> {
        BkCluster::start_with(BkClusterOptions::new(bookies)).await
    }

    /// Starts a cluster as `options` say; returns once every bookie is registered in ZooKeeper
    /// and accepts TCP connections. Waits first for a slot if the process-wide limit of live
    /// clusters ([`crate::MAX_CLUSTERS_ENV`]) is reached.
    ///
    /// # Errors
    /// [`TestkitError::MissingDependency`] when `scripts/test-deps` has not been run,
    /// [`TestkitError::StartFailed`] (with the log's last lines) when ZooKeeper or a bookie
    /// does not come up, [`TestkitError::InvalidOptions`], [`TestkitError::Io`],
    /// [`TestkitError::ZooKeeper`] when the metadata cannot be initialised.
    pub async fn start_with(options: BkClusterOptions) -> Result<BkCluster, TestkitError> {
        options.validate()?;
        let deps = BkDeps::locate()?;
        let slot = crate::acquire_cluster_slot().await;
        let began = Instant::now();
        let zk = ZkServer::start().await?;
        let dir = crate::TempDir::new("majordodo-bk-")?;
        write_file(&dir.path().join("log4j2.properties"), LOG4J2_PROPERTIES)?;
        let mut cluster = BkCluster {
            bookies: Vec::with_capacity(options.bookies),
            zk,
            dir,
            deps,
            options,
            tool_runs: AtomicUsize::new(0),
            started_in: Duration::ZERO,
            _slot: slot,
        };
        write_file(
            &cluster.client_conf_path(),
            &format!(
                "# written by majordodo-testkit\nmetadataServiceUri={}\n",
                cluster.metadata_service_uri()
            ),
        )?;
        let client = cluster.zk_client().await?;
        init_metadata(&client).await?;

        for index in 0..cluster.options.bookies {
            let port = process::free_port().map_err(|e| TestkitError::io("find a free port", e))?;
            let dir = cluster.dir.path().join(format!("bookie-{index}"));
            cluster.bookies.push(Bookie {
                index,
                port,
                dir,
                process: None,
                registered_session: None,
            });
            cluster.prepare_bookie_dirs(index)?;
            cluster.spawn_bookie(index)?;
        }
        // the JVMs start in parallel; waiting for them one after the other costs nothing extra
        for index in 0..cluster.bookies.len() {
            cluster.await_first_start(index, &client).await?;
        }
        cluster.started_in = began.elapsed();
        Ok(cluster)
    }

    /// The cluster's ZooKeeper.
    pub fn zk(&self) -> &ZkServer {
        &self.zk
    }

    /// The cluster's ZooKeeper, to stop and restart it. Bookies lose their sessions while it is
    /// down for longer than their session timeout, and re-register when it is back.
    pub fn zk_mut(&mut self) -> &mut ZkServer {
        &mut self.zk
    }

    /// `"127.0.0.1:port"` of the cluster's ZooKeeper.
    pub fn zk_connect_string(&self) -> String {
        self.zk.connect_string()
    }

    /// The ledgers root path in ZooKeeper, `"/ledgers"`.
    pub fn ledgers_root(&self) -> String {
        LEDGERS_ROOT.to_owned()
    }

    /// `"zk+hierarchical://127.0.0.1:port/ledgers"`.
    pub fn metadata_service_uri(&self) -> String {
        format!(
            "zk+hierarchical://{}{}",
            self.zk.connect_string(),
            LEDGERS_ROOT
        )
    }

    /// Number of bookies (running or not).
    pub fn bookie_count(&self) -> usize {
        self.bookies.len()
    }

    /// The address bookie `i` listens on, `127.0.0.1:<port>`.
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub fn bookie_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.bookies[i].port))
    }

    /// Bookie `i`'s id as registered in ZooKeeper, `"127.0.0.1:<port>"`.
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub fn bookie_id(&self, i: usize) -> String {
        self.bookies[i].id()
    }

    /// Bookie `i`'s pid while its process runs (also while paused).
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub fn bookie_pid(&self, i: usize) -> Option<u32> {
        self.bookies[i].process.as_ref().map(ChildProcess::pid)
    }

    /// The file receiving bookie `i`'s stdout and stderr (appended to across restarts).
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub fn bookie_log_path(&self, i: usize) -> PathBuf {
        self.bookies[i].log()
    }

    /// Bookie `i`'s configuration file.
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub fn bookie_conf_path(&self, i: usize) -> PathBuf {
        self.bookies[i].conf()
    }

    /// The cluster's directory (see the module docs for its layout).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client configuration file naming the cluster (`metadataServiceUri=...`), for
    /// `BookieShell -conf`.
    pub fn client_conf_path(&self) -> PathBuf {
        self.dir.path().join("client.conf")
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &BkClusterOptions {
        &self.options
    }

    /// How long [`BkCluster::start_with`] took, from after the slot wait to all bookies ready.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Kills bookie `i` with SIGKILL and waits until the process has exited. Its registration
    /// stays in ZooKeeper until its session times out ([`BkClusterOptions::bookie_zk_timeout`]).
    /// No-op if it is not running.
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub async fn kill_bookie(&mut self, i: usize) {
        if let Some(mut process) = self.bookies[i].process.take() {
            process.kill().await;
        }
    }

    /// Freezes bookie `i` with SIGSTOP: it keeps its TCP port (the kernel still accepts
    /// connections) but answers nothing and stops heartbeating to ZooKeeper, so its registration
    /// disappears after the session timeout. No-op if it is not running.
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub fn pause_bookie(&mut self, i: usize) {
        if let Some(process) = self.bookies[i].process.as_mut() {
            process.signal(libc::SIGSTOP);
        }
    }

    /// Unfreezes bookie `i` with SIGCONT. If its session expired meanwhile, the bookie registers
    /// again under a new session. No-op if it is not running.
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub fn resume_bookie(&mut self, i: usize) {
        if let Some(process) = self.bookies[i].process.as_mut() {
            process.signal(libc::SIGCONT);
        }
    }

    /// Restarts bookie `i` on the same port with the same directories (killing it first if it
    /// runs), and waits until it is registered under a new ZooKeeper session and accepts TCP
    /// connections. A bookie waits for its previous registration to expire before it registers
    /// again, so this takes up to the session timeout longer than a first start.
    ///
    /// # Errors
    /// [`TestkitError::StartFailed`] when it does not come back (the log tail says why).
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub async fn restart_bookie(&mut self, i: usize) -> Result<(), TestkitError> {
        self.kill_bookie(i).await;
        let client = self.zk_client().await?;
        // with the process gone, any registration left is stale (perhaps from a session the
        // bookie opened after a pause): the new process must register under another one
        let path = self.registration_path(i);
        if let Some(stat) = client
            .check_stat(&path)
            .await
            .map_err(|e| TestkitError::zk(format!("stat {path}"), e))?
        {
            self.bookies[i].registered_session = Some(stat.ephemeral_owner);
        }
        self.spawn_bookie(i)?;
        let deadline = Instant::now() + self.options.start_timeout + self.options.bookie_zk_timeout;
        self.await_ready(i, &client, deadline).await
    }

    /// Ids of the writable bookies registered in ZooKeeper (children of
    /// `/ledgers/available`, without `readonly`), sorted.
    ///
    /// # Errors
    /// [`TestkitError::ZooKeeper`] when ZooKeeper cannot be asked.
    pub async fn registered_bookies(&self) -> Result<Vec<String>, TestkitError> {
        let client = self.zk_client().await?;
        list_writable(&client).await
    }

    /// Ids of the read-only bookies (children of `/ledgers/available/readonly`), sorted.
    ///
    /// # Errors
    /// [`TestkitError::ZooKeeper`] when ZooKeeper cannot be asked.
    pub async fn readonly_bookies(&self) -> Result<Vec<String>, TestkitError> {
        let client = self.zk_client().await?;
        let path = format!("{LEDGERS_ROOT}/available/readonly");
        let mut ids = client
            .list_children(&path)
            .await
            .map_err(|e| TestkitError::zk(format!("list {path}"), e))?;
        ids.sort();
        Ok(ids)
    }

    /// Waits until bookie `i` is (`true`) or is not (`false`) registered as writable, polling
    /// ZooKeeper until `timeout`.
    ///
    /// # Errors
    /// [`TestkitError::Timeout`] when the state is not reached in time,
    /// [`TestkitError::ZooKeeper`] when ZooKeeper cannot be asked.
    ///
    /// # Panics
    /// If `i >= bookie_count()`.
    pub async fn wait_bookie_registered(
        &self,
        i: usize,
        registered: bool,
        timeout: Duration,
    ) -> Result<(), TestkitError> {
        let id = self.bookies[i].id();
        let client = self.zk_client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let now_registered = list_writable(&client).await?.contains(&id);
            if now_registered == registered {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let state = if registered {
                    "registered"
                } else {
                    "unregistered"
                };
                return Err(TestkitError::Timeout {
                    what: format!("bookie {i} ({id}) to be {state}"),
                    timeout,
                });
            }
            tokio::time::sleep(REGISTRATION_POLL_INTERVAL).await;
        }
    }

    /// Runs one of our Java tools (`"BkWrite"`, `"BkRead"`, `"BkBench"`: a name without a dot
    /// is taken from [`TOOLS_PACKAGE`]) or any class on the BookKeeper classpath (e.g.
    /// [`BOOKIE_SHELL`]) with the cluster's classpath and JVM flags, and returns what it
    /// printed. The tool finds the cluster through `MAJORDODO_TESTKIT_METADATA_URI` when it is
    /// not given `--metadata-uri`. The exit status is returned, not judged: check
    /// `output.status`. Output is also kept under `tools/` in the cluster directory.
    ///
    /// # Errors
    /// [`TestkitError::ToolTimedOut`] when it runs longer than `timeout` (it is then killed),
    /// [`TestkitError::Io`] when it cannot be started or its output read.
    pub async fn run_java_tool(
        &self,
        main_class: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, TestkitError> {
        self.run_java_tool_with_jvm_args(main_class, &[], args, timeout)
            .await
    }

    /// [`BkCluster::run_java_tool`] with extra JVM arguments after the harness's own (so they
    /// win), e.g. `-Xmx1g` for a long `BkBench`.
    ///
    /// # Errors
    /// As [`BkCluster::run_java_tool`].
    pub async fn run_java_tool_with_jvm_args(
        &self,
        main_class: &str,
        jvm_args: &[&str],
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, TestkitError> {
        let main = if main_class.contains('.') {
            main_class.to_owned()
        } else {
            format!("{TOOLS_PACKAGE}.{main_class}")
        };
        let short = main.rsplit('.').next().unwrap_or(&main).to_owned();
        let run = self.tool_runs.fetch_add(1, Ordering::Relaxed);
        let tools_dir = self.dir.path().join("tools");
        std::fs::create_dir_all(&tools_dir)
            .map_err(|e| TestkitError::io(format!("create {}", tools_dir.display()), e))?;
        let stdout_path = tools_dir.join(format!("{run:03}-{short}.stdout"));
        let stderr_path = tools_dir.join(format!("{run:03}-{short}.stderr"));
        let open = |path: &Path| {
            std::fs::File::create(path)
                .map_err(|e| TestkitError::io(format!("create {}", path.display()), e))
        };
        let mut command = Command::new(&self.deps.java);
        command.args(TOOL_JVM_FLAGS).args(BK_JVM_COMMON_FLAGS);
        if let Some(archive) = &self.deps.tools_cds_archive {
            command.arg(format!("-XX:SharedArchiveFile={}", archive.display()));
        }
        command
            .arg(format!(
                "-Dlog4j.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ))
            // INFO: BookieShell prints its results through the logger; logs go to stderr,
            // our tools' JSON lines to stdout
            .arg("-Dtestkit.log.level=INFO")
            .args(jvm_args)
            .arg("-cp")
            .arg(&self.deps.classpath)
            .arg(&main)
            .args(args)
            .env(METADATA_URI_ENV, self.metadata_service_uri())
            .current_dir(&tools_dir)
            .stdin(Stdio::null())
            .stdout(open(&stdout_path)?)
            .stderr(open(&stderr_path)?);
        // owned here: if this future is dropped, the tool is killed with it
        let mut tool = ChildProcess::spawn(command, stderr_path.clone())
            .map_err(|e| TestkitError::io(format!("spawn java tool {main}"), e))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = tool.try_exit() {
                break status;
            }
            if Instant::now() >= deadline {
                tool.kill().await;
                return Err(TestkitError::ToolTimedOut {
                    main_class: main,
                    timeout,
                    stderr_tail: process::tail(&stderr_path, 30),
                });
            }
            tokio::time::sleep(process::EXIT_POLL_INTERVAL).await;
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TestkitError::io(format!("read {}", path.display()), e))
        };
        Ok(Output {
            status,
            stdout: read(&stdout_path)?,
            stderr: read(&stderr_path)?,
        })
    }

    /// Runs BookKeeper's `BookieShell` with `-conf` pointing at [`BkCluster::client_conf_path`],
    /// e.g. `bookie_shell(&["listbookies", "-rw"], timeout)`.
    ///
    /// # Errors
    /// As [`BkCluster::run_java_tool`].
    pub async fn bookie_shell(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, TestkitError> {
        let conf = self.client_conf_path();
        let conf = conf.to_string_lossy();
        let mut all = vec!["-conf", conf.as_ref()];
        all.extend_from_slice(args);
        self.run_java_tool(BOOKIE_SHELL, &all, timeout).await
    }

    /// The ephemeral znode of bookie `i` while it is registered as writable.
    fn registration_path(&self, i: usize) -> String {
        format!("{LEDGERS_ROOT}/available/{}", self.bookies[i].id())
    }

    async fn zk_client(&self) -> Result<zkc::Client, TestkitError> {
        let connect = self.zk.connect_string();
        zkc::Client::connector()
            .with_session_timeout(HARNESS_ZK_SESSION_TIMEOUT)
            .connect(&connect)
            .await
            .map_err(|e| TestkitError::zk(format!("connect to {connect}"), e))
    }

    /// Creates (or empties) bookie `i`'s directories and writes its configuration.
    fn prepare_bookie_dirs(&self, i: usize) -> Result<(), TestkitError> {
        let bookie = &self.bookies[i];
        for sub in ["journal", "ledgers"] {
            let path = bookie.dir.join(sub);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .map_err(|e| TestkitError::io(format!("empty {}", path.display()), e))?;
            }
            std::fs::create_dir_all(&path)
                .map_err(|e| TestkitError::io(format!("create {}", path.display()), e))?;
        }
        let config = bookie_config(
            bookie.port,
            &bookie.dir,
            &self.metadata_service_uri(),
            &self.options,
        );
        write_file(&bookie.conf(), &config)
    }

    /// Starts bookie `i`'s JVM (not waiting for it).
    fn spawn_bookie(&mut self, i: usize) -> Result<(), TestkitError> {
        let bookie = &self.bookies[i];
        let log = bookie.log();
        let name = bookie.name();
        process::log_marker(&log, &format!("starting {name}"))
            .map_err(|e| TestkitError::io(format!("write {}", log.display()), e))?;
        let (stdout, stderr) = process::log_stdio(&log)
            .map_err(|e| TestkitError::io(format!("open {}", log.display()), e))?;
        let mut command = Command::new(&self.deps.java);
        command.args(BOOKIE_JVM_FLAGS).args(BK_JVM_COMMON_FLAGS);
        if let Some(archive) = &self.deps.bookie_cds_archive {
            command.arg(format!("-XX:SharedArchiveFile={}", archive.display()));
        }
        command
            .arg(format!(
                "-Dlog4j.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ))
            .arg("-Dtestkit.log.level=INFO")
            .args(&self.options.bookie_jvm_args)
            .arg("-cp")
            .arg(&self.deps.classpath)
            .arg("org.apache.bookkeeper.server.Main")
            .arg("--conf")
            .arg(bookie.conf())
            .current_dir(&bookie.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let process = ChildProcess::spawn(command, log)
            .map_err(|e| TestkitError::io(format!("spawn {name}"), e))?;
        self.bookies[i].process = Some(process);
        Ok(())
    }

    /// Waits for a freshly spawned bookie; if another process took its port first, moves it to
    /// a new port (with fresh directories: the cookie names the port) and tries again.
    async fn await_first_start(
        &mut self,
        i: usize,
        client: &zkc::Client,
    ) -> Result<(), TestkitError> {
        let mut attempt = 1;
        loop {
            let deadline = Instant::now() + self.options.start_timeout;
            match self.await_ready(i, client, deadline).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let collision = process::log_shows_port_collision(&self.bookies[i].log());
                    if attempt >= zk::MAX_PORT_ATTEMPTS || !collision {
                        return Err(e);
                    }
                    attempt += 1;
                    self.bookies[i].port = process::free_port()
                        .map_err(|e| TestkitError::io("find a free port", e))?;
                    self.prepare_bookie_dirs(i)?;
                    self.spawn_bookie(i)?;
                }
            }
        }
    }

    /// Waits until bookie `i` is registered under a new session and accepts TCP connections.
    async fn await_ready(
        &mut self,
        i: usize,
        client: &zkc::Client,
        deadline: Instant,
    ) -> Result<(), TestkitError> {
        let path = self.registration_path(i);
        let addr = self.bookie_addr(i);
        loop {
            let bookie = &mut self.bookies[i];
            let name = bookie.name();
            let log = bookie.log();
            let Some(process) = bookie.process.as_mut() else {
                return Err(zk::start_failed(&name, "it was killed".to_owned(), &log));
            };
            if let Some(status) = process.try_exit() {
                bookie.process = None;
                return Err(zk::start_failed(
                    &name,
                    format!("exited with {status}"),
                    &log,
                ));
            }
            let owner = client
                .check_stat(&path)
                .await
                .map_err(|e| TestkitError::zk(format!("stat {path}"), e))?
                .map(|stat| stat.ephemeral_owner);
            if let Some(session) = owner
                && Some(session) != bookie.registered_session
                && TcpStream::connect(addr).await.is_ok()
            {
                bookie.registered_session = Some(session);
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Some(mut process) = bookie.process.take() {
                    process.kill().await;
                }
                return Err(zk::start_failed(
                    &name,
                    "not registered and accepting connections in time".to_owned(),
                    &log,
                ));
            }
            tokio::time::sleep(REGISTRATION_POLL_INTERVAL).await;
        }
    }
}

impl Drop for BkCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for bookie in &self.bookies {
                eprintln!(
                    "--- majordodo-testkit: last lines of {} ---\n{}",
                    bookie.log().display(),
                    process::tail(&bookie.log(), PANIC_LOG_LINES)
                );
            }
        }
        // stop the bookies and ZooKeeper together, so the grace periods overlap
        let mut all: Vec<&mut ChildProcess> = self
            .bookies
            .iter_mut()
            .filter_map(|b| b.process.as_mut())
            .collect();
        all.extend(self.zk.process_mut());
        process::shutdown_blocking(&mut all);
        // then `zk` and `dir` drop: nothing left to kill, the directories are removed
    }
}

/// A bookie's configuration: loopback only, no HTTP server, disk thresholds that a fairly full
/// CI disk does not trip, then the caller's overrides.
fn bookie_config(
    port: u16,
    dir: &Path,
    metadata_service_uri: &str,
    options: &BkClusterOptions,
) -> String {
    let mut settings: Vec<(String, String)> = [
        ("bookiePort", port.to_string()),
        ("advertisedAddress", "127.0.0.1".to_owned()),
        // with a listening interface set, the bookie binds the advertised address only
        ("listeningInterface", "lo".to_owned()),
        ("allowLoopback", "true".to_owned()),
        ("metadataServiceUri", metadata_service_uri.to_owned()),
        (
            "zkTimeout",
            options.bookie_zk_timeout.as_millis().to_string(),
        ),
        (
            "journalDirectories",
            dir.join("journal").display().to_string(),
        ),
        (
            "ledgerDirectories",
            dir.join("ledgers").display().to_string(),
        ),
        (
            "ledgerStorageClass",
            "org.apache.bookkeeper.bookie.SortedLedgerStorage".to_owned(),
        ),
        ("httpServerEnabled", "false".to_owned()),
        // turn read-only only on a nearly full disk (BookKeeper requires < 1)
        ("diskUsageThreshold", "0.999".to_owned()),
        ("diskUsageWarnThreshold", "0.99".to_owned()),
        ("journalSyncData", options.journal_sync.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (key, value) in &options.bookie_conf {
        // a repeated key would become a list in commons-configuration: replace instead
        match settings.iter_mut().find(|(k, _)| k == key) {
            Some(setting) => setting.1.clone_from(value),
            None => settings.push((key.clone(), value.clone())),
        }
    }
    let mut text = String::from("# written by majordodo-testkit\n");
    for (key, value) in settings {
        let _ = writeln!(text, "{key}={value}");
    }
    text
}

/// Creates the ledgers root and its `available` and `available/readonly` children, which the
/// bookies need before they can register (the first bookie then writes `LAYOUT`).
async fn init_metadata(client: &zkc::Client) -> Result<(), TestkitError> {
    let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    for path in [
        LEDGERS_ROOT.to_owned(),
        format!("{LEDGERS_ROOT}/available"),
        format!("{LEDGERS_ROOT}/available/readonly"),
    ] {
        match client.create(&path, &[], &options).await {
            Ok(_) | Err(zkc::Error::NodeExists) => {}
            Err(e) => return Err(TestkitError::zk(format!("create {path}"), e)),
        }
    }
    Ok(())
}

async fn list_writable(client: &zkc::Client) -> Result<Vec<String>, TestkitError> {
    let path = format!("{LEDGERS_ROOT}/available");
    let mut ids: Vec<String> = client
        .list_children(&path)
        .await
        .map_err(|e| TestkitError::zk(format!("list {path}"), e))?
        .into_iter()
        .filter(|child| child != "readonly")
        .collect();
    ids.sort();
    Ok(ids)
}

fn write_file(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(|e| TestkitError::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(config: &str) -> Vec<&str> {
        config.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn bookie_config_binds_loopback_and_applies_options() {
        // Every bookie listens on 127.0.0.1 only, without HTTP server, with the chosen sync mode.
        let options = BkClusterOptions::new(1)
            .journal_sync(false)
            .bookie_zk_timeout(Duration::from_millis(2500));
        let config = bookie_config(
            4000,
            Path::new("/d"),
            "zk+hierarchical://h:1/ledgers",
            &options,
        );
        let lines = lines(&config);
        for expected in [
            "bookiePort=4000",
            "advertisedAddress=127.0.0.1",
            "listeningInterface=lo",
            "allowLoopback=true",
            "httpServerEnabled=false",
            "journalSyncData=false",
            "zkTimeout=2500",
            "journalDirectories=/d/journal",
            "metadataServiceUri=zk+hierarchical://h:1/ledgers",
        ] {
            assert!(lines.contains(&expected), "missing {expected} in {config}");
        }
    }

    #[test]
    fn bookie_conf_overrides_replace_instead_of_repeating_keys() {
        // A repeated key would turn into a list value; an override must replace the default.
        let options = BkClusterOptions::new(1)
            .bookie_conf("journalSyncData", "false")
            .bookie_conf("gcWaitTime", "1000");
        let config = bookie_config(1, Path::new("/d"), "uri", &options);
        let lines = lines(&config);
        let sync: Vec<_> = lines
            .iter()
            .filter(|l| l.starts_with("journalSyncData="))
            .collect();
        assert_eq!(sync, vec![&"journalSyncData=false"]);
        assert!(lines.contains(&"gcWaitTime=1000"));
    }

    #[test]
    fn invalid_options_are_refused() {
        // Nonsense options fail before any process starts.
        assert!(BkClusterOptions::new(0).validate().is_err());
        assert!(
            BkClusterOptions::new(1)
                .bookie_zk_timeout(Duration::from_millis(10))
                .validate()
                .is_err()
        );
        assert!(
            BkClusterOptions::new(1)
                .bookie_conf("a=b", "c")
                .validate()
                .is_err()
        );
        assert!(
            BkClusterOptions::new(1)
                .bookie_conf("k", "v\nx=y")
                .validate()
                .is_err()
        );
        assert!(BkClusterOptions::new(3).validate().is_ok());
    }
}
