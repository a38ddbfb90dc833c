//! [`ProcessExecutor`]: runs a task as an external program.
//!
//! The contract with the program:
//! - it is started from `argv` directly, without a shell, in a process group of its own, with
//!   the worker's environment plus `env` plus `MAJORDODO_TASK_ID`, `MAJORDODO_TASK_TYPE`,
//!   `MAJORDODO_USER_ID` and `MAJORDODO_ATTEMPT`;
//! - the task's data is written to its stdin, which is then closed; a program that does not
//!   read stdin is fine;
//! - exit status 0 finishes the task, with stdout as the result: it must be UTF-8, and one
//!   trailing `\n` is removed (so `echo` output comes back as typed);
//! - a non-zero exit, death by a signal, more than `max_stdout_bytes` of stdout or running past
//!   `timeout_ms` fails the attempt, with the cause and the last `stderr_tail_bytes` of stderr
//!   as the error text;
//! - exit status [`RETRY_LATER_EXIT_CODE`] (75, `EX_TEMPFAIL`) asks to run the task again
//!   later without using an attempt: stdout holds the delay in milliseconds (digits, one
//!   trailing `\n` allowed); anything else there fails the attempt;
//! - when the task is cancelled, the process group gets SIGTERM, and SIGKILL once
//!   `cancel_grace_ms` passed; the attempt ends in error `cancelled`;
//! - when the program exits, times out, overflows stdout, or the worker aborts the task, the
//!   whole process group is killed: nothing the task started outlives it;
//! - a task that declared `cpu` (millicores) or `memory` (MiB) gets `MAJORDODO_CPU_MILLIS` /
//!   `MAJORDODO_MEMORY_MIB` and is held to them as the executor's [`Enforcement`] allows: in a
//!   cgroup v2 of its own (`memory.max`, swap off, `cpu.max`), removed once the group ended;
//!   else its address space is limited to the memory (RLIMIT_AS) and cpu is not limited. A
//!   failure of such a task says which limit applied. A task without needs runs unlimited.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::executor::{Executors, Task, TaskExecutor, TaskFailure};
use crate::limits::{Declared, Enforcement, TaskCgroup};

/// Default `timeout_ms`: one hour, a bound for batch jobs that should never be reached by a
/// healthy task, while a hung one does not hold its slot forever.
pub const DEFAULT_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// Default `max_stdout_bytes`: 1 MiB, well inside the default frame size so a result always
/// fits a finish report.
pub const DEFAULT_MAX_STDOUT_BYTES: usize = 1024 * 1024;

/// Default `stderr_tail_bytes`: 4 KiB, enough for the last lines of an error or a stack trace.
pub const DEFAULT_STDERR_TAIL_BYTES: usize = 4096;

/// Exit status by which a program asks to run again later (`EX_TEMPFAIL` of `sysexits.h`).
pub const RETRY_LATER_EXIT_CODE: i32 = 75;

/// Default `cancel_grace_ms`: 5 s between SIGTERM and SIGKILL of a cancelled task's group,
/// inside the worker's default `cancel_grace` of 10 s.
pub const DEFAULT_CANCEL_GRACE_MS: u64 = 5_000;

/// Size of each read from the program's pipes.
const READ_CHUNK: usize = 8192;

/// How long, once the program's group is dead, stdin and stderr may take to close. Only a
/// process that left the group (a daemon) can keep them open; the task does not wait for it.
const PIPE_DRAIN_GRACE: Duration = Duration::from_millis(500);

/// How one task type runs as a program; read from the worker's TOML file.
///
/// ```toml
/// argv = ["/usr/local/bin/render", "--fast"]   # required; no shell
/// env = { RENDER_CACHE = "/var/cache/render" } # default: none added
/// working_dir = "/srv/render"                  # default: the worker's
/// timeout_ms = 600000                          # default: 3600000 (one hour)
/// max_stdout_bytes = 65536                     # default: 1048576
/// stderr_tail_bytes = 2048                     # default: 4096
/// cancel_grace_ms = 2000                       # default: 5000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExecutorConfig {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Variables added to the worker's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the program.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Milliseconds before the program's process group is killed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most bytes of stdout accepted as the result.
    #[serde(default = "default_max_stdout_bytes")]
    pub max_stdout_bytes: usize,
    /// Bytes of the end of stderr quoted in error texts.
    #[serde(default = "default_stderr_tail_bytes")]
    pub stderr_tail_bytes: usize,
    /// Milliseconds between SIGTERM and SIGKILL of a cancelled task's process group.
    #[serde(default = "default_cancel_grace_ms")]
    pub cancel_grace_ms: u64,
}

