//! Usage and configuration errors: exit status 2, one `error:` line naming what to fix, and no
//! server started.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A broker file that is valid but for `extra` (appended to `[workers]`, after the secret).
fn broker_file(workers_extra: &str, with_secret: bool) -> String {
    let secret = if with_secret {
        "auth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\n"
    } else {
        "auth = \"credentials-or-shared-secret\"\n"
    };
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[[http.users]]\nname = \"admin\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n[workers]\nlisten = \"127.0.0.1:0\"\n{secret}{workers_extra}\n",
        "0".repeat(64)
    )
}

fn assert_usage_error(out: &std::process::Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(stdout(out).is_empty(), "nothing may start: {}", stdout(out));
}

#[test]
fn bad_broker_files_exit_2_naming_the_file_and_the_key() {
    // Goal: unknown key, wrong type, missing secret and invalid duration each stop the broker
    // before it binds anything, naming the key (and the file).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        (
            broker_file("max_conections = 5", true),
            "`workers.max_conections`",
        ),
        (
            broker_file("max_connections = \"lots\"", true),
            "`workers.max_connections`",
        ),
        (broker_file("", false), "`workers.shared_secret`"),
        (
            broker_file("auth = \"shared\"", false)
                .replace("auth = \"credentials-or-shared-secret\"\n", ""),
            "`workers.auth`",
        ),
        (
            broker_file("keepalive_interval = \"10x\"", true),
            "`workers.keepalive_interval`",
        ),
        (
            broker_file("", true).replace(
                "[[http.users]]",
                "metrics_access = \"public\"\n[[http.users]]",
            ),
            "`http.metrics_access`",
        ),
        (
            broker_file("", true).replace("[[http.users]]", "metrics_top_n = 0\n[[http.users]]"),
            "`http.metrics_top_n`",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = write(d, &format!("broker{i}.toml"), text);
        let out = run_in(d, &["broker", "--config", &path]);
        assert_usage_error(&out, &[key, &format!("broker{i}.toml")]);
    }
    assert!(
        !d.join("majordodo-data").exists(),
        "no data directory may be created"
    );
}

#[test]
fn bad_worker_files_exit_2_naming_the_file_and_the_key() {
    // Goal: the same for the worker's file, executors included.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok_part = "shared_secret = \"s\"\nbuiltin_executors = [\"echo\"]\n";
    let cases = [
        (format!("{ok_part}brokr = \"x:1\""), "`brokr`"),
        (format!("{ok_part}max_threads = \"ten\""), "`max_threads`"),
        (
            "builtin_executors = [\"echo\"]".to_owned(),
            "`credential_file`",
        ),
        (
            format!("{ok_part}credential_file = \"/nonexistent.credential\""),
            "`credential_file`",
        ),
        (
            format!("{ok_part}[connection]\nack_timeout = \"5 fortnights\""),
            "`connection.ack_timeout`",
        ),
        (
            format!("{ok_part}[executors.x]\nargv = \"sh\""),
            "`executors.x.argv`",
        ),
        (
            format!("{ok_part}zk = \"h:2181\"\nzk_path = \"rel\""),
            "`zk_path`",
        ),
        (
            format!("{ok_part}[capacity]\nmemory = -1"),
            "`capacity.memory`",
        ),
        (format!("{ok_part}[capacity]\ncpu = 2.5"), "`capacity.cpu`"),
        (
            format!("{ok_part}[process]\ncgroup_root = \"/nonexistent-cgroup\""),
            "`process.cgroup_root`",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = write(d, &format!("worker{i}.toml"), text);
        let out = run_in(d, &["worker", "--config", &path]);
        assert_usage_error(&out, &[key, &format!("worker{i}.toml")]);
    }
    // The standalone's --worker-config is checked the same way, before anything is created.
    let path = write(d, "sa.toml", "[executors.x]\nargv = []\n");
    let out = run_in(
        d,
        &[
            "standalone",
            "--http-port",
            "0",
            "--worker-port",
            "0",
            "--worker-config",
            &path,
        ],
    );
    assert_usage_error(&out, &["`executors.x`"]);
}

#[test]
fn bad_command_line_input_exits_2_with_a_clear_message() {
    // Goal: bad flags and bad values are refused before any request, with status 2.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Credentials and an address where nothing listens: nothing may be sent anyway.
    let client = "--token mdt_x --url http://127.0.0.1:9/majordodo";
    let cases: [(String, &str); 12] = [
        (format!("submit --data x {client}"), "--type is required"),
        (
            format!("submit --type t --deadline tomorrow {client}"),
            "invalid time",
        ),
        (
            format!("submit --type t --delay 5 {client}"),
            "missing unit",
        ),
        (
            format!("submit --type t --max-attempts=-1 {client}"),
            "--max-attempts",
        ),
        (
            format!("submit --jsonl missing.jsonl {client}"),
            "missing.jsonl",
        ),
        (
            format!("submit --type t --max-attempts 5000 {client}"),
            "maxattempts",
        ),
        (format!("tasks --status sleeping {client}"), "sleeping"),
        (format!("task not-a-number {client}"), "not-a-number"),
        (
            "submit --type t --token mdt_x --url ftp://x".to_owned(),
            "only http://",
        ),
        (
            "status --token mdt_x --zk 127.0.0.1:9 --zk-path relative".to_owned(),
            "--zk-path",
        ),
        (format!("status --zk 127.0.0.1:9 {client}"), "not both"),
        (format!("status --retry-for soon {client}"), "--retry-for"),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = run_in(d, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
    let out = run_in(d, &["standalone", "--http-port", "70000"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run_in(d, &["--log-level", "loud=[", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--log-level"), "{}", stderr(&out));
}

#[test]
fn help_version_and_default_configs_exit_0() {
    // Goal: help, version and the printed default files succeed and say what they should.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let help = ok(&run_in(d, &["--help"]));
    for command in [
        "standalone",
        "broker",
        "worker",
        "submit",
        "task",
        "tasks",
        "status",
        "workers",
    ] {
        assert!(help.contains(command), "{command} missing from --help");
    }
    assert!(ok(&run_in(d, &["--version"])).starts_with("majordodo "));
    assert!(ok(&run_in(d, &["submit", "--help"])).contains("--jsonl"));
    assert!(ok(&run_in(d, &["broker", "--print-default-config"])).contains("[workers]"));
    assert!(ok(&run_in(d, &["worker", "--print-default-config"])).contains("[connection]"));
}
