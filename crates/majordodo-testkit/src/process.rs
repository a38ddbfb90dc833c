//! Child processes that never outlive the test process.
//!
//! Every child is forked by one long-lived thread ("testkit-spawner") and asks the kernel, in a
//! `pre_exec` hook, for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`). Linux ties that
//! signal to the *thread* that forked the child, not to the process: forking from a test thread
//! or a tokio blocking thread would kill the child as soon as that thread ends. The spawner
//! thread lives as long as the process, so children die exactly when the test binary dies,
//! however it dies (panic, SIGKILL, Ctrl-C). `Drop` of the owners kills them earlier in the
//! normal case.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the harness checks whether a child has exited. Short against JVM start-up times
/// (seconds), long enough not to burn CPU on a 2-core machine.
pub(crate) const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long `Drop` lets processes shut down after SIGTERM before it sends SIGKILL. Enough for
/// a JVM to run its shutdown hooks and flush its log; short so that dropping a cluster stays
/// cheap in tests.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Bytes read from the end of a log to show its last lines in an error.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// The channel to the spawner thread, created on first use.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".to_owned())
            .spawn(move || {
                // the sender lives in a static, so this loop (and the thread) never ends
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect(
                "spawning a thread at start-up cannot fail unless the system is out of threads",
            );
        Mutex::new(tx)
    })
}

/// Spawns `command` so that the child gets SIGKILL when this process dies, however it dies
/// (the child is forked by the process-wide spawner thread; see the module documentation).
/// For programs that run servers of their own next to the harness's (`majordodo
/// local-cluster` runs its brokers so).
///
/// # Errors
/// When the child cannot be spawned.
pub fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id();
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe calls
    // are allowed: prctl and getppid are system calls, and the error path builds an io::Error
    // from a raw errno without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // the parent may have died between fork and prctl: then nobody would kill us later
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let sent = spawner()
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((command, reply_tx));
    if sent.is_err() {
        return Err(io::Error::other("spawner thread is gone"));
    }
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// Sends SIGTERM to `child` unless it has exited already (a reaped child's pid may belong to
/// another process by now, so it is never signalled).
///
/// # Errors
/// When asking whether the child exited fails.
pub fn terminate(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_none() {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child,
        // so it cannot have been reused by another process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    Ok(())
}

/// Starts every marker line written into a log by the harness.
const MARKER: &str = "=== majordodo-testkit:";

/// Opens `path` for appending and returns stdio handles writing both stdout and stderr to it.
pub(crate) fn log_stdio(path: &Path) -> io::Result<(Stdio, Stdio)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let err = file.try_clone()?;
    Ok((Stdio::from(file), Stdio::from(err)))
}

/// Appends a marker line to a log, so restarts are easy to find in it.
pub(crate) fn log_marker(path: &Path, text: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{MARKER} {text} ===")
}

/// The last `lines` lines of a file (best effort: an unreadable file gives a short note).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A child process (a server or a tool run) that is killed when its owner drops it.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    child: Child,
    /// Set once the child has been reaped; from then on its pid may belong to someone else and
    /// must not be signalled.
    exit: Option<ExitStatus>,
    log: PathBuf,
}

