//! Running the real `majordodo` binary in tests: servers as child processes whose stdout is
//! read line by line, client commands with a bounded wait, signals by pid. Every wait has a
//! deadline; a server still running when its handle drops is killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) mod cluster;
pub(crate) mod readme;

/// Longest a server takes to print its start-up lines.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a client command may run.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a server may take to stop after SIGTERM.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary under test.
pub(crate) fn majordodo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_majordodo"));
    // The tests' environment must not pick credentials or a URL up from the developer's.
    for var in [
        "MAJORDODO_URL",
        "MAJORDODO_TOKEN",
        "MAJORDODO_USERNAME",
        "MAJORDODO_PASSWORD",
        "MAJORDODO_ZK",
        "MAJORDODO_ZK_PATH",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to completion with no stdin, killing it after [`COMMAND_TIMEOUT`].
pub(crate) fn run(cmd: Command) -> Output {
    run_with_stdin(cmd, Stdio::null())
}

/// Runs `cmd` to completion reading `stdin`, killing it after [`COMMAND_TIMEOUT`].
pub(crate) fn run_with_stdin(mut cmd: Command, stdin: Stdio) -> Output {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn majordodo");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => output.expect("wait for majordodo"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("command did not finish within {COMMAND_TIMEOUT:?}: {cmd:?}");
        }
    }
}

/// Runs `majordodo args...` in `dir`.
pub(crate) fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = majordodo();
    cmd.current_dir(dir).args(args);
    run(cmd)
}

/// Stdout as text.
pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stderr as text.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub(crate) fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// Sends `SIG<name>` to `pid`.
pub(crate) fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// A server process whose stdout lines are collected as they come.
pub(crate) struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line seen so far.
    pub(crate) seen: Vec<String>,
}

impl Server {
    /// Starts `cmd` with stdout piped (stderr inherited, so its logs show in test output).
    pub(crate) fn start(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn majordodo server");
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub(crate) fn wait_line(&mut self, needle: &str) -> String {
        self.wait_line_within(needle, START_TIMEOUT)
    }

    /// Waits up to `timeout` for a stdout line containing `needle` and returns it.
    pub(crate) fn wait_line_within(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stdout line containing {needle:?} within {timeout:?}; seen: {:#?}; exited: {:?}",
                    self.seen,
                    self.child.try_wait()
                ),
            }
        }
    }

    /// The value after `label` on the first line that has it (`"  HTTP API:  http://..."`).
    pub(crate) fn value_of(&mut self, label: &str) -> String {
        let line = self.wait_line(label);
        line.split_once(label)
            .map(|(_, v)| v.trim().to_owned())
            .expect("the line has the label")
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub(crate) fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        signal(self.child.id(), "TERM");
        let deadline = started + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                return (status, started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop within {STOP_TIMEOUT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process to exit on its own.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `majordodo standalone` in `dir` on free ports without its local worker (tasks stay
/// waiting), with `extra` flags.
pub(crate) fn start_standalone_without_worker(dir: &Path, extra: &[&str]) -> Server {
    let mut cmd = majordodo();
    cmd.current_dir(dir)
        .args([
            "standalone",
            "--http-port",
            "0",
            "--worker-port",
            "0",
            "--no-worker",
        ])
        .args(extra);
    Server::start(cmd)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
pub(crate) fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON of `task <id> --json`, once its status is `status`.
pub(crate) fn wait_task_status(
    dir: &Path,
    client: &[&str],
    id: u64,
    status: &str,
) -> serde_json::Value {
    let id_text = id.to_string();
    poll(
        Duration::from_secs(15),
        &format!("task {id} {status}"),
        || {
            let mut args = vec!["task", id_text.as_str(), "--json"];
            args.extend_from_slice(client);
            let out = run_in(dir, &args);
            if !out.status.success() {
                return None;
            }
            let task: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (task["status"] == status).then_some(task)
        },
    )
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// A `majordodo broker` in `dir` on free ports, with an admin token in `dir/admin.token`, the
/// workers' secret in `dir/worker.secret`, and `http_extra` added to its `[http]` table.
/// Returns the server, its API URL and its worker port.
pub(crate) fn start_broker(dir: &Path, http_extra: &str) -> (Server, String, String) {
    write_file(dir, "worker.secret", "a-shared-secret-for-tests\n");
    let user_entry = ok(&run_in(dir, &["auth", "new-token", "--out", "admin.token"]));
    let config = write_file(
        dir,
        "broker.toml",
        &format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n{http_extra}\n{user_entry}\n\
             [workers]\nlisten = \"127.0.0.1:0\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"worker.secret\"\n"
        ),
    );
    let mut broker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(dir).args(["broker", "--config", &config]);
        cmd
    });
    let url = broker.value_of("HTTP API:");
    let worker_port = broker.value_of("worker port:");
    (broker, url, worker_port)
}

/// The pids of every live descendant of `pid` (from the parent pids in `/proc/*/stat`).
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after its last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(state), Some(ppid)) = (fields.first(), fields.get(1))
            && *state != "Z"
            && let Ok(ppid) = ppid.parse::<u32>()
        {
            parents.push((child, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether process `pid` still runs (a zombie does not count).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}
