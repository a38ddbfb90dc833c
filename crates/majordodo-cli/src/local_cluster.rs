//! `majordodo local-cluster`: a real replicated cluster on 127.0.0.1, in one command, to try
//! failover: one ZooKeeper and the bookies (real Apache processes, started by
//! `majordodo-testkit` from what `scripts/test-deps` installs) and N brokers, each a child
//! process of this very binary running `majordodo broker` with a generated file.
//!
//! ```text
//! <dir>/admin.token        bearer token of the admin user of every broker, also their peer token
//! <dir>/ledger.password    the ledgers' password
//! <dir>/env                `. <dir>/env` points client commands and workers at the cluster
//! <dir>/b<i>/broker.toml   broker i's file; b<i>/data its snapshots; b<i>/broker.log its output
//! <dir>/b<i>/broker.pid    its process id
//! ```
//!
//! Every start is a new, empty cluster: ZooKeeper's and the bookies' data live in temporary
//! directories that go when the cluster stops, so the brokers' snapshots would describe a log
//! that no longer exists. A directory made by an earlier start is therefore emptied first;
//! any other non-empty directory is refused.
//!
//! Broker 1 starts first and is the first leader; the others follow. Every process started is
//! tied to this one (`PR_SET_PDEATHSIG`): Ctrl-C stops the brokers (SIGTERM, then SIGKILL
//! after a bound), then the bookies and ZooKeeper; if this process dies, the kernel kills them.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use majordodo_broker::http::auth::{generate_token, token_digest, write_token_file};
use majordodo_proto::cluster::BrokerInfo;
use majordodo_testkit::{BkCluster, BkClusterOptions, spawn_tied_to_process, terminate};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::LocalClusterArgs;
use crate::config::cluster::DEFAULT_ZK_PATH;
use crate::discovery::ClusterZk;
use crate::error::usage;
use crate::standalone::ADMIN_USER;
use crate::worker::absolute;

/// Marks a directory made by `local-cluster`, which the next start may empty.
const MARKER_FILE: &str = ".majordodo-local-cluster";

/// File holding the ledgers' password in the directory.
const LEDGER_PASSWORD_FILE: &str = "ledger.password";

/// File that points a shell at the cluster.
const ENV_FILE: &str = "env";

/// ZooKeeper session timeout of the brokers: a leader that stops answering is replaced after
/// about this long. Shorter than the brokers' default (10 s) so that a failover is seen
/// quickly, long enough that a busy 2-core machine running every JVM does not lose sessions.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a broker may take to print its address, to be elected (the first) or to register
/// (the others); JVMs starting on a small machine slow everything down.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the brokers get to stop after SIGTERM: their own stop is bounded by 10 s per step.
const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// How often the cluster's processes are checked while it runs, and waits poll.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Lines of a broker's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;

/// Runs `majordodo local-cluster`.
pub(crate) async fn run(args: LocalClusterArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = absolute(&args.dir)?;
    let shown_dir = args.dir.clone();
    let stop = crate::signal::stop_token()?;
    let replaced = prepare_dir(&dir, &args.dir)?;

    let options = BkClusterOptions::new(args.bookies);
    let bk = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        started = BkCluster::start_with(options) => started.context(
            "start ZooKeeper and the bookies (local-cluster runs them from what \
             scripts/test-deps installs: run it from the repository first)",
        )?,
    };
    // From here on `cluster` owns every process: dropping it stops them all.
    let mut cluster = Cluster {
        bk: Some(bk),
        brokers: Vec::new(),
    };
    let outcome = tokio::select! {
        () = stop.cancelled() => Ok(None),
        started = cluster.start_brokers(&dir, &args) => started.map(Some),
    };
    let result = match outcome {
        Ok(None) => Ok(()),
        Err(error) => Err(error),
        Ok(Some(zk)) => {
            let env = write_env(&dir, &cluster.zk_connect())?;
            print_banner(
                &cluster,
                &dir,
                &shown_dir,
                &env,
                started.elapsed(),
                replaced,
            );
            cluster.watch(&zk, &stop).await;
            Ok(())
        }
    };
    println!("stopping the local cluster");
    let stopped = cluster.stop().await;
    println!(
        "local cluster stopped; files and logs stay in {} (the next start replaces them)",
        shown_dir.display()
    );
    result.and(stopped)
}