impl ChildProcess {
    pub(crate) fn spawn(command: Command, log: PathBuf) -> io::Result<ChildProcess> {
        let child = spawn_tied_to_process(command)?;
        Ok(ChildProcess {
            child,
            exit: None,
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub(crate) fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            // an error here means the child was already reaped elsewhere: treat as exited
            match self.child.try_wait() {
                Ok(Some(status)) => self.exit = Some(status),
                Ok(None) => {}
                Err(_) => self.exit = Some(ExitStatus::default()),
            }
        }
        self.exit
    }

    /// Sends `signal` if the child is still running (never to a reaped pid).
    pub(crate) fn signal(&mut self, signal: libc::c_int) {
        if self.try_exit().is_none() {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child,
            // so it cannot have been reused by another process.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Sends SIGKILL and waits (asynchronously) until the child has exited.
    pub(crate) async fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        while self.try_exit().is_none() {
            tokio::time::sleep(EXIT_POLL_INTERVAL).await;
        }
    }

    /// Sends SIGKILL and blocks until the child has exited (for `Drop`).
    pub(crate) fn kill_blocking(&mut self) {
        self.signal(libc::SIGKILL);
        if self.exit.is_none() {
            self.exit = Some(self.child.wait().unwrap_or_default());
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_blocking();
    }
}

/// Stops every process: SIGTERM (and SIGCONT, in case one is paused), up to [`SHUTDOWN_GRACE`]
/// for them to exit, then SIGKILL for the rest. Blocks; meant for `Drop`.
pub(crate) fn shutdown_blocking(processes: &mut [&mut ChildProcess]) {
    for p in processes.iter_mut() {
        p.signal(libc::SIGTERM);
        p.signal(libc::SIGCONT);
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while Instant::now() < deadline && processes.iter_mut().any(|p| p.try_exit().is_none()) {
        std::thread::sleep(EXIT_POLL_INTERVAL);
    }
    for p in processes.iter_mut() {
        p.kill_blocking();
    }
}

/// Ports handed out by [`free_port`] in this process, never handed out twice: two servers of
/// two tests in one binary cannot be given the same port.
fn handed_out() -> &'static Mutex<std::collections::HashSet<u16>> {
    static PORTS: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

/// Upper bound on attempts to find a port not yet handed out.
const FREE_PORT_ATTEMPTS: usize = 100;

/// A TCP port on 127.0.0.1 that was free a moment ago: bind port 0, read the port, release it.
/// Another process may take it before our server binds it; callers retry on a collision.
pub(crate) fn free_port() -> io::Result<u16> {
    for _ in 0..FREE_PORT_ATTEMPTS {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        let mut ports = handed_out()
            .lock()
            .map_err(|_| io::Error::other("port registry lock poisoned"))?;
        if ports.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port found"))
}

/// Whether a failed start looks like a port collision (so a retry on another port may work).
/// Only the part of the log after the last start marker counts.
pub(crate) fn log_shows_port_collision(log: &Path) -> bool {
    let text = tail(log, 400);
    let last_start = text.rfind(MARKER).map_or(text.as_str(), |at| &text[at..]);
    last_start.contains("Address already in use") || last_start.contains("BindException")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_collision_is_read_from_the_latest_start_only() {
        // A retry on a new port must not be triggered by an older start's bind error.
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        log_marker(&log, "starting on 1").expect("write");
        std::fs::write(
            &log,
            format!(
                "{}\njava.net.BindException: Address already in use\n",
                std::fs::read_to_string(&log).expect("read")
            ),
        )
        .expect("write");
        assert!(log_shows_port_collision(&log));
        log_marker(&log, "starting on 2").expect("write");
        assert!(!log_shows_port_collision(&log));
    }

    #[test]
    fn tail_returns_the_last_lines() {
        // Errors show the end of a log, not its beginning.
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).expect("write");
        assert_eq!(tail(&log, 2), "line 98\nline 99");
        assert!(tail(&dir.path().join("missing"), 2).contains("cannot read"));
    }

    #[test]
    fn terminate_sends_sigterm_to_a_running_child_and_skips_a_reaped_one() {
        // Goal: the child ends by SIGTERM; once reaped it is left alone.
        use std::os::unix::process::ExitStatusExt;
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut child = spawn_tied_to_process(command).expect("spawn sleep");
        terminate(&mut child).expect("terminate");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        terminate(&mut child).expect("a reaped child is not signalled");
    }

    #[test]
    fn free_port_never_hands_out_the_same_port_twice() {
        // Two servers started by one test binary must not be given the same port.
        let ports: std::collections::HashSet<u16> =
            (0..20).map(|_| free_port().expect("free port")).collect();
        assert_eq!(ports.len(), 20);
    }
}
