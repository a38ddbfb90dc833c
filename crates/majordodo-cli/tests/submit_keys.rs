//! `majordodo submit` with idempotency keys against a `majordodo broker` process: the same key
//! answers the task the first submission created, from a flag or from a JSON Lines field.

mod common;

use common::*;

#[test]
fn submitting_again_with_the_same_idempotency_key_answers_the_first_task() {
    // Goal: `--idempotency-key` and a line's `idempotencyKey` name one task: a second run with
    // the same key prints the first task's id and creates nothing; without a key, every run
    // creates a task (the client's fresh keys differ).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut broker, url, _) = start_broker(d, "");
    let client = ["--url", url.as_str(), "--token-file", "admin.token"];
    let submit = |extra: &[&str]| {
        let mut args = vec!["submit", "--type", "echo", "--data", "x"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&client);
        ok(&run_in(d, &args)).trim().to_owned()
    };
    assert_eq!(
        submit(&["--idempotency-key", "order-1"]),
        "submitted task 1"
    );
    assert_eq!(
        submit(&["--idempotency-key", "order-1"]),
        "submitted task 1"
    );
    assert_eq!(submit(&[]), "submitted task 2");
    assert_eq!(submit(&[]), "submitted task 3");

    let lines = write_file(
        d,
        "tasks.jsonl",
        "{\"tasktype\":\"echo\",\"idempotencyKey\":\"order-1\"}\n\
         {\"tasktype\":\"echo\",\"idempotencyKey\":\"order-2\"}\n\
         {\"tasktype\":\"echo\",\"idempotencyKey\":\"order-2\"}\n",
    );
    let mut args = vec!["submit", "--jsonl", lines.as_str(), "--json"];
    args.extend_from_slice(&client);
    let summary: serde_json::Value = serde_json::from_str(&ok(&run_in(d, &args))).unwrap();
    let ids: Vec<u64> = summary["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["taskId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 4, 4]);

    let mut status = vec!["tasks", "--json"];
    status.extend_from_slice(&client);
    let tasks: serde_json::Value = serde_json::from_str(&ok(&run_in(d, &status))).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 4, "{tasks}");
    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}