/// Creates `dir`, empties it if an earlier start made it; returns whether it did.
fn prepare_dir(dir: &Path, shown: &Path) -> anyhow::Result<bool> {
    let mut replaced = false;
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| usage(format!("--dir {}: {e}", shown.display())))?;
        if entries.next().is_some() {
            if !dir.join(MARKER_FILE).is_file() {
                return Err(usage(format!(
                    "--dir {}: the directory exists and was not made by local-cluster; give a \
                     new or empty directory",
                    shown.display()
                )));
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("empty the earlier local cluster in {}", dir.display()))?;
            replaced = true;
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER_FILE),
        "made by `majordodo local-cluster`; its next start in this directory replaces \
         everything here\n",
    )
    .with_context(|| format!("write {}", dir.join(MARKER_FILE).display()))?;
    Ok(replaced)
}

/// One broker process.
struct BrokerProcess {
    id: String,
    child: Child,
    /// Its directory (`<dir>/b<i>`).
    dir: PathBuf,
    api_url: String,
    worker_addr: String,
    /// Set once its exit was seen.
    exited: Option<ExitStatus>,
}

impl BrokerProcess {
    fn log(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The exit status once it has exited.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every process of the cluster. Dropping it kills what still runs.
struct Cluster {
    /// ZooKeeper and the bookies; `None` once stopped.
    bk: Option<BkCluster>,
    brokers: Vec<BrokerProcess>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.brokers.clear();
        if let Some(bk) = self.bk.take() {
            // Stopping the JVMs blocks for up to a couple of seconds.
            tokio::task::block_in_place(|| drop(bk));
        }
    }
}

impl Cluster {
    fn bk(&self) -> &BkCluster {
        self.bk
            .as_ref()
            .expect("the bookies run until the cluster stops")
    }

    fn zk_connect(&self) -> String {
        self.bk().zk_connect_string()
    }

    /// Writes the shared files and the brokers' files, starts broker 1 and waits until it
    /// leads, then the others until every one is registered; returns a ZooKeeper session on
    /// the cluster.
    async fn start_brokers(
        &mut self,
        dir: &Path,
        args: &LocalClusterArgs,
    ) -> anyhow::Result<ClusterZk> {
        let token = generate_token();
        for (name, secret) in [
            (majordodo_proto::http::ADMIN_TOKEN_FILE, token.clone()),
            (LEDGER_PASSWORD_FILE, generate_token()),
        ] {
            let path = dir.join(name);
            write_token_file(&path, &secret)
                .with_context(|| format!("write {}", path.display()))?;
        }
        let zk_connect = self.zk_connect();
        let zk = ClusterZk::connect(&zk_connect, DEFAULT_ZK_PATH).await?;
        let file = broker_file(&zk_connect, &token_digest(&token), args.bookies);
        let program = std::env::current_exe().context("find this program to run the brokers")?;
        for i in 1..=args.brokers {
            let id = format!("b{i}");
            let broker = spawn_broker(&program, dir, &id, &file).await?;
            self.brokers.push(broker);
            let deadline = Instant::now() + BROKER_START_TIMEOUT;
            if i == 1 {
                self.wait_for(&zk, deadline, "broker b1 to lead", |leader, _| {
                    leader.is_some_and(|l| l.broker_id() == Some("b1"))
                })
                .await?;
            }
        }
        let ids: Vec<String> = self.brokers.iter().map(|b| b.id.clone()).collect();
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        self.wait_for(&zk, deadline, "every broker to register", |_, brokers| {
            ids.iter()
                .all(|id| brokers.iter().any(|b| b.broker_id() == Some(id)))
        })
        .await?;
        Ok(zk)
    }

