//! Real BookKeeper clusters: start-up and cleanup, single-bookie faults, and the Java tools
//! (official client) writing and reading through the cluster.

mod common;

use std::time::Duration;

use majordodo_testkit::tools::{self, BK_READ, BK_WRITE};
use majordodo_testkit::{BkCluster, BkClusterOptions};
use serde_json::Value;

/// Time allowed to one Java tool run (a JVM start plus a few hundred small entries).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Slack on top of a session timeout for ZooKeeper to notice and delete an ephemeral node.
const EXPIRY_SLACK: Duration = Duration::from_secs(10);

fn ok_json(output: &std::process::Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "tool failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    tools::json_lines(&output.stdout).expect("tool prints JSON lines")
}

fn field<'a>(line: &'a Value, key: &str) -> &'a Value {
    line.get(key)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
}

#[tokio::test]
async fn three_bookie_cluster_starts_registered_and_drop_cleans_up() {
    // Goal: start(3) returns with every bookie registered and accepting TCP on 127.0.0.1, and
    // dropping the cluster leaves no process and no directory.
    let cluster = BkCluster::start(3).await.expect("start cluster");
    println!(
        "3-bookie cluster started in {:?} (zookeeper {:?})",
        cluster.started_in(),
        cluster.zk().started_in()
    );
    assert_eq!(cluster.bookie_count(), 3);
    assert_eq!(cluster.ledgers_root(), "/ledgers");
    assert_eq!(
        cluster.metadata_service_uri(),
        format!("zk+hierarchical://{}/ledgers", cluster.zk_connect_string())
    );

    let mut expected: Vec<String> = (0..3).map(|i| cluster.bookie_id(i)).collect();
    expected.sort();
    assert_eq!(cluster.registered_bookies().await.expect("list"), expected);
    assert!(cluster.readonly_bookies().await.expect("list").is_empty());
    for i in 0..3 {
        let addr = cluster.bookie_addr(i);
        assert!(addr.ip().is_loopback());
        assert_eq!(cluster.bookie_id(i), addr.to_string());
        assert!(
            common::accepts_tcp(addr).await,
            "bookie {i} does not accept TCP"
        );
    }

    let mut pids: Vec<u32> = (0..3)
        .map(|i| cluster.bookie_pid(i).expect("running"))
        .collect();
    pids.push(cluster.zk().pid().expect("running"));
    // every server listens on loopback only
    for (i, pid) in pids.iter().enumerate() {
        let sockets = common::listening_sockets(*pid);
        println!("process {pid} listens on {sockets:?}");
        assert!(!sockets.is_empty(), "no listening socket found for {pid}");
        assert!(
            sockets.iter().all(common::is_loopback),
            "process {pid} listens beyond loopback: {sockets:?}"
        );
        let own_port = if i < 3 {
            cluster.bookie_addr(i).port()
        } else {
            cluster.zk().port()
        };
        assert!(sockets.iter().any(|s| s.port() == own_port));
    }
    let dirs = [cluster.dir().to_owned(), cluster.zk().dir().to_owned()];
    drop(cluster);
    for pid in pids {
        assert!(common::process_is_gone(pid), "process {pid} survived drop");
    }
    for dir in dirs {
        assert!(!dir.exists(), "directory {} survived drop", dir.display());
    }
}

