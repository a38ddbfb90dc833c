//! `majordodo service-level` and `majordodo priority` against a `majordodo broker` process.

mod common;

use common::*;

#[test]
fn service_levels_and_priorities_change_from_the_command_line() {
    // Goal: an admin moves a user to a configured group with resources and changes a waiting
    // task's priority; an unknown group, an unknown task and a missing group are refused with
    // a message naming the problem and a non-zero exit status.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut broker, url, _) = start_broker(d, "\n[scheduling]\ngroups = [1, 2]\n");
    let client = ["--url", url.as_str(), "--token-file", "admin.token"];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&client);
        run_in(d, &all)
    };
    assert_eq!(
        ok(&run(&[
            "service-level",
            "alice",
            "--group",
            "2",
            "--resource",
            "db"
        ]))
        .trim(),
        "user alice is now in group 2, using db"
    );
    let refused = run(&["service-level", "alice", "--group", "9"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("unknown group 9"),
        "{}",
        stderr(&refused)
    );
    let usage = run(&["service-level", "alice"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));

    assert_eq!(
        ok(&run(&["submit", "--type", "echo", "--user", "alice"])).trim(),
        "submitted task 1"
    );
    assert_eq!(
        ok(&run(&["priority", "1", "-3"])).trim(),
        "task 1 now has priority -3"
    );
    let unknown = run(&["priority", "99", "1"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("task 99 does not exist"),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(
        ok(&run(&["service-level", "alice", "--reset"])).trim(),
        "user alice is back to the default service level"
    );
    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}
