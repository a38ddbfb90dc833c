//! Listener tests over real TCP on 127.0.0.1, with a hand-driven worker speaking raw frames and
//! the test playing the dispatcher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use majordodo_proto::worker::{
    Assign, Assignment, Capacity, Connect, Envelope, FinishReport, Finished, Hello, Message,
    Outcome, PROTOCOL_VERSION, Ping, Shutdown, TaskShape, WorkerCodec, encoded_body_len,
    random_nonce, verify_broker_proof, worker_proof,
};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use super::*;

/// Bound on every wait in these tests, so a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

const SECRET: &[u8] = b"test secret";

struct Harness {
    addr: SocketAddr,
    events: mpsc::Receiver<WorkerEvent>,
    stop: Option<oneshot::Sender<()>>,
    listener: JoinHandle<Result<(), ListenerConfigError>>,
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut ListenerConfig)) -> Harness {
        Self::start_with_events(adjust, 64).await
    }

    async fn start_with_events(adjust: impl FnOnce(&mut ListenerConfig), events: usize) -> Harness {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut config = ListenerConfig::new("broker-1", SharedSecret::new(SECRET));
        adjust(&mut config);
        let (events_tx, events) = mpsc::channel(events);
        let (stop, stopped) = oneshot::channel();
        let listener = tokio::spawn(run(socket, config, events_tx, async {
            let _ = stopped.await;
        }));
        Harness {
            addr,
            events,
            stop: Some(stop),
            listener,
        }
    }

    async fn next_event(&mut self) -> WorkerEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event arrives in time")
            .expect("the listener is running")
    }

    async fn expect_connected(&mut self) -> (ConnId, WorkerHello, Admission) {
        match self.next_event().await {
            WorkerEvent::Connected { conn, hello, reply } => (conn, *hello, reply),
            other => panic!("expected Connected, got {other:?}"),
        }
    }

    async fn expect_disconnected(&mut self) -> (ConnId, DisconnectReason) {
        match self.next_event().await {
            WorkerEvent::Disconnected { conn, reason, .. } => (conn, reason),
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }

    /// Connects a raw worker and admits it; returns the worker and the dispatcher's session.
    async fn admitted(&mut self, worker_id: &str) -> (RawWorker, WorkerSession) {
        self.admitted_with(worker_id, false).await
    }

    /// As [`Harness::admitted`], the worker announcing task shapes or not.
    async fn admitted_with(
        &mut self,
        worker_id: &str,
        task_shapes: bool,
    ) -> (RawWorker, WorkerSession) {
        let mut worker = RawWorker::connect(self.addr, worker_id).await;
        worker.task_shapes = task_shapes;
        worker.send_hello_and_connect(SECRET).await;
        let (_, _, reply) = self.expect_connected().await;
        let session = reply.accept();
        match worker.recv().await {
            Some(Message::Welcome(_)) => {}
            other => panic!("expected welcome, got {other:?}"),
        }
        (worker, session)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        tokio::time::timeout(WAIT, self.listener)
            .await
            .expect("listener stops in time")
            .expect("listener task does not panic")
            .expect("config is valid");
    }
}

/// A worker driven frame by frame.
struct RawWorker {
    framed: Framed<TcpStream, WorkerCodec>,
    worker_id: String,
    process_id: String,
    client_nonce: [u8; 32],
    /// Announced in `Connect`.
    task_shapes: bool,
}

impl RawWorker {
    async fn connect(addr: SocketAddr, worker_id: &str) -> RawWorker {
        let socket = TcpStream::connect(addr).await.unwrap();
        RawWorker {
            framed: Framed::new(socket, WorkerCodec::default()),
            worker_id: worker_id.to_owned(),
            process_id: format!("{worker_id}-process"),
            client_nonce: random_nonce(),
            task_shapes: false,
        }
    }

    async fn send(&mut self, message: Message) {
        self.framed.send(message).await.unwrap();
    }