#[tokio::test]
async fn killed_bookie_unregisters_and_restart_brings_it_back() {
    // Goal: kill_bookie ends the process at once, its registration disappears within the
    // session timeout, and restart_bookie brings it back on the same port, registered.
    let mut cluster = BkCluster::start(2).await.expect("start cluster");
    let zk_timeout = cluster.options().bookie_zk_timeout;
    let addr = cluster.bookie_addr(0);
    let old_pid = cluster.bookie_pid(0).expect("running");

    cluster.kill_bookie(0).await;
    assert!(cluster.bookie_pid(0).is_none());
    assert!(common::process_is_gone(old_pid));
    assert!(
        !common::accepts_tcp(addr).await,
        "killed bookie still accepts"
    );
    cluster
        .wait_bookie_registered(0, false, zk_timeout + EXPIRY_SLACK)
        .await
        .expect("registration of a killed bookie expires");
    assert_eq!(
        cluster.registered_bookies().await.expect("list"),
        vec![cluster.bookie_id(1)],
        "the other bookie stays registered"
    );

    cluster.restart_bookie(0).await.expect("restart bookie 0");
    assert_eq!(cluster.bookie_addr(0), addr, "same port after restart");
    let new_pid = cluster.bookie_pid(0).expect("running again");
    assert_ne!(new_pid, old_pid);
    assert!(common::accepts_tcp(addr).await);
    assert!(
        cluster
            .registered_bookies()
            .await
            .expect("list")
            .contains(&cluster.bookie_id(0))
    );
}

#[tokio::test]
async fn restarting_a_live_bookie_waits_for_its_new_registration() {
    // Goal: restart_bookie on a running bookie replaces the process and returns only once the
    // new process registered under a new ZooKeeper session (not on the old session's
    // lingering node).
    let mut cluster = BkCluster::start(1).await.expect("start cluster");
    let path = format!("/ledgers/available/{}", cluster.bookie_id(0));
    let old_owner = common::registration_owner(&cluster.zk_connect_string(), &path)
        .await
        .expect("registered after start");
    let old_pid = cluster.bookie_pid(0).expect("running");

    cluster.restart_bookie(0).await.expect("restart bookie 0");
    assert!(common::process_is_gone(old_pid));
    let new_pid = cluster.bookie_pid(0).expect("running again");
    assert_ne!(new_pid, old_pid);
    let new_owner = common::registration_owner(&cluster.zk_connect_string(), &path)
        .await
        .expect("registered after restart");
    assert_ne!(
        new_owner, old_owner,
        "registration still owned by the old session"
    );
    assert!(common::accepts_tcp(cluster.bookie_addr(0)).await);
}

#[tokio::test]
async fn paused_bookie_expires_and_registers_again_after_resume() {
    // Goal: a SIGSTOPped bookie keeps its port but loses its registration after the session
    // timeout; after SIGCONT it registers again, and a later restart still waits for the new
    // process's registration.
    let options = BkClusterOptions::new(1).bookie_zk_timeout(Duration::from_secs(2));
    let mut cluster = BkCluster::start_with(options).await.expect("start cluster");
    let pid = cluster.bookie_pid(0).expect("running");

    cluster.pause_bookie(0);
    cluster
        .wait_bookie_registered(0, false, Duration::from_secs(2) + EXPIRY_SLACK)
        .await
        .expect("a paused bookie's session expires");
    assert!(
        !common::process_is_gone(pid),
        "pausing does not end the process"
    );
    assert!(
        common::accepts_tcp(cluster.bookie_addr(0)).await,
        "the kernel still accepts connections for a paused bookie"
    );

    cluster.resume_bookie(0);
    cluster
        .wait_bookie_registered(0, true, Duration::from_secs(60))
        .await
        .expect("a resumed bookie registers again");
    assert_eq!(
        cluster.bookie_pid(0),
        Some(pid),
        "same process after resume"
    );

    // a restart now must wait for the new process's own registration, not accept the node the
    // resumed process made under its second session
    let path = format!("/ledgers/available/{}", cluster.bookie_id(0));
    let resumed_owner = common::registration_owner(&cluster.zk_connect_string(), &path)
        .await
        .expect("registered after resume");
    cluster.restart_bookie(0).await.expect("restart bookie 0");
    let restarted_owner = common::registration_owner(&cluster.zk_connect_string(), &path)
        .await
        .expect("registered after restart");
    assert_ne!(restarted_owner, resumed_owner);
}