fn default_cancel_grace_ms() -> u64 {
    DEFAULT_CANCEL_GRACE_MS
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_max_stdout_bytes() -> usize {
    DEFAULT_MAX_STDOUT_BYTES
}

fn default_stderr_tail_bytes() -> usize {
    DEFAULT_STDERR_TAIL_BYTES
}

impl ProcessExecutorConfig {
    /// A config for `argv` with every default.
    pub fn new(argv: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ProcessExecutorConfig {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            working_dir: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_stdout_bytes: DEFAULT_MAX_STDOUT_BYTES,
            stderr_tail_bytes: DEFAULT_STDERR_TAIL_BYTES,
            cancel_grace_ms: DEFAULT_CANCEL_GRACE_MS,
        }
    }
}

/// A process executor config that cannot work; fix the configuration. Not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid process executor config: {0}")]
pub struct ProcessConfigError(pub &'static str);

/// Runs tasks as programs; see the module docs for the contract.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    config: Arc<ProcessExecutorConfig>,
    enforcement: Arc<Enforcement>,
}

impl ProcessExecutor {
    /// Checks `config`.
    ///
    /// # Errors
    /// [`ProcessConfigError`] for an empty `argv` or a zero timeout or stdout limit.
    pub fn new(config: ProcessExecutorConfig) -> Result<Self, ProcessConfigError> {
        if config.argv.first().is_none_or(String::is_empty) {
            return Err(ProcessConfigError("argv must name a program"));
        }
        if config.timeout_ms == 0 {
            return Err(ProcessConfigError("timeout_ms must be positive"));
        }
        if config.max_stdout_bytes == 0 {
            return Err(ProcessConfigError("max_stdout_bytes must be positive"));
        }
        Ok(ProcessExecutor {
            config: Arc::new(config),
            enforcement: Enforcement::auto(),
        })
    }

    /// Enforces declared cpu and memory with `enforcement` instead of what
    /// [`Enforcement::auto`] found.
    pub fn with_enforcement(mut self, enforcement: Arc<Enforcement>) -> Self {
        self.enforcement = enforcement;
        self
    }

    /// How declared cpu and memory are enforced.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }
}

/// A registry with one [`ProcessExecutor`] per task type.
///
/// # Errors
/// The first invalid config.
pub fn process_executors(
    configs: &BTreeMap<String, ProcessExecutorConfig>,
) -> Result<Executors, ProcessConfigError> {
    let mut executors = Executors::new();
    for (task_type, config) in configs {
        executors.register(
            task_type.clone(),
            Arc::new(ProcessExecutor::new(config.clone())?),
        );
    }
    Ok(executors)
}

impl TaskExecutor for ProcessExecutor {
    fn execute(&self, task: Task) -> BoxFuture<'static, Result<String, TaskFailure>> {
        Box::pin(run_process(
            self.config.clone(),
            self.enforcement.clone(),
            task,
        ))
    }
}

/// Kills a process group when dropped, unless disarmed; covers every way out of
/// [`run_process`], including the task being aborted.
struct GroupKiller {
    pgid: Option<u32>,
}

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_process_group(pgid);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to every process of group `pgid`.
///
/// Called right after the group's leader exits, too: the kernel does not reuse a pid while a
/// group of that id has members, so the signal reaches the task's leftovers; once the group is
/// empty it fails with ESRCH, which is ignored.
fn kill_process_group(pgid: u32) {
    signal_process_group(pgid, libc::SIGKILL);
}

#[allow(unsafe_code)]
fn signal_process_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// How the program's run ended.
enum Ran<T> {
    /// By itself (or by its timeout).
    Done(T),
    /// Cancelled: it got SIGTERM, then SIGKILL if it outlived the grace.
    Cancelled,
}

/// How long a finished attempt's cgroup may take to empty before it is left behind (logged).
const CGROUP_REMOVE_PATIENCE: Duration = Duration::from_secs(2);

