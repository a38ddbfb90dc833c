//! The process executor against real programs (`sh`, `cat`): results, stdin, environment,
//! failures with their stderr tail, timeouts and aborts that kill the whole process group.

use std::path::Path;
use std::time::Duration;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use majordodo_worker::{
    Enforcement, ProcessExecutor, ProcessExecutorConfig, Task, TaskExecutor, TaskFailure,
};

/// Bound on every wait in these tests, so a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

fn task(data: &str) -> Task {
    Task {
        task_id: 42,
        attempt: 3,
        task_type: "shell".into(),
        user_id: "alice".into(),
        data: data.into(),
        codepool: None,
        mode: None,
        resources: Arc::from(Vec::new()),
        needs: Default::default(),
        codepool_dir: None,
        cancel: Default::default(),
    }
}

fn sh(script: &str) -> ProcessExecutorConfig {
    ProcessExecutorConfig::new(["sh", "-c", script])
}

async fn execute(config: ProcessExecutorConfig, data: &str) -> Result<String, TaskFailure> {
    let executor = ProcessExecutor::new(config).expect("valid config");
    tokio::time::timeout(WAIT, executor.execute(task(data)))
        .await
        .expect("the executor returns in time")
}

/// Whether process `pid` is gone (or a zombie, which runs nothing).
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

/// Polls until `pid` is gone, for at most [`WAIT`].
async fn wait_until_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !process_is_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the pid a script wrote to `path`, polling for at most [`WAIT`].
async fn read_pid(path: &Path) -> u32 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let written = std::fs::read_to_string(path).ok();
        if let Some(pid) = written.and_then(|text| text.trim().parse().ok()) {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pid written to {path:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn success_returns_stdout_without_one_trailing_newline() {
    // Goal: exit 0 finishes with stdout; exactly one trailing newline is removed.
    assert_eq!(
        execute(sh("printf 'hello\\n\\n'"), "").await,
        Ok("hello\n".into())
    );
    assert_eq!(
        execute(sh("printf 'no newline'"), "").await,
        Ok("no newline".into())
    );
}

#[tokio::test]
async fn data_arrives_on_stdin() {
    // Goal: the task's data is the program's stdin, and stdin is closed after it.
    let data = "line one\nline two with ünïcode";
    assert_eq!(
        execute(ProcessExecutorConfig::new(["cat"]), data).await,
        Ok(data.into())
    );
}

#[tokio::test]
async fn task_identity_and_configured_env_are_in_the_environment() {
    // Goal: MAJORDODO_* variables carry the task's identity; `env` entries are added.
    let mut config = sh(
        "echo \"$MAJORDODO_TASK_ID $MAJORDODO_TASK_TYPE $MAJORDODO_USER_ID $MAJORDODO_ATTEMPT $EXTRA\"",
    );
    config.env.insert("EXTRA".into(), "x=1".into());
    assert_eq!(execute(config, "").await, Ok("42 shell alice 3 x=1".into()));
}

#[tokio::test]
async fn working_dir_is_applied() {
    // Goal: the program starts in the configured directory.
    let dir = tempfile::tempdir().unwrap();
    let mut config = sh("pwd");
    config.working_dir = Some(dir.path().to_owned());
    let expected = dir.path().canonicalize().unwrap();
    assert_eq!(
        execute(config, "").await,
        Ok(expected.display().to_string())
    );
}

#[tokio::test]
async fn non_zero_exit_fails_with_status_and_stderr_tail() {
    // Goal: a non-zero exit is an error naming the status and quoting the end of stderr only.
    let mut config = sh("head -c 20000 /dev/zero | tr '\\0' 'a' >&2; echo ' the end' >&2; exit 3");
    config.stderr_tail_bytes = 64;
    let failure = execute(config, "").await.unwrap_err();
    let text = failure.message();
    assert!(
        text.starts_with("exited with status 3; stderr tail: "),
        "{text}"
    );
    assert!(text.ends_with("aaa the end"), "{text}");
    assert!(
        text.len() < 64 + 60,
        "tail not bounded: {} bytes",
        text.len()
    );
}

#[tokio::test]
async fn crash_by_signal_is_reported_with_the_signal() {
    // Goal: death by a signal is an error naming the signal.
    let failure = execute(sh("echo dying >&2; kill -SEGV $$"), "")
        .await
        .unwrap_err();
    assert_eq!(
        failure.message(),
        "killed by signal 11 (SIGSEGV); stderr tail: dying"
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    // Goal: past the timeout the task fails and a grandchild the program started is killed too.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let mut config = sh(&format!(
        "sleep 300 & echo $! > {}; wait",
        pidfile.display()
    ));
    config.timeout_ms = 300;
    let failure = execute(config, "").await.unwrap_err();
    assert!(
        failure.message().starts_with("timed out after 300 ms"),
        "{failure}"
    );
    wait_until_gone(read_pid(&pidfile).await).await;
}

#[tokio::test]
async fn leftover_background_process_is_killed_when_the_program_exits() {
    // Goal: a process left running in the group does not outlive the task, nor hold it up.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("leftover.pid");
    let config = sh(&format!(
        "sleep 300 & echo $! > {}; echo started",
        pidfile.display()
    ));
    assert_eq!(execute(config, "").await, Ok("started".into()));
    wait_until_gone(read_pid(&pidfile).await).await;
}

#[tokio::test]
async fn aborted_task_kills_its_process_group() {
    // Goal: dropping the execution (worker killed or out of grace) kills the program's group.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let config = sh(&format!(
        "sleep 300 & echo $! > {}; wait",
        pidfile.display()
    ));
    let executor = ProcessExecutor::new(config).unwrap();
    let running = tokio::spawn(executor.execute(task("")));
    let pid = read_pid(&pidfile).await;
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    wait_until_gone(pid).await;
}

