//! Round trips of no-op tasks through the real listener and the worker agent over 127.0.0.1,
//! with a minimal dispatcher that keeps the worker's capacity full and acknowledges every
//! batch at once (no log). Prints one table row per capacity:
//!
//! ```text
//! cargo bench -p majordodo-worker --bench agent_throughput
//! ```

use std::time::{Duration, Instant};

use majordodo_broker::worker_listener::{self, ListenerConfig, WorkerEvent};
use majordodo_proto::worker::{ANY_TASK_TYPE, Assignment, SharedSecret};
use majordodo_worker::{Executors, TaskFailure, Worker, WorkerConfig, executor_fn};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// Tasks per measurement: enough for a few hundred milliseconds of work at the expected rate.
const TASKS: u64 = 50_000;

/// Capacities measured: one task at a time (latency-bound), then wider windows.
const CAPACITIES: [u32; 4] = [1, 16, 128, 1024];

fn assignment(task_id: u64) -> Assignment {
    Assignment {
        task_id,
        attempt: 1,
        task_type: "noop".into(),
        user_id: "bench".into(),
        data: String::new(),
        codepool: None,
        mode: None,
        resources: vec![],
        needs: Default::default(),
        shape: 0,
    }
}

async fn measure(capacity: u32) -> (Duration, u64) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("local addr");
    let secret = SharedSecret::new("bench");
    let (events_tx, mut events) = mpsc::channel(1024);
    let (stop_listener, listener_stopped) = oneshot::channel::<()>();
    let listener = tokio::spawn(worker_listener::run(
        socket,
        ListenerConfig::new("bench-broker", secret.clone()),
        events_tx,
        async {
            let _ = listener_stopped.await;
        },
    ));
    let mut config = WorkerConfig::new(addr.to_string(), secret);
    config.capacity.max_threads = capacity;
    config
        .capacity
        .max_threads_by_task_type
        .insert(ANY_TASK_TYPE.into(), capacity);
    config.report_batching.max_reports = capacity.max(1) as usize;
    config.report_batching.max_delay = Duration::from_millis(1);
    let executors = Executors::new().with(
        "noop",
        executor_fn(|_task| async { Ok::<_, TaskFailure>(String::new()) }),
    );
    let worker = Worker::new(config, executors).expect("valid config");
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(worker.run(async {
        let _ = worker_stopped.await;
    }));

    let session = loop {
        if let Some(WorkerEvent::Connected { reply, .. }) = events.recv().await {
            break reply.accept();
        }
    };
    let started = Instant::now();
    let mut next_id = 1u64;
    let mut in_worker = 0u64;
    let mut done = 0u64;
    let mut batches = 0u64;
    while done < TASKS {
        let room = (capacity as u64 - in_worker).min(TASKS + 1 - next_id);
        if room > 0 {
            let batch: Vec<_> = (next_id..next_id + room).map(assignment).collect();
            session.assign(batch).expect("queue has room");
            next_id += room;
            in_worker += room;
        }
        match events.recv().await.expect("listener runs") {
            WorkerEvent::Finished { seq, reports, .. } => {
                in_worker -= reports.len() as u64;
                done += reports.len() as u64;
                batches += 1;
                session.ack_finished(seq).expect("queue has room");
            }
            WorkerEvent::Ping { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let _ = stop_worker.send(());
    agent.await.expect("agent task").expect("clean stop");
    let _ = stop_listener.send(());
    listener
        .await
        .expect("listener task")
        .expect("valid config");
    (elapsed, batches)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("| capacity | tasks | seconds | tasks/s | report batches | reports/batch |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for capacity in CAPACITIES {
        let (elapsed, batches) = runtime.block_on(measure(capacity));
        let secs = elapsed.as_secs_f64();
        println!(
            "| {capacity} | {TASKS} | {secs:.2} | {:.0} | {batches} | {:.1} |",
            TASKS as f64 / secs,
            TASKS as f64 / batches as f64
        );
    }
}
