//! `majordodo service-level`, `quota`, `priority` and `submit` with needs against a
//! `majordodo broker` process.

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

#[test]
fn quotas_weights_and_needs_from_the_command_line() {
    // Goal: an admin sets and removes quotas of a user and a group and a user's weight; a task
    // declares cpu, memory and a named amount; bad amounts and a missing tenant are refused with
    // a message naming the problem and a non-zero exit status.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut broker, url, _) = start_broker(d, "");
    let client = ["--url", url.as_str(), "--token-file", "admin.token"];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&client);
        run_in(d, &all)
    };
    assert_eq!(
        ok(&run(&[
            "quota", "--user", "alice", "--set", "tasks=4", "--set", "cpu=2000"
        ]))
        .trim(),
        "user alice now has quota tasks=4, cpu=2000"
    );
    assert_eq!(
        ok(&run(&["quota", "--group", "1", "--set", "db:orders=2"])).trim(),
        "group 1 now has quota db:orders=2"
    );
    assert_eq!(
        ok(&run(&[
            "service-level",
            "alice",
            "--group",
            "1",
            "--weight",
            "3"
        ]))
        .trim(),
        "user alice now has weight 3\nuser alice is now in group 1"
    );
    let submitted = ok(&run(&[
        "submit",
        "--type",
        "echo",
        "--user",
        "alice",
        "--cpu",
        "500",
        "--memory",
        "64",
        "--need",
        "db:orders=1",
    ]));
    assert!(submitted.contains("submitted task 1"), "{submitted}");
    let over = run(&[
        "submit", "--type", "echo", "--user", "alice", "--cpu", "2500",
    ]);
    assert_eq!(over.status.code(), Some(1), "{}", stderr(&over));
    assert!(
        stderr(&over).contains("quota of user alice"),
        "{}",
        stderr(&over)
    );
    let bad = run(&["quota", "--user", "alice", "--set", "cpu=-1"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("whole number"), "{}", stderr(&bad));
    let nobody = run(&["quota", "--set", "cpu=1"]);
    assert_eq!(nobody.status.code(), Some(2), "{}", stderr(&nobody));
    assert_eq!(
        ok(&run(&["quota", "--user", "alice", "--reset"])).trim(),
        "user alice has no quota now"
    );
    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}
