//! `majordodo log repair` end to end: a standalone refuses a log with a damaged acknowledged
//! record and names the command; the command shows what a cut loses, changes nothing without
//! the confirming LSN, cuts with it, and the standalone boots again.

mod common;

use common::*;

#[test]
fn a_damaged_log_is_refused_then_repaired_by_the_command_it_names() {
    // Goal: see the module documentation.
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_standalone_without_worker(dir.path(), &[]);
    let url = server.value_of("HTTP API:");
    for i in 0..5 {
        let data = format!("t{i}");
        let out = run_in(
            dir.path(),
            &["submit", "--url", &url, "--type", "echo", "--data", &data],
        );
        ok(&out);
    }
    let (status, _) = server.terminate();
    assert!(status.success());

    // Damage the first record of the log: acknowledged, with later writes after it.
    let log_dir = dir.path().join("majordodo-data/log");
    let mut segments: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let segment = &segments[0];
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[32 + 24 + 2] ^= 0x40;
    std::fs::write(segment, &bytes).unwrap();

    let mut cmd = majordodo();
    cmd.current_dir(dir.path()).args([
        "standalone",
        "--http-port",
        "0",
        "--worker-port",
        "0",
        "--no-worker",
    ]);
    let out = run(cmd);
    assert!(!out.status.success());
    let err = stderr(&out);
    let named = format!("majordodo log repair --dir {}", log_dir.display());
    assert!(err.contains(&named), "{err}");

    let dir_arg = log_dir.display().to_string();
    let report = run_in(dir.path(), &["log", "repair", "--dir", &dir_arg]);
    assert_eq!(report.status.code(), Some(1), "{}", stderr(&report));
    let text = stdout(&report);
    let lsn = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("first lost lsn:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no first lost lsn in {text}"));
    assert!(text.contains(&format!("--cut-at {lsn}")), "{text}");
    assert_eq!(
        std::fs::read(segment).unwrap(),
        bytes,
        "a report changes nothing"
    );

    let wrong = run_in(
        dir.path(),
        &["log", "repair", "--dir", &dir_arg, "--cut-at", "999"],
    );
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));

    let cut = run_in(
        dir.path(),
        &["log", "repair", "--dir", &dir_arg, "--cut-at", &lsn],
    );
    assert!(cut.status.success(), "{}", stderr(&cut));
    assert!(stdout(&cut).contains("the log was cut"));

    let mut server = start_standalone_without_worker(dir.path(), &[]);
    let _ = server.value_of("HTTP API:");
    let (status, _) = server.terminate();
    assert!(status.success());
}