    /// Polls ZooKeeper until `done(leader, live brokers)`, failing when a broker exits or
    /// `deadline` passes.
    async fn wait_for(
        &mut self,
        zk: &ClusterZk,
        deadline: Instant,
        what: &str,
        done: impl Fn(Option<&BrokerInfo>, &[BrokerInfo]) -> bool,
    ) -> anyhow::Result<()> {
        loop {
            for broker in &mut self.brokers {
                if let Some(status) = broker.poll_exit() {
                    return Err(anyhow!(
                        "broker {} exited while starting ({}); end of {}:\n{}",
                        broker.id,
                        describe_exit(status),
                        broker.log().display(),
                        tail(&broker.log(), LOG_TAIL_LINES)
                    ));
                }
            }
            let leader = zk.leader().await?;
            let brokers = zk.brokers().await?;
            if done(leader.as_ref(), &brokers) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "timed out after {}s waiting for {what}; the brokers' logs are in their \
                     directories ({})",
                    BROKER_START_TIMEOUT.as_secs(),
                    self.brokers
                        .iter()
                        .map(|b| b.log().display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Reports what happens until `stop`: brokers that exit and leaders that change.
    async fn watch(&mut self, zk: &ClusterZk, stop: &CancellationToken) {
        let mut leaders = zk.watch_leader();
        let mut known_leader = Some("b1".to_owned());
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = leaders.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let leader = leaders.borrow_and_update().clone();
                    let id = leader.as_ref().and_then(|l| l.broker_id().map(str::to_owned));
                    if id != known_leader {
                        match &leader {
                            Some(l) => println!(
                                "leader: {} ({})",
                                l.broker_id().unwrap_or("?"),
                                l.api_url().unwrap_or("no HTTP API URL")
                            ),
                            None => println!("leader: none, an election is under way"),
                        }
                        known_leader = id;
                    }
                }
                _ = tick.tick() => {
                    for broker in &mut self.brokers {
                        let seen = broker.exited.is_some();
                        if let Some(status) = broker.poll_exit()
                            && !seen
                        {
                            println!(
                                "broker {} (pid {}) exited: {}",
                                broker.id,
                                broker.child.id(),
                                describe_exit(status)
                            );
                        }
                    }
                }
            }
            let _ = std::io::stdout().flush();
        }
    }

    /// Stops the brokers (SIGTERM, SIGKILL after [`BROKER_STOP_TIMEOUT`]), then the bookies
    /// and ZooKeeper.
    async fn stop(&mut self) -> anyhow::Result<()> {
        for broker in &mut self.brokers {
            if broker.poll_exit().is_none() {
                let _ = terminate(&mut broker.child);
            }
        }
        let deadline = Instant::now() + BROKER_STOP_TIMEOUT;
        let mut late = Vec::new();
        for broker in &mut self.brokers {
            while broker.poll_exit().is_none() && Instant::now() < deadline {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            if broker.poll_exit().is_none() {
                late.push(broker.id.clone());
            }
        }
        self.brokers.clear();
        if let Some(bk) = self.bk.take() {
            tokio::task::block_in_place(|| drop(bk));
        }
        if late.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "brokers {} did not stop within {}s of SIGTERM and were killed",
                late.join(", "),
                BROKER_STOP_TIMEOUT.as_secs()
            ))
        }
    }
}

/// The brokers' file, the same for every broker (its id, directories and ports come from the
/// command line). Paths are relative to the file's directory, `<dir>/b<i>`.
fn broker_file(zk: &str, token_sha256: &str, bookies: usize) -> String {
    let ensemble = bookies.min(3);
    let quorum = bookies.min(2);
    format!(
        r#"# Written by `majordodo local-cluster`: one broker of a local replicated cluster.
data_dir = "data"

[http]
listen = "127.0.0.1:0"

[[http.users]]
name = "{ADMIN_USER}"
role = "admin"
token_sha256 = "{token_sha256}"

[workers]
listen = "127.0.0.1:0"

[cluster]
zk = "{zk}"
session_timeout = "{session_timeout}s"
ensemble = {ensemble}
write_quorum = {quorum}
ack_quorum = {quorum}
ledger_password_file = "../{LEDGER_PASSWORD_FILE}"
peer_token_file = "../{token_file}"
"#,
        session_timeout = SESSION_TIMEOUT.as_secs(),
        token_file = majordodo_proto::http::ADMIN_TOKEN_FILE,
    )
}

