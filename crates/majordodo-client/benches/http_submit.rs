//! HTTP API throughput and latency, client to broker over 127.0.0.1 (memory log, so the numbers
//! are those of the HTTP path, the dispatcher and the client, not of a disk).
//!
//! Run: `cargo bench -p majordodo-client --bench http_submit` (optionally `-- quick`).
//! Prints one table row per scenario: requests, tasks per second, and request latency
//! percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use majordodo_broker::http::auth::{PBKDF2_ITERATIONS, hash_password_with, token_digest};
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::{Broker, BrokerConfig, SystemClock};
use majordodo_client::{Auth, Client, TaskSubmission, TasksQuery};
use majordodo_core::DefaultGroupMapper;
use majordodo_log::{MemoryLog, MemoryStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "mdt_bench";
const PASSWORD: &str = "bench password";

struct Row {
    name: String,
    requests: u64,
    tasks: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

fn print_header() {
    println!(
        "{:<58} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "scenario", "requests", "req/s", "tasks/s", "p50 ms", "p99 ms", "max ms"
    );
}

fn print_row(r: &Row) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{:<58} {:>9} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
        r.name,
        r.requests,
        r.requests as f64 / r.elapsed.as_secs_f64(),
        r.tasks as f64 / r.elapsed.as_secs_f64(),
        ms(r.latency.value_at_quantile(0.5)),
        ms(r.latency.value_at_quantile(0.99)),
        ms(r.latency.max()),
    );
}

/// Runs `requests` requests split over `clients` concurrent tasks; `op` makes one request and
/// returns the number of tasks it carried.
async fn run<F, Fut>(name: &str, clients: usize, requests: usize, op: F) -> Row
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send,
{
    let start = Instant::now();
    let mut joins = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        let n = requests / clients;
        joins.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("valid histogram");
            let mut tasks = 0;
            for i in 0..n {
                let t = Instant::now();
                tasks += op(c * n + i).await;
                h.record(t.elapsed().as_micros() as u64).expect("in range");
            }
            (h, tasks)
        }));
    }
    let mut latency = Histogram::<u64>::new(3).expect("valid histogram");
    let mut tasks = 0;
    for j in joins {
        let (h, t) = j.await.expect("bench task");
        latency.add(h).expect("same bounds");
        tasks += t;
    }
    Row {
        name: name.into(),
        requests: (requests / clients * clients) as u64,
        tasks,
        elapsed: start.elapsed(),
        latency,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let scale = if quick { 10 } else { 1 };
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
    .expect("broker starts");
    let settings = HttpConfig {
        users: vec![UserConfig {
            name: "admin".into(),
            role: UserRole::Admin,
            password_hash: Some(hash_password_with(
                PASSWORD,
                PBKDF2_ITERATIONS,
                &mut StdRng::seed_from_u64(1),
            )),
            token_sha256: Some(token_digest(TOKEN)),
        }],
        ..HttpConfig::default()
    }
    .validate()
    .expect("valid config");
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", socket.local_addr().expect("address"));
    tokio::spawn(http::serve(
        socket,
        broker.handle(),
        settings,
        stop.clone().cancelled_owned(),
    ));
    let client = Client::new(&url, Auth::bearer(TOKEN)).expect("client");

    print_header();
    let task = |i: usize| TaskSubmission::new("bench", format!("user{}", i % 100), "x".repeat(100));
    for clients in [1usize, 16, 64] {
        let c = client.clone();
        let row = run(
            &format!("submitTask, {clients} concurrent clients"),
            clients,
            4_000 / scale,
            move |i| {
                let c = c.clone();
                async move {
                    c.submit(&task(i)).await.expect("submit");
                    1
                }
            },
        )
        .await;
        print_row(&row);
    }
    for (batch, clients) in [(100usize, 1usize), (1_000, 1), (1_000, 4)] {
        let c = client.clone();
        let row = run(
            &format!("submitTasks of {batch}, {clients} clients"),
            clients,
            (200_000 / batch / scale).max(clients),
            move |i| {
                let c = c.clone();
                async move {
                    let tasks: Vec<_> = (0..batch).map(|k| task(i * batch + k)).collect();
                    c.submit_many(&tasks).await.expect("submit_many");
                    batch as u64
                }
            },
        )
        .await;
        print_row(&row);
    }
    let held = client.status().await.expect("status").tasks;
    for (name, query) in [
        (
            "view tasks max=100 (all)",
            TasksQuery {
                max: Some(100),
                ..Default::default()
            },
        ),
        (
            "view tasks userId=user7 max=100 (scan)",
            TasksQuery {
                max: Some(100),
                user_id: Some("user7".into()),
                ..Default::default()
            },
        ),
        (
            "view tasks userId=nobody (whole scan budget)",
            TasksQuery {
                user_id: Some("nobody".into()),
                ..Default::default()
            },
        ),
    ] {
        let c = client.clone();
        let row = run(
            &format!("{name}, {held} tasks held"),
            1,
            200 / scale,
            move |_| {
                let c = c.clone();
                let q = query.clone();
                async move {
                    c.tasks(&q).await.expect("tasks");
                    0
                }
            },
        )
        .await;
        print_row(&row);
    }
    let c = client.clone();
    print_row(
        &run("view status", 1, 2_000 / scale, move |_| {
            let c = c.clone();
            async move {
                c.status().await.expect("status");
                0
            }
        })
        .await,
    );

    // Basic authentication: the first request pays PBKDF2, later ones hit the verified cache.
    let basic = Client::new(&url, Auth::basic("admin", PASSWORD)).expect("client");
    let t = Instant::now();
    basic.status().await.expect("first basic login");
    let first = t.elapsed();
    let c = basic.clone();
    print_row(
        &run(
            "view status, Basic auth (verified cache)",
            1,
            2_000 / scale,
            move |_| {
                let c = c.clone();
                async move {
                    c.status().await.expect("status");
                    0
                }
            },
        )
        .await,
    );
    println!(
        "first Basic login (PBKDF2-HMAC-SHA256, {PBKDF2_ITERATIONS} iterations): {:.1} ms",
        first.as_secs_f64() * 1000.0
    );
    stop.cancel();
    let _ = broker.wait().await;
}