#[tokio::test]
async fn java_tools_write_and_read_back_the_same_entries() {
    // Goal: BkWrite and BkRead (official Java client) round-trip entries through the cluster
    // byte for byte, including recovery-open of a ledger left open, and BookieShell sees the
    // bookies; proves tools, classpath and cluster work together.
    let options = BkClusterOptions::new(3).journal_sync(false);
    let cluster = BkCluster::start_with(options).await.expect("start cluster");

    // 1. a closed ledger with patterned payloads
    let written = ok_json(
        &cluster
            .run_java_tool(
                BK_WRITE,
                &[
                    "--count",
                    "25",
                    "--payload-pattern",
                    "entry-{i}",
                    "--password",
                    "pw",
                ],
                TOOL_TIMEOUT,
            )
            .await
            .expect("run BkWrite"),
    );
    let created = tools::events(&written, "created")
        .next()
        .expect("created line");
    let ledger_id = field(created, "ledger_id").as_i64().expect("ledger id");
    let ensemble = field(created, "ensemble").as_array().expect("ensemble");
    assert_eq!(ensemble.len(), 3);
    let entries: Vec<&Value> = tools::events(&written, "entry").collect();
    assert_eq!(entries.len(), 25);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(field(entry, "entry_id").as_u64(), Some(i as u64));
        let hex = field(entry, "hex").as_str().expect("hex");
        assert_eq!(
            tools::unhex(hex).expect("valid hex"),
            tools::pattern_payload(i as u64, "entry-{i}")
        );
    }
    let closed = tools::events(&written, "closed")
        .next()
        .expect("closed line");
    assert_eq!(field(closed, "last_entry_id").as_i64(), Some(24));

    let ledger = ledger_id.to_string();
    let read = ok_json(
        &cluster
            .run_java_tool(
                BK_READ,
                &["--ledger-id", &ledger, "--password", "pw"],
                TOOL_TIMEOUT,
            )
            .await
            .expect("run BkRead"),
    );
    let opened = tools::events(&read, "opened").next().expect("opened line");
    assert_eq!(field(opened, "closed").as_bool(), Some(true));
    assert_eq!(field(opened, "last_add_confirmed").as_i64(), Some(24));
    let read_entries: Vec<&Value> = tools::events(&read, "entry").collect();
    assert_eq!(read_entries.len(), entries.len());
    for (w, r) in entries.iter().zip(&read_entries) {
        assert_eq!(field(w, "entry_id"), field(r, "entry_id"));
        assert_eq!(field(w, "hex"), field(r, "hex"));
        assert_eq!(field(w, "crc32"), field(r, "crc32"));
    }

    // 2. a ledger left open with sized payloads, recovered (fenced and closed) by the reader
    let written = ok_json(
        &cluster
            .run_java_tool(
                BK_WRITE,
                &[
                    "--count",
                    "10",
                    "--entry-size",
                    "300",
                    "--leave-open",
                    "--digest",
                    "crc32",
                ],
                TOOL_TIMEOUT,
            )
            .await
            .expect("run BkWrite --leave-open"),
    );
    let left_open = tools::events(&written, "left_open")
        .next()
        .expect("left_open line");
    let ledger = field(left_open, "ledger_id")
        .as_i64()
        .expect("id")
        .to_string();
    let read = ok_json(
        &cluster
            .run_java_tool(
                BK_READ,
                &[
                    "--ledger-id",
                    &ledger,
                    "--recovery",
                    "--digest",
                    "crc32",
                    "--encoding",
                    "base64",
                ],
                TOOL_TIMEOUT,
            )
            .await
            .expect("run BkRead --recovery"),
    );
    let opened = tools::events(&read, "opened").next().expect("opened line");
    assert_eq!(
        field(opened, "closed").as_bool(),
        Some(true),
        "recovery closes the ledger"
    );
    assert_eq!(field(opened, "last_add_confirmed").as_i64(), Some(9));
    let read_entries: Vec<&Value> = tools::events(&read, "entry").collect();
    assert_eq!(read_entries.len(), 10);
    use base64::Engine as _;
    for (i, entry) in read_entries.iter().enumerate() {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(field(entry, "base64").as_str().expect("base64"))
            .expect("valid base64");
        assert_eq!(payload, tools::sized_payload(i as u64, 300));
    }

    // 3. BookKeeper's own shell, through the cluster's client configuration
    let shell = cluster
        .bookie_shell(&["listbookies", "-rw"], TOOL_TIMEOUT)
        .await
        .expect("run BookieShell");
    assert!(shell.status.success(), "BookieShell failed: {shell:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&shell.stdout),
        String::from_utf8_lossy(&shell.stderr)
    );
    for i in 0..3 {
        assert!(
            text.contains(&cluster.bookie_id(i)),
            "listbookies misses bookie {i}: {text}"
        );
    }
}

