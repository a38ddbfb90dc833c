//! A real ZooKeeper server (the Debian package's jar, `ZooKeeperServerMain`, standalone) on
//! 127.0.0.1 and a free port, with its data in a fresh temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::deps::ZkDeps;
use crate::error::TestkitError;
use crate::process::{self, ChildProcess};

/// How long ZooKeeper may take to answer `srvr` after its JVM starts. It usually takes about a
/// second; a loaded 2-core CI machine starting several JVMs at once can be much slower.
pub const ZK_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the harness asks ZooKeeper whether it serves yet.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Ports tried before giving up when another process takes the chosen port first.
pub(crate) const MAX_PORT_ATTEMPTS: usize = 3;

/// ZooKeeper's tick. The smallest session timeout a client may ask for is 2 ticks, so 500 ms
/// lets tests use 1-second sessions to see expiry quickly.
const TICK_MS: u64 = 500;

/// Largest session timeout clients may ask for (ZooKeeper's default would be 20 ticks = 10 s,
/// below the BookKeeper client's default of 10 s plus margin).
const MAX_SESSION_TIMEOUT_MS: u64 = 60_000;

/// JVM flags: small heap and quick start (C1 only) on a 2-core machine.
const ZK_JVM_FLAGS: &[&str] = &[
    "-Xmx128m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.admin.enableServer=false",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
];

/// A running ZooKeeper server. Dropping it kills the process and deletes its directory.
#[derive(Debug)]
pub struct ZkServer {
    /// Client port on 127.0.0.1; kept across restarts.
    port: u16,
    /// `zoo.cfg`, `data/` and `zookeeper.log`; removed on drop.
    dir: crate::TempDir,
    /// The JVM, `None` while stopped.
    process: Option<ChildProcess>,
    deps: ZkDeps,
    /// How long the last (re)start took until ZooKeeper answered.
    started_in: Duration,
}

impl ZkServer {
    /// Starts ZooKeeper on a free port of 127.0.0.1 and waits until it answers `srvr`.
    ///
    /// # Errors
    /// [`TestkitError::MissingDependency`] when the Debian ZooKeeper package or Java is not
    /// installed, [`TestkitError::StartFailed`] (with the log's last lines) when the server
    /// exits or does not answer within [`ZK_START_TIMEOUT`], [`TestkitError::Io`] when its
    /// directory cannot be written.
    pub async fn start() -> Result<ZkServer, TestkitError> {
        let deps = ZkDeps::locate()?;
        let dir = crate::TempDir::new("majordodo-zk-")?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| TestkitError::io(format!("create {}", data.display()), e))?;
        let port = process::free_port().map_err(|e| TestkitError::io("find a free port", e))?;
        let mut server = ZkServer {
            port,
            dir,
            process: None,
            deps,
            started_in: Duration::ZERO,
        };
        let mut attempt = 1;
        loop {
            server.write_config()?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    if attempt >= MAX_PORT_ATTEMPTS
                        || !process::log_shows_port_collision(&server.log_path())
                    {
                        return Err(e);
                    }
                    attempt += 1;
                    server.port = process::free_port()
                        .map_err(|e| TestkitError::io("find a free port", e))?;
                }
            }
        }
    }

    /// `"127.0.0.1:port"`, for ZooKeeper clients.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// The server's directory (`zoo.cfg`, `data/`, `zookeeper.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file receiving the server's stdout and stderr (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("zookeeper.log")
    }

    /// How long the last start or restart took until the server answered `srvr`.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Stops the server like a crash (SIGKILL) and waits until the process has exited. Its data
    /// stays; [`ZkServer::restart`] brings it back on the same port. No-op when stopped.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Restarts the server on the same port with the same data (stopping it first if it runs)
    /// and waits until it answers. Sessions that expired meanwhile stay expired.
    ///
    /// # Errors
    /// [`TestkitError::StartFailed`] when it does not come back, e.g. because another process
    /// took the port meanwhile.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop().await;
        self.launch().await
    }

    /// The running process, for a cluster that shuts all its processes down together.
    pub(crate) fn process_mut(&mut self) -> Option<&mut ChildProcess> {
        self.process.as_mut()
    }

    fn write_config(&self) -> Result<(), TestkitError> {
        let config = format!(
            "# written by majordodo-testkit\n\
             tickTime={TICK_MS}\n\
             minSessionTimeout={}\n\
             maxSessionTimeout={MAX_SESSION_TIMEOUT_MS}\n\
             dataDir={}\n\
             clientPort={}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr\n\
             preAllocSize=1024\n",
            2 * TICK_MS,
            self.dir.path().join("data").display(),
            self.port,
        );
        let path = self.dir.path().join("zoo.cfg");
        std::fs::write(&path, config)
            .map_err(|e| TestkitError::io(format!("write {}", path.display()), e))
    }

    /// Starts the JVM and waits until it serves.
    async fn launch(&mut self) -> Result<(), TestkitError> {
        let began = Instant::now();
        let log = self.log_path();
        let name = format!("zookeeper ({})", self.connect_string());
        process::log_marker(&log, &format!("starting {name}"))
            .map_err(|e| TestkitError::io(format!("write {}", log.display()), e))?;
        let (stdout, stderr) = process::log_stdio(&log)
            .map_err(|e| TestkitError::io(format!("open {}", log.display()), e))?;
        let mut command = Command::new(&self.deps.java);
        command.args(ZK_JVM_FLAGS);
        if let Some(archive) = &self.deps.cds_archive {
            command.arg(format!("-XX:SharedArchiveFile={}", archive.display()));
        }
        command
            .arg("-cp")
            .arg(&self.deps.classpath)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let process = ChildProcess::spawn(command, log.clone())
            .map_err(|e| TestkitError::io(format!("spawn {name}"), e))?;
        let process = self.process.insert(process);

        let deadline = began + ZK_START_TIMEOUT;
        loop {
            if let Some(status) = process.try_exit() {
                self.process = None;
                return Err(start_failed(&name, format!("exited with {status}"), &log));
            }
            if serves(self.port).await {
                self.started_in = began.elapsed();
                return Ok(());
            }
            if Instant::now() >= deadline {
                process.kill().await;
                self.process = None;
                return Err(start_failed(
                    &name,
                    format!("no answer to srvr within {ZK_START_TIMEOUT:?}"),
                    &log,
                ));
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        if let Some(process) = self.process.as_mut() {
            if std::thread::panicking() {
                eprintln!(
                    "--- majordodo-testkit: last lines of {} ---\n{}",
                    process.log().display(),
                    process::tail(process.log(), 20)
                );
            }
            process::shutdown_blocking(&mut [process]);
        }
        // the directory is removed when `dir` drops, after the process is gone
    }
}

pub(crate) fn start_failed(name: &str, reason: String, log: &Path) -> TestkitError {
    TestkitError::StartFailed {
        name: name.to_owned(),
        reason,
        log: log.to_owned(),
        log_tail: process::tail(log, 40),
    }
}

/// Whether ZooKeeper on `port` answers the `srvr` four-letter word as a serving server.
async fn serves(port: u16) -> bool {
    /// A `srvr` answer is a few hundred bytes; more means something else is on the port.
    const MAX_ANSWER: u64 = 4096;
    let ask = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"srvr").await?;
        let mut answer = String::new();
        stream.take(MAX_ANSWER).read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(answer)) => answer.contains("Zookeeper version"),
        _ => false,
    }
}