/// Starts broker `id` in `<dir>/<id>` and reads the addresses it prints.
async fn spawn_broker(
    program: &Path,
    dir: &Path,
    id: &str,
    file: &str,
) -> anyhow::Result<BrokerProcess> {
    let broker_dir = dir.join(id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&broker_dir)
        .with_context(|| format!("create {}", broker_dir.display()))?;
    let config = broker_dir.join("broker.toml");
    std::fs::write(&config, file).with_context(|| format!("write {}", config.display()))?;
    let log_path = broker_dir.join("broker.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let mut command = Command::new(program);
    command
        .arg("broker")
        .arg("--config")
        .arg(&config)
        .arg("--broker-id")
        .arg(id)
        .current_dir(&broker_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone().context("open the broker's log")?);
    let mut child = spawn_tied_to_process(command).with_context(|| format!("start broker {id}"))?;
    let pid_file = broker_dir.join("broker.pid");
    std::fs::write(&pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("write {}", pid_file.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    // The banner lines go to the caller, and every line to the log, until the broker ends.
    std::thread::spawn(move || {
        let mut log = log;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = writeln!(log, "{line}");
            let _ = lines_tx.send(line);
        }
    });
    let mut broker = BrokerProcess {
        id: id.to_owned(),
        child,
        dir: broker_dir,
        api_url: String::new(),
        worker_addr: String::new(),
        exited: None,
    };
    let deadline = Instant::now() + BROKER_START_TIMEOUT;
    while broker.api_url.is_empty() || broker.worker_addr.is_empty() {
        let line = match tokio::time::timeout(POLL_INTERVAL, lines.recv()).await {
            Ok(Some(line)) => line,
            waited => {
                if let Some(status) = broker.poll_exit() {
                    return Err(anyhow!(
                        "broker {id} exited while starting ({}); end of {}:\n{}",
                        describe_exit(status),
                        broker.log().display(),
                        tail(&broker.log(), LOG_TAIL_LINES)
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(anyhow!(
                        "broker {id} did not print its addresses within {}s; see {}",
                        BROKER_START_TIMEOUT.as_secs(),
                        broker.log().display()
                    ));
                }
                if matches!(waited, Ok(None)) {
                    // Its stdout closed: it is exiting; the next round sees how.
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                continue;
            }
        };
        let value = |label: &str| line.split_once(label).map(|(_, v)| v.trim().to_owned());
        if let Some(url) = value("HTTP API:") {
            broker.api_url = url;
        } else if let Some(addr) = value("worker port:") {
            broker.worker_addr = addr;
        }
    }
    Ok(broker)
}

/// How a process ended, in words.
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(9)) => "killed by signal 9 (SIGKILL)".to_owned(),
        (None, Some(15)) => "stopped by signal 15 (SIGTERM)".to_owned(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The last `lines` lines of a file (best effort).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `<dir>/env`, which points a shell at the cluster (the token is read from its file
/// when the file is sourced, so the secret is not in it); returns its path.
fn write_env(dir: &Path, zk: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(ENV_FILE);
    let token = dir.join(majordodo_proto::http::ADMIN_TOKEN_FILE);
    let text = format!(
        "# Written by `majordodo local-cluster`. Source it (`. {}`) to point the client \
         commands\n# and workers of a shell at the local cluster: they find its leader in \
         ZooKeeper.\nexport MAJORDODO_ZK={zk}\nexport MAJORDODO_TOKEN=\"$(cat {})\"\nunset \
         MAJORDODO_URL MAJORDODO_ZK_PATH\n",
        shell_quote(&path.display().to_string()),
        shell_quote(&token.display().to_string()),
    );
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// `s` quoted for a POSIX shell when it needs to be.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints every address, the token's path and commands that work as printed.
fn print_banner(
    cluster: &Cluster,
    dir: &Path,
    shown: &Path,
    env: &Path,
    elapsed: Duration,
    replaced: bool,
) {
    let bk = cluster.bk();
    let program = shell_quote(
        &std::env::args()
            .next()
            .unwrap_or_else(|| "majordodo".into()),
    );
    let rel = |name: &str| shell_quote(&shown.join(name).display().to_string());
    let bookies: Vec<String> = (0..bk.bookie_count())
        .map(|i| bk.bookie_addr(i).to_string())
        .collect();
    let ensemble = bk.bookie_count().min(3);
    let quorum = bk.bookie_count().min(2);
    println!(
        "majordodo local cluster is running (started in {:.1} s), on 127.0.0.1 only",
        elapsed.as_secs_f64()
    );
    println!(
        "  ZooKeeper:   {}, cluster path {DEFAULT_ZK_PATH}",
        bk.zk_connect_string()
    );
    println!(
        "  bookies:     {} (ledgers on {ensemble}, each entry on {quorum}, durable on {quorum})",
        bookies.join(", ")
    );
    for (i, b) in cluster.brokers.iter().enumerate() {
        println!(
            "  broker {}:   {}, worker port {}, pid {}{}",
            b.id,
            b.api_url,
            b.worker_addr,
            b.child.id(),
            if i == 0 { " (leader)" } else { "" }
        );
    }
    println!(
        "  directory:   {} (b1/, b2/...: each broker's file, log, snapshots, pid)",
        dir.display()
    );
    println!(
        "  admin token: {} (also the brokers' peer token)",
        dir.join(majordodo_proto::http::ADMIN_TOKEN_FILE).display()
    );
    println!(
        "  logs:        ZooKeeper {}, bookies {}/bookie-<i>/bookie.log",
        bk.zk().log_path().display(),
        bk.dir().display()
    );
    if replaced {
        println!("  (the earlier local cluster in this directory was replaced)");
    }
    println!(
        "Try it, in another terminal in this directory ({} sets MAJORDODO_ZK and MAJORDODO_TOKEN):",
        env.display()
    );
    println!(
        "  . {}",
        shell_quote(&shown.join(ENV_FILE).display().to_string())
    );
    println!("  {program} worker-credentials add w1 --output w1.credential");
    println!("  {program} worker --credential-file w1.credential --builtin echo");
    println!("  {program} submit --type echo --data hello");
    println!("  {program} status");
    println!(
        "  {program} ledgers --ledger-password-file {}",
        rel(LEDGER_PASSWORD_FILE)
    );
    if let Some(leader) = cluster.brokers.first() {
        let pid = shown.join(&leader.id).join("broker.pid");
        println!(
            "  kill -9 $(cat {})    # the leader, {}: a follower takes over in about {} s",
            shell_quote(&pid.display().to_string()),
            leader.id,
            SESSION_TIMEOUT.as_secs()
        );
    }
    println!("Ctrl-C stops the whole cluster.");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brokers_file_is_a_valid_cluster_configuration() {
        // Goal: the generated file parses and validates as a replicated broker's, with
        // quorums that fit the bookies.
        let dir = tempfile::tempdir().unwrap();
        for name in [
            majordodo_proto::http::ADMIN_TOKEN_FILE,
            LEDGER_PASSWORD_FILE,
        ] {
            std::fs::write(dir.path().join(name), "secret\n").unwrap();
        }
        let b1 = dir.path().join("b1");
        std::fs::create_dir(&b1).unwrap();
        let path = b1.join("broker.toml");
        for (bookies, quorums) in [(1, (1, 1, 1)), (3, (3, 2, 2)), (5, (3, 2, 2))] {
            std::fs::write(
                &path,
                broker_file("127.0.0.1:2181", &"ab".repeat(32), bookies),
            )
            .unwrap();
            let file = crate::config::broker::BrokerFile::load(&path).unwrap();
            let settings = file
                .validate(&crate::config::Origin::File(path.clone()))
                .unwrap();
            let cluster = settings.cluster.expect("replicated");
            assert_eq!(
                (
                    cluster.log.ensemble,
                    cluster.log.write_quorum,
                    cluster.log.ack_quorum
                ),
                quorums
            );
            assert_eq!(cluster.coord.session_timeout, SESSION_TIMEOUT);
            assert_eq!(cluster.peer_token.as_deref(), Some("secret"));
        }
    }

    #[test]
    fn a_directory_is_reused_only_if_local_cluster_made_it() {
        // Goal: an earlier local cluster's directory is emptied; another non-empty directory
        // is refused naming --dir and left as it is.
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("c");
        assert!(!prepare_dir(&dir, Path::new("c")).unwrap());
        std::fs::write(dir.join("old"), "x").unwrap();
        assert!(prepare_dir(&dir, Path::new("c")).unwrap());
        assert!(!dir.join("old").exists());
        let other = parent.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("keep"), "x").unwrap();
        let error = prepare_dir(&other, Path::new("other")).unwrap_err();
        assert!(format!("{error}").starts_with("--dir other:"), "{error}");
        assert!(other.join("keep").exists());
    }
}