async fn run_process(
    config: Arc<ProcessExecutorConfig>,
    enforcement: Arc<Enforcement>,
    task: Task,
) -> Result<String, TaskFailure> {
    let program = &config.argv[0];
    let mut command = Command::new(program);
    command
        .args(&config.argv[1..])
        .envs(&config.env)
        .env("MAJORDODO_TASK_ID", task.task_id.to_string())
        .env("MAJORDODO_TASK_TYPE", &task.task_type)
        .env("MAJORDODO_USER_ID", &task.user_id)
        .env("MAJORDODO_ATTEMPT", task.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &config.working_dir {
        command.current_dir(dir);
    }
    // A task with a code pool runs inside the unpacked pool.
    if let Some(dir) = &task.codepool_dir {
        command
            .current_dir(dir)
            .env("MAJORDODO_CODEPOOL_DIR", dir)
            .env("MAJORDODO_CODEPOOL", task.codepool.as_deref().unwrap_or(""));
    }
    let declared = Declared::of(&task.needs);
    if let Some(millis) = declared.cpu_millis {
        command.env("MAJORDODO_CPU_MILLIS", millis.to_string());
    }
    if let Some(mib) = declared.memory_mib {
        command.env("MAJORDODO_MEMORY_MIB", mib.to_string());
    }
    let mut cgroup = None;
    let mut limit_note = None;
    if declared != Declared::default() {
        match &*enforcement {
            Enforcement::CgroupV2 { root } => {
                let created = TaskCgroup::create(root, task.task_id, task.attempt, declared)
                    .map_err(|error| {
                        TaskFailure::new(format!(
                            "cannot make the task's cgroup under {}: {error}",
                            root.display()
                        ))
                    })?;
                if let Some(fd) = created.procs_fd() {
                    pre_exec(&mut command, move || crate::limits::join_cgroup(fd));
                }
                cgroup = Some(created);
            }
            Enforcement::Rlimits { .. } => {
                if let (Some(bytes), Some(mib)) = (declared.memory_bytes(), declared.memory_mib) {
                    pre_exec(&mut command, move || {
                        crate::limits::limit_address_space(bytes)
                    });
                    limit_note = Some(format!(
                        "the task declared memory = {mib} MiB, so its address space was limited to {mib} MiB (RLIMIT_AS)"
                    ));
                }
            }
        }
    }
    let spawned = command.spawn();
    if let Some(cgroup) = &mut cgroup {
        cgroup.close_procs();
    }
    let mut child =
        spawned.map_err(|error| TaskFailure::new(format!("start {program:?}: {error}")))?;
    let mut killer = GroupKiller { pgid: child.id() };
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());

    let data = task.data.into_bytes();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A program that exits without reading gives EPIPE here, which is not an error.
            let _ = stdin.write_all(&data).await;
            let _ = stdin.shutdown().await;
        }
    };
    let max_stdout = config.max_stdout_bytes;
    let timeout = Duration::from_millis(config.timeout_ms);
    let pgid = child.id();
    let cancel = task.cancel.clone();
    let cancel_grace = Duration::from_millis(config.cancel_grace_ms);
    let main = async {
        let run = async {
            let read_stdout = async {
                let stdout = read_limited(stdout, max_stdout).await;
                if let (Err(ReadFailure::Overflow), Some(pgid)) = (&stdout, pgid) {
                    kill_process_group(pgid);
                }
                stdout
            };
            tokio::join!(read_stdout, async {
                let status = child.wait().await;
                // The leader is gone: end whatever it left in its group, which may hold stdout.
                killer.kill();
                status
            })
        };
        let outcome = {
            let bounded = tokio::time::timeout(timeout, run);
            tokio::pin!(bounded);
            tokio::select! {
                outcome = &mut bounded => Ran::Done(outcome),
                () = cancel.cancelled() => {
                    if let Some(pgid) = pgid {
                        signal_process_group(pgid, libc::SIGTERM);
                    }
                    // Give it the grace to stop by itself; the group is killed below anyway.
                    let _ = tokio::time::timeout(cancel_grace, &mut bounded).await;
                    Ran::Cancelled
                }
            }
        };
        killer.kill();
        outcome
    };
    let mut tail = Vec::new();
    let outcome = {
        let rest = async {
            tokio::join!(feed, read_tail(stderr, config.stderr_tail_bytes, &mut tail));
        };
        tokio::pin!(main, rest);
        let mut rest_done = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut main => break outcome,
                () = &mut rest, if !rest_done => rest_done = true,
            }
        };
        if !rest_done {
            // The group is dead; only a process that left it can still hold stdin or stderr.
            let _ = tokio::time::timeout(PIPE_DRAIN_GRACE, &mut rest).await;
        }
        outcome
    };
    trim_to_tail(&mut tail, config.stderr_tail_bytes);
    if let Some(cgroup) = cgroup {
        if cgroup.oom_kills() > 0 {
            limit_note = Some(format!(
                "memory limit exceeded: the task declared memory = {} MiB and the kernel's OOM killer ended a process of its cgroup (memory.max)",
                declared.memory_mib.unwrap_or(0)
            ));
        }
        cgroup.remove(CGROUP_REMOVE_PATIENCE).await;
    }

    let failure = |cause: String| {
        let tail = String::from_utf8_lossy(&tail);
        let tail = tail.trim_end();
        let cause = match &limit_note {
            Some(note) => format!("{cause} ({note})"),
            None => cause,
        };
        if tail.is_empty() {
            TaskFailure::new(cause)
        } else {
            TaskFailure::new(format!("{cause}; stderr tail: {tail}"))
        }
    };
    let outcome = match outcome {
        Ran::Done(outcome) => outcome,
        Ran::Cancelled => {
            return Err(failure(
                "cancelled; process group stopped (SIGTERM, then SIGKILL after cancel_grace_ms)"
                    .to_owned(),
            ));
        }
    };
    let (stdout, status) = match outcome {
        Err(_elapsed) => {
            return Err(failure(format!(
                "timed out after {} ms; process group killed",
                config.timeout_ms
            )));
        }
        Ok(outcome) => outcome,
    };
    let status = status.map_err(|error| failure(format!("wait for {program:?}: {error}")))?;
    let stdout = match stdout {
        Ok(stdout) => stdout,
        Err(ReadFailure::Overflow) => {
            return Err(failure(format!(
                "stdout exceeded max_stdout_bytes ({max_stdout}); process group killed"
            )));
        }
        Err(ReadFailure::Io(error)) => return Err(failure(format!("read stdout: {error}"))),
    };
    if status.code() == Some(RETRY_LATER_EXIT_CODE) {
        let text = String::from_utf8_lossy(&stdout);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        return match text.parse::<u64>() {
            Ok(ms) => Err(TaskFailure::retry_after(
                Duration::from_millis(ms),
                format!("retry later asked (exit status {RETRY_LATER_EXIT_CODE}), in {ms} ms"),
            )),
            Err(_) => Err(failure(format!(
                "exited with status {RETRY_LATER_EXIT_CODE} (retry later) without a delay in milliseconds on stdout"
            ))),
        };
    }
    if !status.success() {
        return Err(failure(describe_exit(status)));
    }
    let mut result = String::from_utf8(stdout)
        .map_err(|error| failure(format!("stdout is not valid UTF-8: {error}")))?;
    if result.ends_with('\n') {
        result.pop();
    }
    Ok(result)
}

