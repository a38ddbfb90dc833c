//! The dispatcher behind a `BrokerHandle`: submissions are answered once durable, a restarted
//! broker recovers them (from the log, and from a snapshot plus the log), and a failing log fails
//! the requests in flight and stops the broker.

use std::sync::Arc;

use std::time::{Duration, Instant};

use majordodo_broker::{Broker, BrokerConfig, BrokerError, DispatcherConfig, SystemClock};
use majordodo_core::leader::{SubmitOutcome, SubmitRequest};
use majordodo_core::{DefaultGroupMapper, TaskStatus};
use majordodo_log::{
    CommitLog, FaultSchedule, FaultyLog, FileLog, FileLogConfig, MemoryLog, MemoryStore,
    SnapshotStore,
};
use tokio_util::sync::CancellationToken;

fn task(user: &str, slot: Option<&str>) -> SubmitRequest {
    SubmitRequest {
        task_type: "t".into(),
        user_id: user.into(),
        data: "payload".into(),
        max_attempts: 1,
        slot: slot.map(str::to_string),
        ..Default::default()
    }
}

async fn start(
    log: Arc<dyn CommitLog>,
    snapshots: Option<Arc<SnapshotStore>>,
    stop: &CancellationToken,
) -> Broker {
    Broker::start(
        BrokerConfig::default(),
        log,
        snapshots,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("broker starts")
}

#[tokio::test]
async fn submissions_are_answered_in_order_and_survive_a_restart() {
    // Goal: ids come back in request order, a busy slot answers NotCreated, and a broker
    // restarted on the same log has every acknowledged task.
    let store = MemoryStore::new();
    let stop = CancellationToken::new();
    let broker = start(Arc::new(MemoryLog::open(&store)), None, &stop).await;
    let h = broker.handle();
    let out = h
        .submit(vec![
            task("a", Some("s")),
            task("b", None),
            task("c", Some("s")),
        ])
        .await
        .unwrap();
    let ids: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            SubmitOutcome::Accepted(id) => Some(id.0),
            SubmitOutcome::NotCreated(_) => None,
        })
        .collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(
        out[2],
        SubmitOutcome::NotCreated("slot s already assigned".into())
    );
    let waiting = h
        .query(|v| v.state.count(TaskStatus::Waiting))
        .await
        .unwrap();
    assert_eq!(waiting, 2);
    stop.cancel();
    broker.wait().await.unwrap();

    let stop = CancellationToken::new();
    let broker = start(Arc::new(MemoryLog::open(&store)), None, &stop).await;
    assert_eq!(broker.boot_report().tasks, 2);
    let h = broker.handle();
    let (user, slot) = h
        .query(|v| {
            let t = v.state.task(majordodo_core::TaskId(1)).unwrap();
            (t.user_id.to_string(), v.state.slot_holder("s"))
        })
        .await
        .unwrap();
    assert_eq!(user, "a");
    assert_eq!(slot, Some(majordodo_core::TaskId(1)));
    // Ids keep growing after a restart.
    let out = h.submit(vec![task("d", None)]).await.unwrap();
    assert_eq!(
        out,
        vec![SubmitOutcome::Accepted(majordodo_core::TaskId(3))]
    );
    stop.cancel();
    broker.wait().await.unwrap();
}

#[tokio::test]
async fn recovery_uses_the_snapshot_and_the_log_after_it() {
    // Goal: after a checkpoint, a restart loads the snapshot and replays only what follows.
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotStore::open(dir.path().join("snapshots")).unwrap());
    let open_log = || {
        let (log, _) = FileLog::open(dir.path().join("log"), FileLogConfig::default()).unwrap();
        Arc::new(log) as Arc<dyn CommitLog>
    };
    let stop = CancellationToken::new();
    let log = open_log();
    let broker = start(log.clone(), Some(snapshots.clone()), &stop).await;
    let h = broker.handle();
    h.submit((0..50).map(|i| task(&i.to_string(), None)).collect())
        .await
        .unwrap();
    let at = h.checkpoint().await.unwrap();
    assert_eq!(at, 50);
    h.submit((0..7).map(|i| task(&i.to_string(), None)).collect())
        .await
        .unwrap();
    stop.cancel();
    broker.wait().await.unwrap();
    log.close().await.unwrap();
    drop(log);

    let stop = CancellationToken::new();
    let log = open_log();
    let broker = start(log.clone(), Some(snapshots), &stop).await;
    let report = broker.boot_report().clone();
    assert_eq!(report.snapshot_lsn, Some(50));
    assert_eq!(report.replayed, 7);
    assert_eq!(report.tasks, 57);
    stop.cancel();
    broker.wait().await.unwrap();
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_failing_log_fails_requests_in_flight_and_stops_the_broker() {
    // Goal: nothing is acknowledged after the log fails; callers get a log error, the broker
    // stops with that error, and a restart recovers exactly what was acknowledged.
    let store = MemoryStore::new();
    let log = Arc::new(FaultyLog::new(
        MemoryLog::open(&store),
        FaultSchedule::none(),
    ));
    let stop = CancellationToken::new();
    let broker = start(log.clone(), None, &stop).await;
    let h = broker.handle();
    h.submit(vec![task("ok", None)]).await.unwrap();
    log.fail_next_append();
    let err = h.submit(vec![task("lost", None)]).await.unwrap_err();
    assert!(matches!(err, BrokerError::Log(_)), "{err:?}");
    assert!(
        broker.wait().await.is_err(),
        "the broker stops with the log error"
    );
    assert!(matches!(
        h.submit(vec![task("after", None)]).await.unwrap_err(),
        BrokerError::Stopped
    ));

    let stop = CancellationToken::new();
    let broker = start(Arc::new(MemoryLog::open(&store)), None, &stop).await;
    let users = broker
        .handle()
        .query(|v| {
            v.state
                .tasks()
                .map(|t| t.user_id.to_string())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    assert_eq!(users, vec!["ok".to_string()]);
    stop.cancel();
    broker.wait().await.unwrap();
}

#[tokio::test]
async fn idle_broker_writes_noops_and_takes_periodic_snapshots() {
    // Goal: with nothing to do, the dispatcher still proves the log writable (NOOP entries) and
    // takes snapshots on its interval, without any request.
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotStore::open(dir.path().join("snapshots")).unwrap());
    let log: Arc<dyn CommitLog> = Arc::new(MemoryLog::new());
    let stop = CancellationToken::new();
    let config = BrokerConfig {
        dispatcher: DispatcherConfig {
            checkpoint_interval: Some(Duration::from_millis(100)),
            noop_interval: Duration::from_millis(50),
            ..DispatcherConfig::default()
        },
        ..BrokerConfig::default()
    };
    let broker = Broker::start(
        config,
        log.clone(),
        Some(snapshots.clone()),
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshots.list().unwrap().len() < 2 || log.last_lsn().0 < 3 {
        assert!(
            Instant::now() < deadline,
            "no noops or snapshots within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    broker.wait().await.unwrap();
}