#[tokio::test]
async fn oversized_stdout_fails_and_stops_the_program() {
    // Goal: stdout beyond max_stdout_bytes is an error, and the endless writer is killed
    // (the error is the overflow, not the much later timeout).
    let mut config = ProcessExecutorConfig::new(["yes"]);
    config.max_stdout_bytes = 1000;
    config.timeout_ms = 600_000;
    let failure = execute(config, "").await.unwrap_err();
    assert!(
        failure
            .message()
            .starts_with("stdout exceeded max_stdout_bytes (1000)"),
        "{failure}"
    );
}

#[tokio::test]
async fn program_that_ignores_stdin_is_fine() {
    // Goal: data larger than a pipe buffer, never read, does not block or fail the task.
    let data = "x".repeat(1024 * 1024);
    assert_eq!(execute(sh("echo done"), &data).await, Ok("done".into()));
}

#[tokio::test]
async fn missing_program_fails_to_start() {
    // Goal: a program that cannot start is a task error naming it.
    let failure = execute(ProcessExecutorConfig::new(["/nonexistent/program"]), "")
        .await
        .unwrap_err();
    assert!(
        failure
            .message()
            .starts_with("start \"/nonexistent/program\""),
        "{failure}"
    );
}

#[tokio::test]
async fn non_utf8_stdout_fails() {
    // Goal: the result must be text.
    let failure = execute(sh("printf '\\377\\376'"), "").await.unwrap_err();
    assert!(
        failure.message().starts_with("stdout is not valid UTF-8"),
        "{failure}"
    );
}