#[tokio::test]
async fn java_tool_reports_errors_as_json_and_exit_status() {
    // Goal: a wrong command line gives exit status 2 and an error event, and reading a missing
    // ledger fails with status 1, so Rust tests can tell failures apart.
    let cluster = BkCluster::start(1).await.expect("start cluster");
    let usage = cluster
        .run_java_tool(BK_READ, &["--no-such-option"], TOOL_TIMEOUT)
        .await
        .expect("run BkRead");
    assert_eq!(usage.status.code(), Some(2));
    let lines = tools::json_lines(&usage.stdout).expect("json");
    let error = tools::events(&lines, "error").next().expect("error line");
    assert_eq!(field(error, "kind").as_str(), Some("usage"));

    let missing = cluster
        .run_java_tool(BK_READ, &["--ledger-id", "987654"], TOOL_TIMEOUT)
        .await
        .expect("run BkRead");
    assert_eq!(missing.status.code(), Some(1));
    let lines = tools::json_lines(&missing.stdout).expect("json");
    let error = tools::events(&lines, "error").next().expect("error line");
    let kind = field(error, "kind").as_str().expect("kind");
    assert!(
        kind.contains("NoSuchLedger"),
        "unexpected error kind {kind}"
    );
    assert!(field(error, "code").as_i64().is_some_and(|code| code < 0));
}

#[tokio::test]
async fn java_bench_reports_throughput_and_latency_percentiles() {
    // Goal: BkBench runs the documented workload (E3/Qw2/Qa2, 1 KiB entries, bounded adds in
    // flight) and reports consistent numbers the Rust benchmark can print beside its own.
    let cluster = BkCluster::start(3).await.expect("start cluster");
    let output = cluster
        .run_java_tool(
            tools::BK_BENCH,
            &[
                "--count",
                "2000",
                "--warmup-count",
                "200",
                "--max-outstanding",
                "50",
            ],
            TOOL_TIMEOUT,
        )
        .await
        .expect("run BkBench");
    let lines = ok_json(&output);
    let config = tools::events(&lines, "bench_config")
        .next()
        .expect("config line");
    assert_eq!(field(config, "entry_size").as_u64(), Some(1024));
    assert_eq!(field(config, "ensemble").as_u64(), Some(3));
    assert_eq!(field(config, "write_quorum").as_u64(), Some(2));
    assert_eq!(field(config, "ack_quorum").as_u64(), Some(2));
    let result = tools::events(&lines, "bench_result")
        .next()
        .expect("result line");
    println!("{result}");
    assert_eq!(field(result, "entries").as_u64(), Some(2000));
    assert_eq!(field(result, "bytes").as_u64(), Some(2000 * 1024));
    assert_eq!(field(result, "errors").as_u64(), Some(0));
    let number = |key: &str| field(result, key).as_f64().expect("a number");
    assert!(number("entries_per_sec") > 0.0);
    assert!(number("mb_per_sec") > 0.0);
    assert!(number("p50_ms") > 0.0);
    assert!(number("p50_ms") <= number("p99_ms"));
    assert!(number("p99_ms") <= number("p999_ms"));
    assert!(number("p999_ms") <= number("max_ms"));
}
