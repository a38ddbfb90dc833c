//! The original Majordodo Java client (org.majordodo:majordodo-client from Maven Central) drives
//! this broker over a real socket: single and batch submissions, reads of tasks and status, and
//! a refused password. The Java program is `java-interop/` (built here with Maven); it checks
//! every answer as the Java client parses it, and this test checks the broker's state after it.
//!
//! Needs a JDK (17 or newer) and Maven with access to Maven Central (or a filled ~/.m2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use majordodo_broker::http::auth::hash_password_with;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::{Broker, BrokerConfig, SystemClock};
use majordodo_core::DefaultGroupMapper;
use majordodo_log::{MemoryLog, MemoryStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const USER: &str = "java-user";
const PASSWORD: &str = "java password";
/// Bound on the Java program's run (JVM start included).
const JAVA_TIMEOUT: Duration = Duration::from_secs(120);

fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("java-interop")
}

fn require(tool: &str, args: &[&str]) {
    let found = Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the Java interoperability test needs `{tool}` on PATH: install a JDK 17+ and Maven \
         (Debian: apt-get install openjdk-17-jdk-headless maven; scripts/test-deps checks both)"
    );
}

/// Builds the Java program with Maven (downloads the original client on first use).
fn build_java_program() -> PathBuf {
    require("java", &["-version"]);
    require("mvn", &["-v"]);
    let dir = project_dir();
    let out = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(dir.join("pom.xml"))
        .arg("package")
        .output()
        .expect("run mvn");
    assert!(
        out.status.success(),
        "mvn package of {} failed (is Maven Central reachable?):\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_java_client_submits_and_reads_back_tasks() {
    // Goal: the original Java client works unchanged against this broker: it creates tasks one by
    // one and in a batch, reads the busy-slot outcome, reads tasks and status back with the
    // fields it expects, and gets refused with a wrong password.
    let target = tokio::task::spawn_blocking(build_java_program)
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let broker = Broker::start(
        BrokerConfig::default(),
        Arc::new(MemoryLog::open(&MemoryStore::new())),
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    let settings = HttpConfig {
        users: vec![UserConfig {
            name: USER.into(),
            role: UserRole::User,
            password_hash: Some(hash_password_with(
                PASSWORD,
                1_000,
                &mut StdRng::seed_from_u64(9),
            )),
            token_sha256: None,
        }],
        ..HttpConfig::default()
    }
    .validate()
    .unwrap();
    // The Java program submits a task naming code pool pool-1, which must exist.
    broker
        .handle()
        .create_code_pool(
            "pool-1".into(),
            0,
            majordodo_testkit::archives::zip(&[majordodo_testkit::archives::file("x", b"x")]),
        )
        .await
        .unwrap();
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let http_stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        socket,
        broker.handle(),
        settings,
        http_stop.clone().cancelled_owned(),
    ));

    let classpath = format!(
        "{}:{}/*",
        target.join("java-interop.jar").display(),
        target.join("lib").display()
    );
    let run = tokio::process::Command::new("java")
        .args([
            "-cp",
            &classpath,
            "rs.majordodo.interop.JavaClientInterop",
            "127.0.0.1",
        ])
        .arg(port.to_string())
        .args([USER, PASSWORD])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(JAVA_TIMEOUT, run)
        .await
        .expect("the Java program ends in time")
        .expect("java starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("INTEROP OK"),
        "Java client run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // The broker holds what the Java client submitted.
    let tasks = broker
        .handle()
        .query(|v| {
            v.state
                .tasks()
                .map(|t| {
                    (
                        t.user_id.to_string(),
                        t.task_type.to_string(),
                        t.data.to_string(),
                        t.max_attempts,
                        t.slot().map(str::to_owned),
                        t.codepool().map(str::to_owned),
                        t.deadline > 0,
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 5, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.0 == USER));
    assert_eq!(
        tasks[0],
        (
            USER.into(),
            "java-type".into(),
            "hello from java".into(),
            2,
            Some("java-slot".into()),
            None,
            true
        )
    );
    assert_eq!((tasks[1].2.as_str(), tasks[1].3), ("batch 0", 0));
    assert_eq!(tasks[4].5.as_deref(), Some("pool-1"));

    http_stop.cancel();
    server.await.unwrap().unwrap();
    stop.cancel();
    broker.wait().await.unwrap();
}