#[test]
fn config_reads_from_toml_with_defaults_and_refuses_unknown_keys() {
    // Goal: the documented defaults apply; a misspelt key is an error, not ignored.
    let config: ProcessExecutorConfig = toml::from_str(r#"argv = ["cat"]"#).unwrap();
    assert_eq!(config, ProcessExecutorConfig::new(["cat"]));
    assert_eq!(config.timeout_ms, 3_600_000);
    assert_eq!(config.max_stdout_bytes, 1024 * 1024);
    assert_eq!(config.stderr_tail_bytes, 4096);
    let full: ProcessExecutorConfig = toml::from_str(
        r#"
        argv = ["render", "--fast"]
        env = { A = "1" }
        working_dir = "/srv"
        timeout_ms = 5
        max_stdout_bytes = 6
        stderr_tail_bytes = 7
        "#,
    )
    .unwrap();
    assert_eq!(full.env["A"], "1");
    assert_eq!(
        (
            full.timeout_ms,
            full.max_stdout_bytes,
            full.stderr_tail_bytes
        ),
        (5, 6, 7)
    );
    assert!(
        toml::from_str::<ProcessExecutorConfig>(
            r#"argv = ["cat"]
timeout = 5"#
        )
        .is_err()
    );
    assert!(ProcessExecutor::new(ProcessExecutorConfig::new(Vec::<String>::new())).is_err());
}

#[tokio::test]
async fn cancelled_program_gets_sigterm_and_its_group_is_killed_after_the_grace() {
    // Goal: a cancel sends SIGTERM to the program's group: a program that exits on it ends at
    // once; one that ignores it is killed (with what it started) after cancel_grace_ms; both
    // attempts end in a failure saying `cancelled`.
    for (script, grace_ms) in [
        (
            "trap 'exit 3' TERM; echo $$; while :; do sleep 0.05; done",
            60_000,
        ),
        ("trap '' TERM; echo $$; sleep 30 & wait; sleep 30", 300),
    ] {
        let executor = ProcessExecutor::new(ProcessExecutorConfig {
            cancel_grace_ms: grace_ms,
            ..sh(script)
        })
        .expect("valid config");
        let t = task("");
        let cancel = t.cancel.clone();
        let run = tokio::spawn(executor.execute(t));
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
        let outcome = tokio::time::timeout(WAIT, run)
            .await
            .expect("the cancelled program ends in time")
            .unwrap();
        let failure = outcome.unwrap_err();
        assert!(failure.message().contains("cancelled"), "{failure}");
        assert_eq!(failure.retry_delay(), None);
    }
}

#[tokio::test]
async fn exit_status_75_asks_to_retry_later_after_the_delay_on_stdout() {
    // Goal: the documented convention: exit 75 with a number of milliseconds on stdout is a
    // "retry later" with that delay; exit 75 without one is an ordinary failure saying so.
    let failure = execute(sh("echo 1500; exit 75"), "").await.unwrap_err();
    assert_eq!(failure.retry_delay(), Some(Duration::from_millis(1500)));
    let failure = execute(sh("echo soon; exit 75"), "").await.unwrap_err();
    assert_eq!(failure.retry_delay(), None);
    assert!(failure.message().contains("without a delay"), "{failure}");
}

/// A task declaring `needs`.
fn task_needing(data: &str, needs: &[(&str, u64)]) -> Task {
    Task {
        needs: Arc::new(
            needs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), *value))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..task(data)
    }
}

async fn execute_with(executor: &ProcessExecutor, task: Task) -> Result<String, TaskFailure> {
    tokio::time::timeout(WAIT, executor.execute(task))
        .await
        .expect("the executor returns in time")
}

/// Reads 256 MiB into one buffer (dd allocates its block size at once and fills it).
const ALLOCATE_256_MIB: &str =
    "dd if=/dev/zero of=/dev/null bs=256M count=1 2>&1 && echo allocated";

fn rlimits() -> Arc<Enforcement> {
    Arc::new(Enforcement::Rlimits {
        why_no_cgroup: "chosen by the test".into(),
    })
}

#[tokio::test]
async fn declared_memory_limits_the_address_space_without_a_cgroup() {
    // Goal: with rlimits, a task declaring 64 MiB that allocates 256 MiB fails and its error
    // says which limit applied; the same program without the declaration succeeds.
    let executor = ProcessExecutor::new(sh(ALLOCATE_256_MIB))
        .unwrap()
        .with_enforcement(rlimits());
    let limited = execute_with(&executor, task_needing("", &[("memory", 64)]))
        .await
        .unwrap_err();
    let message = limited.message();
    assert!(message.contains("exited with status"), "{message}");
    assert!(
        message.contains("address space was limited to 64 MiB (RLIMIT_AS)"),
        "{message}"
    );
    let free = execute_with(&executor, task("")).await.unwrap();
    assert!(free.ends_with("allocated"), "{free}");
    // Enough declared memory lets it run.
    let enough = execute_with(&executor, task_needing("", &[("memory", 1024)])).await;
    assert!(enough.unwrap().ends_with("allocated"));
}

#[tokio::test]
async fn declared_cpu_and_memory_are_in_the_environment() {
    // Goal: MAJORDODO_CPU_MILLIS and MAJORDODO_MEMORY_MIB carry the declaration, and are unset
    // for a task that declared nothing; named amounts set no variable.
    let executor = ProcessExecutor::new(sh(
        "echo ${MAJORDODO_CPU_MILLIS-none} ${MAJORDODO_MEMORY_MIB-none}",
    ))
    .unwrap()
    .with_enforcement(rlimits());
    let declared = task_needing("", &[("cpu", 1500), ("memory", 512), ("db:orders", 1)]);
    assert_eq!(execute_with(&executor, declared).await.unwrap(), "1500 512");
    let cpu_only = task_needing("", &[("cpu", 250)]);
    assert_eq!(execute_with(&executor, cpu_only).await.unwrap(), "250 none");
    assert_eq!(
        execute_with(&executor, task("")).await.unwrap(),
        "none none"
    );
}

