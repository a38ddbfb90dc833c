//! The dispatcher behind a `BrokerHandle`: submissions are answered once durable, a restarted
//! broker recovers them (from the log, and from a snapshot plus the log), and a failing log fails
//! the requests in flight and stops the broker.

use std::sync::Arc;

use std::time::{Duration, Instant};

use majordodo_broker::{
    BootError, Broker, BrokerConfig, BrokerError, DispatcherConfig, OpeningLog, SystemClock,
};
use majordodo_core::leader::{SubmitOutcome, SubmitRequest};
use majordodo_core::{DefaultGroupMapper, TaskId, TaskStatus};
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
async fn recovery_falls_back_on_the_older_snapshot_when_the_newest_is_found_damaged_while_decoded()
{
    // Goal: a newest snapshot that passes its checksums but whose body turns out damaged while
    // it is decompressed and decoded (here: one byte more announced than it holds, the header
    // sealed again) is skipped at boot for the older one, and the log after that one is
    // replayed: nothing acknowledged is lost.
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
    for batch in [50, 7, 3] {
        h.submit((0..batch).map(|i| task(&i.to_string(), None)).collect())
            .await
            .unwrap();
        if batch != 3 {
            h.checkpoint().await.unwrap();
        }
    }
    stop.cancel();
    broker.wait().await.unwrap();
    log.close().await.unwrap();
    drop(log);
    let newest = snapshots.path_of(majordodo_log::Lsn(57));
    let mut bytes = std::fs::read(&newest).unwrap();
    let announced = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    bytes[24..32].copy_from_slice(&(announced + 1).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..44]);
    bytes[44..48].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&newest, bytes).unwrap();

    let stop = CancellationToken::new();
    let log = open_log();
    let broker = start(log.clone(), Some(snapshots), &stop).await;
    let report = broker.boot_report().clone();
    assert_eq!(report.snapshot_lsn, Some(50));
    assert_eq!(report.replayed, 10);
    assert_eq!(report.tasks, 60);
    stop.cancel();
    broker.wait().await.unwrap();
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_log_opened_during_boot_is_replayed_after_the_snapshot_and_given_back() {
    // Goal: a broker launched with a log still to open (claimed, then read while the snapshot
    // loads) recovers the snapshot and the records after it, hands the log back to be closed,
    // and a log that cannot be opened fails the boot with an error naming its directory.
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let snapshots = Arc::new(SnapshotStore::open(dir.path().join("snapshots")).unwrap());
    let opening = |dir: std::path::PathBuf| -> OpeningLog {
        let claimed = FileLog::claim(&dir, FileLogConfig::default()).unwrap();
        Box::pin(async move {
            let (log, _) = tokio::task::spawn_blocking(move || claimed.open())
                .await
                .unwrap()
                .map_err(|source| BootError::OpenLog { dir, source })?;
            Ok(Arc::new(log) as Arc<dyn CommitLog>)
        })
    };
    let launch = |log: OpeningLog, stop: &CancellationToken| {
        Broker::launch_opening(
            BrokerConfig::default(),
            log,
            Some(snapshots.clone()),
            Arc::new(DefaultGroupMapper),
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
    };
    let stop = CancellationToken::new();
    let broker = launch(opening(log_dir.clone()), &stop)
        .recovered()
        .await
        .unwrap();
    let h = broker.handle();
    h.submit((0..20).map(|i| task(&i.to_string(), None)).collect())
        .await
        .unwrap();
    assert_eq!(h.checkpoint().await.unwrap(), 20);
    h.submit((0..3).map(|i| task(&i.to_string(), None)).collect())
        .await
        .unwrap();
    let log = broker.log().expect("the broker gives its log back");
    stop.cancel();
    broker.wait().await.unwrap();
    log.close().await.unwrap();
    drop(log);

    let stop = CancellationToken::new();
    let broker = launch(opening(log_dir.clone()), &stop)
        .recovered()
        .await
        .unwrap();
    let report = broker.boot_report().clone();
    assert_eq!(
        (report.snapshot_lsn, report.replayed, report.tasks),
        (Some(20), 3, 23)
    );
    let log = broker.log().expect("the broker gives its log back");
    assert_eq!(log.last_lsn().0, 23);
    stop.cancel();
    broker.wait().await.unwrap();
    log.close().await.unwrap();
    drop(log);

    // Damage the first record (acknowledged, later records follow): the boot fails with
    // the log's error, naming the directory.
    let mut segments: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    bytes[32 + 24 + 2] ^= 0x40;
    std::fs::write(&segments[0], &bytes).unwrap();
    let stop = CancellationToken::new();
    let error = launch(opening(log_dir.clone()), &stop)
        .recovered()
        .await
        .unwrap_err();
    assert!(matches!(error, BootError::OpenLog { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&log_dir.display().to_string()),
        "{message}"
    );
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
    assert!(matches!(err, BrokerError::OutcomeUnknown(_)), "{err:?}");
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
async fn idle_broker_writes_noops_and_takes_periodic_snapshots_only_after_changes() {
    // Goal: with nothing to do, the dispatcher still proves the log writable (NOOP entries);
    // it takes a snapshot on its interval once something changed, and none again while only
    // NOOPs follow.
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
    while log.last_lsn().0 < 3 {
        assert!(Instant::now() < deadline, "no noops within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        snapshots.list().unwrap().is_empty(),
        "no snapshot of a state with nothing but NOOPs"
    );
    broker.handle().submit(vec![task("a", None)]).await.unwrap();
    while snapshots.list().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no snapshot within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = snapshots.list().unwrap();
    // Several intervals with only NOOPs: the snapshot is not written again.
    let noops_from = log.last_lsn().0;
    while log.last_lsn().0 < noops_from + 4 {
        assert!(Instant::now() < deadline, "no noops within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        snapshots.list().unwrap(),
        first,
        "an unchanged state is not snapshotted again"
    );
    stop.cancel();
    broker.wait().await.unwrap();
}

#[tokio::test]
async fn a_task_too_large_for_a_record_is_refused_naming_its_field_and_others_go_on() {
    // Goal: every field counts toward the record size (a long slot too); the offending request
    // is refused with its field named, reserves nothing, and a request in the same round is
    // created.
    let log = Arc::new(MemoryLog::new().with_max_record_size(4096));
    let stop = CancellationToken::new();
    let broker = start(log.clone(), None, &stop).await;
    let h = broker.handle();
    let big_slot = "s".repeat(4000);
    let small = h.submit(vec![task("small", None)]);
    let big = h.submit(vec![task("ok", None), task("big", Some(&big_slot))]);
    let (small, big) = tokio::join!(small, big);
    assert_eq!(small.unwrap(), vec![SubmitOutcome::Accepted(TaskId(1))]);
    match big.unwrap_err() {
        BrokerError::TooLarge {
            task,
            field,
            detail,
        } => {
            assert_eq!((task, field), (1, "slot"));
            assert!(
                detail.contains("4000 bytes") && detail.contains("4096"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing of the refused request exists; the next id follows the created task.
    let out = h
        .submit(vec![task("next", Some(&big_slot[..100]))])
        .await
        .unwrap();
    assert_eq!(out, vec![SubmitOutcome::Accepted(TaskId(2))]);
    stop.cancel();
    broker.wait().await.unwrap();
}

/// A memory log whose replay and append completions wait for a gate, to hold a broker in
/// recovery or with rounds in flight.
struct GatedLog {
    inner: MemoryLog,
    gate: Arc<tokio::sync::Semaphore>,
}

impl GatedLog {
    fn new(inner: MemoryLog) -> GatedLog {
        GatedLog {
            inner,
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    fn open(&self) {
        self.gate
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
}

impl CommitLog for GatedLog {
    fn append(&self, records: Vec<bytes::Bytes>) -> majordodo_log::AppendFuture {
        let durable = self.inner.append(records);
        let gate = self.gate.clone();
        Box::pin(async move {
            let _ = gate.acquire().await;
            durable.await
        })
    }

    fn replay<'a>(
        &'a self,
        after: majordodo_log::Lsn,
        f: &'a mut majordodo_log::ReplayFn<'a>,
    ) -> majordodo_log::BoxFuture<'a, Result<majordodo_log::ReplayReport, majordodo_log::LogError>>
    {
        Box::pin(async move {
            // The replay uses its permit up, so one permit lets exactly the replay through.
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            self.inner.replay(after, f).await
        })
    }

    fn last_lsn(&self) -> majordodo_log::Lsn {
        self.inner.last_lsn()
    }

    fn release_before(
        &self,
        lsn: majordodo_log::Lsn,
    ) -> majordodo_log::BoxFuture<'_, Result<(), majordodo_log::LogError>> {
        self.inner.release_before(lsn)
    }

    fn max_record_size(&self) -> usize {
        self.inner.max_record_size()
    }

    fn close(&self) -> majordodo_log::BoxFuture<'_, Result<(), majordodo_log::LogError>> {
        self.inner.close()
    }
}

#[tokio::test]
async fn a_recovering_broker_answers_recovery_in_progress_then_serves() {
    // Goal: while the log is replayed, writes and reads get `Recovering` (not a hang, not
    // "stopped"); once recovered, the same handle serves.
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    let stop = CancellationToken::new();
    let booting = Broker::launch(
        BrokerConfig::default(),
        log.clone(),
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    );
    let h = booting.handle();
    assert_eq!(
        h.submit(vec![task("a", None)]).await.unwrap_err(),
        BrokerError::Recovering
    );
    assert_eq!(
        h.query(|v| v.state.task_count()).await.unwrap_err(),
        BrokerError::Recovering
    );
    log.open();
    let broker = booting.recovered().await.unwrap();
    assert_eq!(
        h.submit(vec![task("a", None)]).await.unwrap(),
        vec![SubmitOutcome::Accepted(TaskId(1))]
    );
    stop.cancel();
    broker.wait().await.unwrap();
}

#[tokio::test]
async fn a_recovering_broker_refuses_snapshot_downloads_with_503_then_serves_them() {
    // Goal: while a broker recovers, `GET /snapshot` answers 503 with Retry-After (never a
    // 200 that is not a snapshot) and the downloader reports "not ready" instead of failing;
    // once recovered, the download brings a validated snapshot at the announced position;
    // credentials that are not an admin's fail for good.
    use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
    use majordodo_broker::replica::{Download, download_snapshot};
    const TOKEN: &str = "snapshot-admin-token";
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotStore::open(dir.path().join("served")).unwrap());
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    let stop = CancellationToken::new();
    let booting = Broker::launch(
        BrokerConfig::default(),
        log.clone(),
        Some(snapshots),
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    );
    let settings = HttpConfig {
        users: vec![UserConfig {
            name: "admin".into(),
            role: UserRole::Admin,
            password_hash: None,
            token_sha256: Some(http::auth::token_digest(TOKEN)),
        }],
        ..HttpConfig::default()
    }
    .validate()
    .unwrap();
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/majordodo", socket.local_addr().unwrap());
    let server = tokio::spawn(http::serve(
        socket,
        booting.handle(),
        settings,
        stop.clone().cancelled_owned(),
    ));
    let received = Arc::new(SnapshotStore::open(dir.path().join("received")).unwrap());

    let raw = reqwest::Client::new()
        .get(format!("{url}/snapshot"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(raw.headers().contains_key("retry-after"));
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["retryable"], true, "{body}");
    match download_snapshot(&url, TOKEN, &received).await {
        Err(Download::NotReady(why)) => assert!(why.contains("recovery_in_progress"), "{why}"),
        other => panic!("a recovering broker's refusal must read as not ready: {other:?}"),
    }
    assert!(received.list().unwrap().is_empty());

    log.open();
    let broker = booting.recovered().await.unwrap();
    broker.handle().submit(vec![task("a", None)]).await.unwrap();
    let lsn = download_snapshot(&url, TOKEN, &received)
        .await
        .expect("a recovered broker serves its snapshot");
    assert!(lsn > 0);
    assert_eq!(received.list().unwrap(), vec![majordodo_log::Lsn(lsn)]);
    match download_snapshot(&url, "not-the-token", &received).await {
        Err(Download::Failed(e)) => assert!(e.to_string().contains("401"), "{e}"),
        other => panic!("bad credentials must fail for good: {other:?}"),
    }
    stop.cancel();
    broker.wait().await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_submission_queue_answers_overloaded_at_once_and_a_stopping_broker_says_stopped() {
    // Goal: when the dispatcher cannot take more (rounds in flight at their bound, its queue
    // full), a submit is answered `Overloaded` at once instead of waiting; during a stop,
    // submissions are answered `Stopped`, never `NotLeader`.
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    log.gate.add_permits(1); // the replay
    let stop = CancellationToken::new();
    let config = BrokerConfig {
        command_queue: 2,
        dispatcher: DispatcherConfig {
            max_rounds_in_flight: 1,
            ..DispatcherConfig::default()
        },
        ..BrokerConfig::default()
    };
    let broker = Broker::start(
        config,
        log.clone(),
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    let h = broker.handle();
    // One round in flight (held by the gate), then the queue fills.
    let mut waiting = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let overloaded = loop {
        assert!(Instant::now() < deadline, "never overloaded");
        let h = h.clone();
        let pending = tokio::spawn(async move { h.submit(vec![task("x", None)]).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        if pending.is_finished() {
            break pending.await.unwrap();
        }
        waiting.push(pending);
    };
    assert!(
        matches!(overloaded, Err(BrokerError::Overloaded(_))),
        "{overloaded:?}"
    );
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.open();
    broker.wait().await.unwrap();
    for pending in waiting {
        match pending.await.unwrap() {
            Ok(_) | Err(BrokerError::Stopped) => {}
            other => panic!("a submission during the stop got {other:?}"),
        }
    }
}

/// A memory log that reports itself full (its `ready` pending) until told otherwise.
struct FullLog {
    inner: MemoryLog,
    room: tokio::sync::watch::Sender<bool>,
}

impl CommitLog for FullLog {
    fn append(&self, records: Vec<bytes::Bytes>) -> majordodo_log::AppendFuture {
        self.inner.append(records)
    }

    fn replay<'a>(
        &'a self,
        after: majordodo_log::Lsn,
        f: &'a mut majordodo_log::ReplayFn<'a>,
    ) -> majordodo_log::BoxFuture<'a, Result<majordodo_log::ReplayReport, majordodo_log::LogError>>
    {
        self.inner.replay(after, f)
    }

    fn last_lsn(&self) -> majordodo_log::Lsn {
        self.inner.last_lsn()
    }

    fn release_before(
        &self,
        lsn: majordodo_log::Lsn,
    ) -> majordodo_log::BoxFuture<'_, Result<(), majordodo_log::LogError>> {
        self.inner.release_before(lsn)
    }

    fn max_record_size(&self) -> usize {
        self.inner.max_record_size()
    }

    fn ready(&self) -> majordodo_log::BoxFuture<'_, ()> {
        let mut room = self.room.subscribe();
        Box::pin(async move {
            let _ = room.wait_for(|r| *r).await;
        })
    }

    fn close(&self) -> majordodo_log::BoxFuture<'_, Result<(), majordodo_log::LogError>> {
        self.inner.close()
    }
}

#[tokio::test]
async fn a_full_log_holds_new_input_back_until_it_has_room() {
    // Goal: after an append, while the log says it has no room (`ready` pending), the
    // dispatcher takes no more submissions (the queue fills and answers Overloaded); once it
    // has room, what waited is served.
    let (room, _) = tokio::sync::watch::channel(false);
    let log = Arc::new(FullLog {
        inner: MemoryLog::new(),
        room,
    });
    let stop = CancellationToken::new();
    let config = BrokerConfig {
        command_queue: 2,
        ..BrokerConfig::default()
    };
    let broker = Broker::start(
        config,
        log.clone(),
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    let h = broker.handle();
    assert!(h.submit(vec![task("first", None)]).await.is_ok());
    let mut waiting = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "input was never held back");
        let h = h.clone();
        let pending = tokio::spawn(async move { h.submit(vec![task("more", None)]).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        if pending.is_finished() {
            let answer = pending.await.unwrap();
            assert!(
                matches!(answer, Err(BrokerError::Overloaded(_))),
                "{answer:?}"
            );
            break;
        }
        waiting.push(pending);
    }
    log.room.send_replace(true);
    for pending in waiting {
        assert!(pending.await.unwrap().is_ok());
    }
    stop.cancel();
    broker.wait().await.unwrap();
}