    /// The next frame, `None` once the broker closed the connection.
    async fn recv(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.framed.next())
            .await
            .expect("a frame or the end arrives in time")
        {
            Some(Ok(message)) => Some(message),
            Some(Err(_)) | None => None,
        }
    }

    async fn send_hello_and_connect(&mut self, secret: &[u8]) -> Vec<u8> {
        self.send(Message::Hello(Hello {
            worker_id: self.worker_id.clone(),
            process_id: self.process_id.clone(),
            location: "test".into(),
            client_nonce: self.client_nonce.to_vec(),
            credential_id: String::new(),
        }))
        .await;
        let challenge = match self.recv().await {
            Some(Message::Challenge(challenge)) => challenge,
            other => panic!("expected challenge, got {other:?}"),
        };
        assert_eq!(challenge.broker_id, "broker-1");
        let proof = worker_proof(
            secret,
            &challenge.broker_nonce,
            &self.client_nonce,
            &self.worker_id,
            &self.process_id,
        );
        self.send(Message::Connect(Connect {
            proof: proof.to_vec(),
            capacity: capacity(),
            running: vec![],
            task_shapes: self.task_shapes,
        }))
        .await;
        challenge.broker_nonce
    }
}

fn capacity() -> Capacity {
    Capacity {
        max_threads: 4,
        max_threads_by_task_type: [("any".to_owned(), 4)].into(),
        groups: vec![0],
        excluded_groups: vec![],
        ..Default::default()
    }
}

fn assignment(task_id: u64, data_len: usize) -> Assignment {
    Assignment {
        task_id,
        attempt: 1,
        task_type: "t".into(),
        user_id: "u".into(),
        data: "d".repeat(data_len),
        codepool: None,
        mode: None,
        resources: vec![],
        needs: Default::default(),
        shape: 0,
    }
}