#[tokio::test]
async fn declared_cpu_alone_limits_nothing_without_a_cgroup() {
    // Goal: under rlimits a cpu declaration sets no limit at all (cpu cannot be enforced as a
    // rate there): a task that allocates 256 MiB runs, and its address space is unlimited.
    let executor = ProcessExecutor::new(sh(&format!("{ALLOCATE_256_MIB}; ulimit -v")))
        .unwrap()
        .with_enforcement(rlimits());
    let result = execute_with(&executor, task_needing("", &[("cpu", 100)]))
        .await
        .unwrap();
    assert!(result.ends_with("allocated\nunlimited"), "{result}");
}

/// A cgroup v2 directory to test with: `MAJORDODO_TEST_CGROUP_ROOT`, else this process's own
/// cgroup when it is delegated; `None` (and a note on stderr) when there is none.
fn test_cgroup() -> Option<(Arc<Enforcement>, PathBuf)> {
    let found = match std::env::var_os("MAJORDODO_TEST_CGROUP_ROOT") {
        Some(root) => Enforcement::cgroup_v2(Path::new(&root)).map_err(|e| {
            panic!("MAJORDODO_TEST_CGROUP_ROOT is set but unusable: {e}");
        }),
        None => Ok(Enforcement::detect()),
    };
    match found {
        Ok(Enforcement::CgroupV2 { root }) => {
            Some((Arc::new(Enforcement::CgroupV2 { root: root.clone() }), root))
        }
        Ok(other) => {
            eprintln!(
                "SKIPPED: no usable cgroup v2 here ({}); set MAJORDODO_TEST_CGROUP_ROOT to a \
                 delegated cgroup v2 directory to run this test",
                other.describe()
            );
            None
        }
        Err(never) => never,
    }
}

/// The cgroups this worker made under `root`.
fn task_cgroups(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let mine = format!("-{}-", std::process::id());
            (name.starts_with("majordodo-") && name.contains(&mine)).then_some(path)
        })
        .collect()
}

#[tokio::test]
async fn cgroup_v2_enforces_memory_and_cpu_and_is_removed_after_the_attempt() {
    // Goal: in a cgroup v2, the program runs inside its attempt's cgroup with memory.max and
    // cpu.max as declared; allocating beyond the memory fails with the OOM kill named; the
    // cgroup is gone after the attempt, also after a cancel.
    let Some((enforcement, root)) = test_cgroup() else {
        return;
    };
    let executor =
        ProcessExecutor::new(sh("cg=$(sed -n 's/^0:://p' /proc/self/cgroup); echo $cg; \
         cat /sys/fs/cgroup$cg/memory.max /sys/fs/cgroup$cg/cpu.max 2>/dev/null || \
         cat /sys/fs/cgroup/unified$cg/memory.max /sys/fs/cgroup/unified$cg/cpu.max"))
        .unwrap()
        .with_enforcement(enforcement.clone());
    let shown = execute_with(&executor, task_needing("", &[("cpu", 500), ("memory", 64)]))
        .await
        .unwrap();
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines[0].contains(&format!("majordodo-42-3-{}-", std::process::id())),
        "{shown}"
    );
    assert_eq!(lines[1..], ["67108864", "50000 100000"], "{shown}");
    assert!(
        task_cgroups(&root).is_empty(),
        "left behind: {:?}",
        task_cgroups(&root)
    );

    let hog = ProcessExecutor::new(sh(ALLOCATE_256_MIB))
        .unwrap()
        .with_enforcement(enforcement.clone());
    let failure = execute_with(&hog, task_needing("", &[("memory", 64)]))
        .await
        .unwrap_err();
    assert!(
        failure.message().contains("memory limit exceeded") && failure.message().contains("64 MiB"),
        "{}",
        failure.message()
    );
    assert!(
        execute_with(&hog, task(""))
            .await
            .unwrap()
            .ends_with("allocated")
    );

    let sleeper = ProcessExecutor::new(sh("sleep 30"))
        .unwrap()
        .with_enforcement(enforcement);
    let cancelled = task_needing("", &[("memory", 64)]);
    let cancel = cancelled.cancel.clone();
    let run = tokio::spawn(async move { execute_with(&sleeper, cancelled).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    assert!(
        run.await
            .unwrap()
            .unwrap_err()
            .message()
            .contains("cancelled")
    );
    assert!(task_cgroups(&root).is_empty(), "left behind after cancel");
}