/// Runs `hook` in the child between fork and exec.
#[allow(unsafe_code)]
fn pre_exec(
    command: &mut Command,
    hook: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) {
    // SAFETY: every hook given here makes only async-signal-safe calls (write, getpid,
    // setrlimit) on values prepared before the fork, and allocates nothing.
    unsafe {
        command.pre_exec(hook);
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => format!("killed by signal {signal} ({})", signal_name(signal)),
        None => format!("ended abnormally: {status}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "other",
    }
}

enum ReadFailure {
    /// More than the limit; the process group was killed.
    Overflow,
    Io(std::io::Error),
}

/// Reads `pipe` to its end, failing as soon as it yields more than `max` bytes.
async fn read_limited(
    pipe: Option<impl AsyncRead + Unpin>,
    max: usize,
) -> Result<Vec<u8>, ReadFailure> {
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else {
        return Ok(out);
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = pipe.read(&mut chunk).await.map_err(ReadFailure::Io)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max {
            return Err(ReadFailure::Overflow);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Reads `pipe` to its end into `tail`, keeping at least the last `keep` bytes (trim with
/// [`trim_to_tail`] afterwards).
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize, tail: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        // Trim in bulk, so each byte is moved a bounded number of times.
        if tail.len() > 2 * keep + READ_CHUNK {
            trim_to_tail(tail, keep);
        }
    }
}

fn trim_to_tail(tail: &mut Vec<u8>, keep: usize) {
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
}