#[tokio::test]
async fn right_secret_is_admitted_and_welcomed_with_the_broker_proof() {
    // Goal: the full handshake reaches the dispatcher and the worker can authenticate the broker.
    let mut harness = Harness::start(|config| {
        config.keepalive_interval = Duration::from_millis(1500);
        config.max_worker_idle_time = Duration::from_millis(4500);
    })
    .await;
    let mut worker = RawWorker::connect(harness.addr, "w1").await;
    let broker_nonce = worker.send_hello_and_connect(SECRET).await;
    let (_, hello, reply) = harness.expect_connected().await;
    assert_eq!(hello.worker_id, "w1");
    assert_eq!(hello.process_id, "w1-process");
    assert_eq!(hello.location, "test");
    assert_eq!(hello.capacity, capacity());
    let session = reply.accept();
    assert_eq!(session.worker_id(), "w1");
    let welcome = match worker.recv().await {
        Some(Message::Welcome(welcome)) => welcome,
        other => panic!("expected welcome, got {other:?}"),
    };
    assert!(verify_broker_proof(
        SECRET,
        &worker.client_nonce,
        &broker_nonce,
        "w1",
        &welcome.broker_proof
    ));
    assert_eq!(welcome.keepalive_interval_ms, 1500);
    assert_eq!(welcome.idle_timeout_ms, 4500);
    harness.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_rejected_and_never_reaches_the_dispatcher() {
    // Goal: a bad proof gets a non-retryable Reject, the socket closes, no event is sent.
    let mut harness = Harness::start(|_| {}).await;
    let mut worker = RawWorker::connect(harness.addr, "w1").await;
    worker.send_hello_and_connect(b"wrong secret").await;
    match worker.recv().await {
        Some(Message::Reject(reject)) => {
            assert_eq!(reject.reason, "authentication failed");
            assert!(!reject.retryable);
        }
        other => panic!("expected reject, got {other:?}"),
    }
    assert_eq!(
        worker.recv().await,
        None,
        "the broker closes after rejecting"
    );
    assert!(harness.events.try_recv().is_err());
    harness.stop().await;
}

#[tokio::test]
async fn other_protocol_version_is_rejected_as_not_retryable() {
    // Goal: a hello from another version gets a Reject saying so, then the connection closes.
    let harness = Harness::start(|_| {}).await;
    let mut socket = TcpStream::connect(harness.addr).await.unwrap();
    let body = Envelope {
        version: PROTOCOL_VERSION + 1,
        message: Some(Message::Hello(Hello {
            worker_id: "w".into(),
            process_id: "p".into(),
            location: String::new(),
            client_nonce: vec![0; 32],
            credential_id: String::new(),
        })),
    }
    .encode_to_vec();
    socket.write_u32(body.len() as u32).await.unwrap();
    socket.write_all(&body).await.unwrap();
    let mut framed = Framed::new(socket, WorkerCodec::default());
    match tokio::time::timeout(WAIT, framed.next()).await.unwrap() {
        Some(Ok(Message::Reject(reject))) => {
            assert!(!reject.retryable);
            assert!(reject.reason.contains("version"), "{}", reject.reason);
        }
        other => panic!("expected reject, got {other:?}"),
    }
    harness.stop().await;
}

#[tokio::test]
async fn dispatcher_rejection_reaches_the_worker_and_ends_with_a_disconnect() {
    // Goal: the dispatcher's reason and retryable flag arrive in the Reject; the connection
    // then reports Disconnected.
    let mut harness = Harness::start(|_| {}).await;
    let mut worker = RawWorker::connect(harness.addr, "w1").await;
    worker.send_hello_and_connect(SECRET).await;
    let (conn, _, reply) = harness.expect_connected().await;
    reply.reject(Rejection {
        reason: "not the leader".into(),
        retryable: true,
    });
    match worker.recv().await {
        Some(Message::Reject(reject)) => {
            assert_eq!(reject.reason, "not the leader");
            assert!(reject.retryable);
        }
        other => panic!("expected reject, got {other:?}"),
    }
    let (disconnected, reason) = harness.expect_disconnected().await;
    assert_eq!(disconnected, conn);
    assert!(matches!(reason, DisconnectReason::ClosedByBroker(_)));
    harness.stop().await;
}

#[tokio::test]
async fn silent_connection_is_disconnected_as_idle_while_its_socket_stays_open() {
    // Goal: no frame for max_worker_idle_time closes the connection with reason Idle.
    let mut harness = Harness::start(|config| {
        config.keepalive_interval = Duration::from_millis(50);
        config.max_worker_idle_time = Duration::from_millis(200);
    })
    .await;
    let (mut worker, session) = harness.admitted("w1").await;
    let (conn, reason) = harness.expect_disconnected().await;
    assert_eq!(conn, session.conn());
    assert_eq!(reason, DisconnectReason::Idle);
    assert_eq!(worker.recv().await, None, "the broker closed the socket");
    harness.stop().await;
}

#[tokio::test]
async fn pinging_worker_stays_connected_past_the_idle_time() {
    // Goal: pings reset the idle clock, get a Pong each, and reach the dispatcher as events.
    let mut harness = Harness::start(|config| {
        config.keepalive_interval = Duration::from_millis(100);
        config.max_worker_idle_time = Duration::from_millis(400);
    })
    .await;
    let (mut worker, session) = harness.admitted("w1").await;
    for running in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        worker
            .send(Message::Ping(Ping {
                capacity: capacity(),
                running,
            }))
            .await;
        assert!(matches!(worker.recv().await, Some(Message::Pong(_))));
        match harness.next_event().await {
            WorkerEvent::Ping {
                conn,
                worker_id,
                running: got,
                ..
            } => {
                assert_eq!(
                    (conn, worker_id.as_str(), got),
                    (session.conn(), "w1", running)
                );
            }
            other => panic!("expected ping, got {other:?}"),
        }
    }
    harness.stop().await;
}

#[tokio::test]
async fn malformed_frame_closes_only_that_connection() {
    // Goal: garbage from one worker ends that connection with a protocol error; another
    // connection keeps working.
    let mut harness = Harness::start(|_| {}).await;
    let (mut bad, bad_session) = harness.admitted("bad").await;
    let (mut good, good_session) = harness.admitted("good").await;
    let garbage = [0xffu8; 12];
    let socket = bad.framed.get_mut();
    socket.write_u32(garbage.len() as u32).await.unwrap();
    socket.write_all(&garbage).await.unwrap();
    let (conn, reason) = harness.expect_disconnected().await;
    assert_eq!(conn, bad_session.conn());
    assert!(
        matches!(reason, DisconnectReason::ProtocolError(_)),
        "{reason:?}"
    );
    assert_eq!(bad.recv().await, None);

    good.send(Message::Ping(Ping {
        capacity: capacity(),
        running: 0,
    }))
    .await;
    assert!(matches!(good.recv().await, Some(Message::Pong(_))));
    match harness.next_event().await {
        WorkerEvent::Ping { conn, .. } => assert_eq!(conn, good_session.conn()),
        other => panic!("expected ping, got {other:?}"),
    }
    harness.stop().await;
}

