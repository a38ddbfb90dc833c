//! `majordodo codepool` against a standalone: create from a file, show, list, the refusals a user
//! sees (duplicate id, not an archive, unknown pool) with a non-zero exit, delete.

mod common;

use common::*;
use majordodo_testkit::archives::{executable, zip};

#[test]
fn codepool_commands_create_show_list_and_delete_with_clear_refusals() {
    // Goal: the CLI creates a pool from an archive file, shows and lists it, refuses a second
    // create of the id and a file that is no archive (usage error, status 2), deletes it, and
    // says so when the pool is unknown.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = majordodo();
    cmd.current_dir(dir.path())
        .args(["standalone", "--http-port", "0", "--worker-port", "0"]);
    let mut server = Server::start(cmd);
    let url = server.value_of("HTTP API:");
    let archive = dir.path().join("pool.zip");
    std::fs::write(
        &archive,
        zip(&[executable("run.sh", b"#!/bin/sh\necho hi\n")]),
    )
    .unwrap();
    let archive = archive.to_str().unwrap();
    let c = ["--url", url.as_str()];
    let create = |id: &str, file: &str| {
        let mut args = vec![
            "codepool",
            "create",
            "--id",
            id,
            "--archive",
            file,
            "--ttl",
            "1h",
        ];
        args.extend(c);
        run_in(dir.path(), &args)
    };
    let out = ok(&create("tools", archive));
    assert!(out.contains("code pool tools created"), "{out}");
    let shown = ok(&run_in(
        dir.path(),
        &["codepool", "show", "--id", "tools", "--json", "--url", &url],
    ));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["codePoolId"], "tools");
    assert_eq!(v["ttl"], 3_600_000);
    let listed = ok(&run_in(dir.path(), &["codepool", "list", "--url", &url]));
    assert!(listed.starts_with("tools "), "{listed}");

    let again = create("tools", archive);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let text = write_file(dir.path(), "not-an-archive.txt", "hello");
    let bad = create("other", &text);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("not a zip or tar.gz"),
        "{}",
        stderr(&bad)
    );

    ok(&run_in(
        dir.path(),
        &["codepool", "delete", "--id", "tools", "--url", &url],
    ));
    let gone = run_in(
        dir.path(),
        &["codepool", "delete", "--id", "tools", "--url", &url],
    );
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("does not exist"),
        "{}",
        stderr(&gone)
    );
    server.terminate();
}
