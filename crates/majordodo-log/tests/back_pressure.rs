//! FileLog back-pressure: `append` never blocks its caller; `ready` holds producers back while
//! the queue is over its bound, and lets them go once the writer has taken it.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use majordodo_log::vfs::SimFs;
use majordodo_log::{AppendFuture, CommitLog, FileLog, FileLogConfig, Lsn};

/// A deadline for a thread that may be stuck, not a pause.
const DEADLINE: Duration = Duration::from_secs(10);
const QUEUE_BOUND: u64 = 4096;

// Goal: with the disk stalled and the queue far over its bound, `append` still returns at once
// (so an async thread is never blocked), `ready` is pending, and once the disk resumes every
// append completes in order and `ready` resolves (regression: `append` blocked the calling
// thread on a condition variable once the queue was full).
#[test]
fn append_never_blocks_and_ready_waits_for_the_writer() {
    let fs = SimFs::new(1);
    let config = FileLogConfig {
        max_queued_bytes: QUEUE_BOUND,
        ..FileLogConfig::default()
    };
    let (log, _) = FileLog::open_with(Arc::new(fs.clone()), "/log", config).expect("open");
    let log = Arc::new(log);
    let record = |tag: u64| {
        let mut bytes = tag.to_le_bytes().to_vec();
        bytes.resize(1000, 1);
        Bytes::from(bytes)
    };
    // Hold the writer inside the write of the first append.
    fs.pause();
    let first = log.append(vec![record(0)]);
    let deadline = Instant::now() + DEADLINE;
    while fs.waiting() == 0 {
        assert!(
            Instant::now() < deadline,
            "the writer never started its write"
        );
        std::thread::yield_now();
    }
    assert!(
        log.ready().now_or_never().is_some(),
        "the writer took the queue: there is room"
    );
    // Ten times the bound, from another thread that must not be blocked.
    let (sent, received) = mpsc::channel::<Vec<AppendFuture>>();
    let producer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let futures = (1..=40).map(|tag| log.append(vec![record(tag)])).collect();
            let _ = sent.send(futures);
        })
    };
    let futures = match received.recv_timeout(DEADLINE) {
        Ok(futures) => futures,
        Err(_) => {
            fs.resume();
            panic!("append blocked its caller with the queue over its bound");
        }
    };
    producer.join().expect("producer");
    let mut ready = log.ready();
    assert!(
        (&mut ready).now_or_never().is_none(),
        "ready is pending while the queue is over its bound"
    );
    fs.resume();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        assert_eq!(first.await.expect("first append").first, Lsn(1));
        for (i, future) in futures.into_iter().enumerate() {
            assert_eq!(future.await.expect("append").first, Lsn(i as u64 + 2));
        }
        tokio::time::timeout(DEADLINE, ready)
            .await
            .expect("ready resolves once the writer took the queue");
        log.close().await.expect("close");
    });
}