#[tokio::test]
async fn frame_over_the_limit_closes_the_connection() {
    // Goal: a length prefix above max_frame_size is a protocol error for that connection.
    let mut harness = Harness::start(|config| config.max_frame_size = MIN_MAX_FRAME_SIZE).await;
    let (mut worker, _session) = harness.admitted("w1").await;
    worker
        .framed
        .get_mut()
        .write_u32(MIN_MAX_FRAME_SIZE as u32 + 1)
        .await
        .unwrap();
    let (_, reason) = harness.expect_disconnected().await;
    match reason {
        DisconnectReason::ProtocolError(text) => assert!(text.contains("exceeds"), "{text}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    harness.stop().await;
}

#[tokio::test]
async fn finish_reports_become_events_and_acks_reach_the_worker() {
    // Goal: a Finished frame is forwarded with its seq; ack_finished sends FinishedAck.
    let mut harness = Harness::start(|_| {}).await;
    let (mut worker, session) = harness.admitted("w1").await;
    let report = FinishReport {
        task_id: 7,
        attempt: 2,
        outcome: Outcome::Finished as i32,
        result: "ok".into(),
        retry_after_ms: 0,
    };
    worker
        .send(Message::Finished(Finished {
            seq: 3,
            reports: vec![report.clone()],
        }))
        .await;
    match harness.next_event().await {
        WorkerEvent::Finished {
            seq,
            reports,
            worker_id,
            ..
        } => {
            assert_eq!((seq, worker_id.as_str()), (3, "w1"));
            assert_eq!(reports, vec![report]);
        }
        other => panic!("expected finished, got {other:?}"),
    }
    session.ack_finished(3).unwrap();
    match worker.recv().await {
        Some(Message::FinishedAck(ack)) => assert_eq!(ack.seq, 3),
        other => panic!("expected ack, got {other:?}"),
    }
    harness.stop().await;
}

#[tokio::test]
async fn assignments_are_split_into_frames_within_the_limit() {
    // Goal: a batch larger than one frame arrives as several Assign frames, complete and in order.
    let max = MIN_MAX_FRAME_SIZE;
    let mut harness = Harness::start(|config| config.max_frame_size = max).await;
    let (mut worker, session) = harness.admitted("w1").await;
    let batch: Vec<_> = (1..=20).map(|id| assignment(id, 700)).collect();
    session.assign(batch.clone()).unwrap();
    let mut received = Vec::new();
    let mut frames = 0;
    while received.len() < batch.len() {
        match worker.recv().await {
            Some(Message::Assign(assign)) => {
                assert!(encoded_body_len(&Message::Assign(assign.clone())) <= max);
                frames += 1;
                received.extend(assign.assignments);
            }
            other => panic!("expected assign, got {other:?}"),
        }
    }
    assert!(frames > 1);
    assert_eq!(received, batch);
    harness.stop().await;
}

#[tokio::test]
async fn assignment_too_large_for_any_frame_is_refused_and_handed_back() {
    // Goal: the dispatcher learns which task cannot be sent; nothing of the batch is sent.
    let mut harness = Harness::start(|config| config.max_frame_size = MIN_MAX_FRAME_SIZE).await;
    let (_worker, session) = harness.admitted("w1").await;
    let batch = vec![assignment(1, 10), assignment(2, MIN_MAX_FRAME_SIZE)];
    let err = session.assign(batch.clone()).unwrap_err();
    assert!(matches!(
        err.error,
        SessionError::AssignmentTooLarge { task_id: 2, .. }
    ));
    let handed_back: Vec<Assignment> = err.assignments.into_iter().map(|o| o.assignment).collect();
    assert_eq!(handed_back, batch);
    harness.stop().await;
}

#[tokio::test]
async fn task_shapes_are_defined_once_per_connection_for_workers_that_know_them() {
    // Goal: to a worker that announced task shapes, a shape goes once, in a frame before the
    // first assignment naming it, and assignments name it by id; to one that did not, every
    // assignment carries its resources and needs; each connection defines its own; an
    // assignment that is too large counting its shape inline is refused.
    let mut harness = Harness::start(|config| config.max_frame_size = MIN_MAX_FRAME_SIZE).await;
    let shape = Arc::new(Shape::new(
        vec!["db".into()],
        [("cpu".to_owned(), 250)].into(),
    ));
    let outgoing = |id| Outgoing {
        assignment: assignment(id, 1),
        shape: Some(shape.clone()),
    };
    let (mut new, new_session) = harness.admitted_with("w1", true).await;
    new_session.assign(vec![outgoing(1), outgoing(2)]).unwrap();
    new_session.assign(vec![outgoing(3)]).unwrap();
    let mut frames = Vec::new();
    while frames
        .iter()
        .map(|a: &Assign| a.assignments.len())
        .sum::<usize>()
        < 3
    {
        match new.recv().await {
            Some(Message::Assign(assign)) => frames.push(assign),
            other => panic!("expected assign, got {other:?}"),
        }
    }
    assert_eq!(
        frames[0],
        Assign {
            assignments: Vec::new(),
            shapes: vec![TaskShape {
                id: 1,
                resources: vec!["db".into()],
                needs: [("cpu".to_owned(), 250)].into(),
            }],
        }
    );
    let sent: Vec<&Assignment> = frames.iter().flat_map(|a| &a.assignments).collect();
    assert!(
        frames[1..].iter().all(|a| a.shapes.is_empty()),
        "defined once"
    );
    assert!(
        sent.iter()
            .all(|a| a.shape == 1 && a.resources.is_empty() && a.needs.is_empty())
    );

    let (mut old, old_session) = harness.admitted_with("w2", false).await;
    old_session.assign(vec![outgoing(4)]).unwrap();
    match old.recv().await {
        Some(Message::Assign(assign)) => {
            assert!(assign.shapes.is_empty());
            assert_eq!(assign.assignments, [outgoing(4).into_inline()]);
            assert_eq!(assign.assignments[0].resources, ["db"]);
        }
        other => panic!("expected assign, got {other:?}"),
    }

    let (mut other, other_session) = harness.admitted_with("w3", true).await;
    other_session.assign(vec![outgoing(5)]).unwrap();
    match other.recv().await {
        Some(Message::Assign(assign)) => assert_eq!(assign.shapes.len(), 1, "its own definition"),
        other => panic!("expected assign, got {other:?}"),
    }
    let big = Arc::new(Shape::new(
        vec!["r".repeat(MIN_MAX_FRAME_SIZE)],
        Default::default(),
    ));
    let err = other_session
        .assign(vec![Outgoing {
            assignment: assignment(6, 1),
            shape: Some(big),
        }])
        .unwrap_err();
    assert!(matches!(
        err.error,
        SessionError::AssignmentTooLarge { task_id: 6, .. }
    ));
    harness.stop().await;
}

#[tokio::test]
async fn full_outbound_queue_is_reported_without_blocking() {
    // Goal: when the connection cannot drain its queue, assign fails at once with QueueFull
    // and hands the assignments back.
    let mut harness = Harness::start_with_events(|config| config.outbound_queue = 1, 1).await;
    let (mut worker, session) = harness.admitted("w1").await;
    // Two pings: the first event fills the channel of one, so the connection task then waits
    // on the second and stops draining its queue. Both pongs prove it got that far.
    for _ in 0..2 {
        worker
            .send(Message::Ping(Ping {
                capacity: capacity(),
                running: 0,
            }))
            .await;
        assert!(matches!(worker.recv().await, Some(Message::Pong(_))));
    }
    session.assign(vec![assignment(1, 1)]).unwrap();
    let err = session.assign(vec![assignment(2, 1)]).unwrap_err();
    assert_eq!(
        err.error,
        SessionError::QueueFull {
            conn: session.conn()
        }
    );
    assert_eq!(err.assignments, vec![Outgoing::from(assignment(2, 1))]);
    // Once the dispatcher drains events, the queued assignment is delivered.
    assert!(matches!(
        harness.next_event().await,
        WorkerEvent::Ping { .. }
    ));
    assert!(matches!(
        harness.next_event().await,
        WorkerEvent::Ping { .. }
    ));
    match worker.recv().await {
        Some(Message::Assign(assign)) => assert_eq!(assign.assignments, vec![assignment(1, 1)]),
        other => panic!("expected assign, got {other:?}"),
    }
    harness.stop().await;
}

#[tokio::test]
async fn kill_sends_kill_and_disconnects() {
    // Goal: kill reaches the worker as a Kill frame, then the connection ends.
    let mut harness = Harness::start(|_| {}).await;
    let (mut worker, session) = harness.admitted("w1").await;
    session.kill("process id changed");
    match worker.recv().await {
        Some(Message::Kill(kill)) => assert_eq!(kill.reason, "process id changed"),
        other => panic!("expected kill, got {other:?}"),
    }
    assert_eq!(worker.recv().await, None);
    let (_, reason) = harness.expect_disconnected().await;
    assert!(matches!(reason, DisconnectReason::ClosedByBroker(text) if text.contains("killed")));
    assert!(matches!(
        session.ack_finished(1),
        Err(SessionError::Closed { .. })
    ));
    harness.stop().await;
}

#[tokio::test]
async fn replaced_session_reports_replaced() {
    // Goal: closing a session as replaced closes the socket and reports that reason.
    let mut harness = Harness::start(|_| {}).await;
    let (mut worker, session) = harness.admitted("w1").await;
    session.close(CloseReason::Replaced);
    assert_eq!(worker.recv().await, None);
    assert_eq!(
        harness.expect_disconnected().await.1,
        DisconnectReason::Replaced
    );
    harness.stop().await;
}

#[tokio::test]
async fn worker_shutdown_frame_reports_shutdown() {
    // Goal: a graceful stop from the worker is told apart from a dropped connection.
    let mut harness = Harness::start(|_| {}).await;
    let (mut worker, _session) = harness.admitted("w1").await;
    worker.send(Message::Shutdown(Shutdown {})).await;
    assert_eq!(
        harness.expect_disconnected().await.1,
        DisconnectReason::Shutdown
    );
    harness.stop().await;
}

#[tokio::test]
async fn stopping_the_listener_disconnects_every_worker() {
    // Goal: run returns after shutdown, each connection reporting ListenerStopped.
    let mut harness = Harness::start(|_| {}).await;
    let (mut w1, _s1) = harness.admitted("w1").await;
    let (mut w2, _s2) = harness.admitted("w2").await;
    let _ = harness.stop.take().unwrap().send(());
    for _ in 0..2 {
        assert_eq!(
            harness.expect_disconnected().await.1,
            DisconnectReason::ListenerStopped
        );
    }
    assert_eq!(w1.recv().await, None);
    assert_eq!(w2.recv().await, None);
    tokio::time::timeout(WAIT, harness.listener)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn invalid_config_is_refused_before_accepting() {
    // Goal: contradictory timeouts are a config error, not a silently broken listener.
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ListenerConfig::new("b", SharedSecret::new(SECRET));
    config.keepalive_interval = config.max_worker_idle_time;
    let (events, _rx) = mpsc::channel(1);
    let result = run(socket, config, events, std::future::pending()).await;
    assert!(result.is_err());
}

/// Whether the broker closes `socket` within `limit` (a read returns end of stream or an error)
/// rather than keeping it open.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn pre_authentication_hello_larger_than_a_hello_is_refused_at_once() {
    // Goal: before the proof is checked, a length prefix far below max_frame_size but above
    // what a Hello needs closes the connection at once instead of buffering the frame.
    let mut harness = Harness::start(|config| config.handshake_timeout = WAIT * 3).await;
    let mut socket = TcpStream::connect(harness.addr).await.unwrap();
    socket.write_u32(1024 * 1024).await.unwrap();
    socket.write_all(&[0u8; 1024]).await.unwrap();
    assert!(
        closed_within(&mut socket, WAIT).await,
        "a 1 MiB pre-authentication frame must close the connection before the handshake timeout"
    );
    // The port still admits a well-behaved worker.
    let (_worker, _session) = harness.admitted("w1").await;
    harness.stop().await;
}

#[tokio::test]
async fn pre_authentication_connect_over_the_handshake_cap_is_refused() {
    // Goal: the Connect frame (still before authentication) is capped by
    // max_handshake_frame_size, not by max_frame_size.
    let mut harness = Harness::start(|config| {
        config.handshake_timeout = WAIT * 3;
        config.max_handshake_frame_size = MIN_MAX_FRAME_SIZE;
    })
    .await;
    let mut worker = RawWorker::connect(harness.addr, "w1").await;
    worker
        .send(Message::Hello(Hello {
            worker_id: "w1".into(),
            process_id: "p".into(),
            location: "test".into(),
            client_nonce: worker.client_nonce.to_vec(),
            credential_id: String::new(),
        }))
        .await;
    match worker.recv().await {
        Some(Message::Challenge(_)) => {}
        other => panic!("expected challenge, got {other:?}"),
    }
    let socket = worker.framed.get_mut();
    socket
        .write_u32(MIN_MAX_FRAME_SIZE as u32 + 1)
        .await
        .unwrap();
    assert!(
        closed_within(socket, WAIT).await,
        "an oversized Connect must close the connection before the handshake timeout"
    );
    let (_worker, _session) = harness.admitted("w2").await;
    harness.stop().await;
}

#[tokio::test]
async fn handshake_that_trickles_is_closed_at_the_handshake_timeout() {
    // Goal: a slowloris sending its Hello a byte at a time is closed at handshake_timeout.
    let mut harness = Harness::start(|config| {
        config.handshake_timeout = Duration::from_millis(800);
    })
    .await;
    let mut socket = TcpStream::connect(harness.addr).await.unwrap();
    let hello = Envelope {
        version: PROTOCOL_VERSION,
        message: Some(Message::Hello(Hello {
            worker_id: "slow".into(),
            process_id: "p".into(),
            location: "l".into(),
            client_nonce: random_nonce().to_vec(),
            credential_id: String::new(),
        })),
    }
    .encode_to_vec();
    let mut bytes = (hello.len() as u32).to_be_bytes().to_vec();
    bytes.extend(hello);
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in bytes {
        if socket.write_all(&[byte]).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut socket, Duration::from_millis(200)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickling handshake must be closed");
    let took = started.elapsed();
    assert!(
        took < WAIT,
        "closed after {took:?}, expected about the handshake timeout"
    );
    let (_worker, _session) = harness.admitted("w1").await;
    harness.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_bounded() {
    // Goal: one IP address cannot hold more than max_connections_per_address connections;
    // another address still gets in, and a slot freed is usable again.
    let mut harness = Harness::start(|config| {
        config.max_connections_per_address = 3;
        config.handshake_timeout = WAIT * 3;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(harness.addr).await.unwrap());
    }
    let mut over = TcpStream::connect(harness.addr).await.unwrap();
    assert!(
        closed_within(&mut over, WAIT).await,
        "the fourth connection from one address must be closed"
    );
    // Another loopback address is not affected.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let socket = other.connect(harness.addr).await.unwrap();
    let mut worker = RawWorker {
        framed: Framed::new(socket, WorkerCodec::default()),
        worker_id: "w2".into(),
        process_id: "w2-process".into(),
        client_nonce: random_nonce(),
        task_shapes: false,
    };
    worker.send_hello_and_connect(SECRET).await;
    let (_, hello, reply) = harness.expect_connected().await;
    assert_eq!(hello.peer.ip().to_string(), "127.0.0.2");
    let _session = reply.accept();
    // A freed slot can be taken again.
    drop(idle.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut socket = TcpStream::connect(harness.addr).await.unwrap();
        if !closed_within(&mut socket, Duration::from_millis(100)).await {
            again = Some(socket);
            break;
        }
    }
    assert!(again.is_some(), "a freed slot is usable again");
    harness.stop().await;
}
