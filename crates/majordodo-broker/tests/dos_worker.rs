//! Denial-of-service battery of the worker port, bounded in time: while unauthenticated peers
//! attack the port from 127.0.0.2, a legitimate worker agent connected from 127.0.0.1 keeps
//! running what a client submits. Each attack prints the submit→finish latencies it saw.
//!
//! Attacks: a slowloris sending a handshake a byte every second; garbage bytes and huge length
//! prefixes; many pre-authentication connections held open from one address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, SystemClock};
use majordodo_core::leader::{SubmitOutcome, SubmitRequest};
use majordodo_core::{DefaultGroupMapper, TaskStatus};
use majordodo_log::{CommitLog, FileLog, FileLogConfig};
use majordodo_proto::worker::{Capacity, Envelope, Hello, Message, PROTOCOL_VERSION, SharedSecret};
use majordodo_worker::{Executors, TaskFailure, WorkerConfig, executor_fn};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "dos-secret";
/// Handshake timeout of the broker under attack.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// Connections allowed per address.
const PER_ADDRESS: usize = 32;
/// How long each attack lasts.
const ATTACK: Duration = Duration::from_secs(5);
/// Bound on one submit→finish round trip, so a broken broker fails instead of hanging.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(15);

struct Setup {
    _dir: tempfile::TempDir,
    broker: Option<Broker>,
    handle: BrokerHandle,
    addr: SocketAddr,
    stop: CancellationToken,
    listener: tokio::task::JoinHandle<()>,
    log: Arc<dyn CommitLog>,
    worker: tokio::task::JoinHandle<()>,
    worker_stop: CancellationToken,
}

async fn setup(handshake_timeout: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = FileLog::open(dir.path().join("log"), FileLogConfig::default()).unwrap();
    let log: Arc<dyn CommitLog> = Arc::new(log);
    let stop = CancellationToken::new();
    let broker = Broker::start(
        BrokerConfig::default(),
        log.clone(),
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut lc = ListenerConfig::new("dos-broker", SharedSecret::new(SECRET));
    lc.handshake_timeout = handshake_timeout;
    lc.max_connections_per_address = PER_ADDRESS;
    let events = broker.worker_events();
    let s = stop.clone();
    let listener = tokio::spawn(async move {
        worker_listener::run(tcp, lc, events, s.cancelled_owned())
            .await
            .unwrap();
    });
    let mut wc = WorkerConfig::new(addr.to_string(), SharedSecret::new(SECRET));
    wc.worker_id = "legit".into();
    wc.capacity = Capacity {
        max_threads: 4,
        groups: vec![0],
        ..Capacity::default()
    };
    wc.reconnect_backoff.initial = Duration::from_millis(20);
    wc.reconnect_backoff.max = Duration::from_millis(200);
    let executors = Executors::new().with(
        "echo",
        executor_fn(|t| async move { Ok::<_, TaskFailure>(t.data) }),
    );
    let worker_stop = CancellationToken::new();
    let ws = worker_stop.clone();
    let worker = tokio::spawn(async move {
        let _ = majordodo_worker::run(wc, executors, ws.cancelled_owned()).await;
    });
    let handle = broker.handle();
    // The worker is connected before any attack starts.
    let deadline = Instant::now() + ROUND_TRIP_LIMIT;
    loop {
        let connected = handle
            .query(|v| v.state.workers().any(|w| w.status.as_str() == "CONNECTED"))
            .await
            .unwrap();
        if connected {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Setup {
        _dir: dir,
        broker: Some(broker),
        handle,
        addr,
        stop,
        listener,
        log,
        worker,
        worker_stop,
    }
}

impl Setup {
    async fn teardown(mut self) {
        self.worker_stop.cancel();
        let _ = self.worker.await;
        self.stop.cancel();
        self.listener.await.unwrap();
        self.broker.take().unwrap().wait().await.unwrap();
        self.log.close().await.unwrap();
    }

    /// Submits one task and waits until it finished; returns how long that took.
    async fn round_trip(&self, n: usize) -> Duration {
        let started = Instant::now();
        let outcome = self
            .handle
            .submit(vec![SubmitRequest {
                task_type: "echo".into(),
                user_id: "client".into(),
                data: format!("round {n}"),
                max_attempts: 1,
                ..Default::default()
            }])
            .await
            .expect("submit");
        let SubmitOutcome::Accepted(id) = outcome[0].clone() else {
            panic!("not created: {outcome:?}")
        };
        loop {
            let status = self
                .handle
                .query(move |v| v.state.task(id).map(|t| t.status))
                .await
                .unwrap();
            if status == Some(TaskStatus::Finished) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < ROUND_TRIP_LIMIT,
                "round {n}: task not finished after {ROUND_TRIP_LIMIT:?} (status {status:?})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs client round trips for `ATTACK` while `attack` runs, then stops the attack; prints
    /// the latencies.
    async fn under_attack<F>(&self, name: &str, attack: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let attacker = tokio::spawn(attack);
        // Let the attack take hold first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let mut latencies = Vec::new();
        while started.elapsed() < ATTACK && latencies.len() < 200 {
            latencies.push(self.round_trip(latencies.len()).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        attacker.abort();
        let _ = attacker.await;
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name}: {} submit→finish round trips, median {:.1} ms, max {:.1} ms",
            latencies.len(),
            ms(latencies[latencies.len() / 2]),
            ms(*latencies.last().unwrap())
        );
        assert!(!latencies.is_empty(), "{name}: no round trip completed");
    }
}

/// A connection to the worker port from 127.0.0.2, the attacker's address.
async fn attacker_connection(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().unwrap())?;
    socket.connect(addr).await
}

/// Whether the broker closes `socket` within `limit`.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn hello_frame() -> Vec<u8> {
    let body = Envelope {
        version: PROTOCOL_VERSION,
        message: Some(Message::Hello(Hello {
            worker_id: "intruder".into(),
            process_id: "p".into(),
            location: "l".into(),
            client_nonce: vec![7; 32],
            credential_id: String::new(),
        })),
    }
    .encode_to_vec();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_worker_port_is_cut_at_the_handshake_timeout() {
    // Goal: connections that send a handshake a byte every second are closed by the handshake
    // timeout, and the legitimate client's tasks keep finishing meanwhile.
    let s = setup(HANDSHAKE).await;
    let addr = s.addr;
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel();
    s.under_attack("slowloris", async move {
        let mut set = JoinSet::new();
        for _ in 0..PER_ADDRESS {
            set.spawn(async move {
                let Ok(mut socket) = attacker_connection(addr).await else {
                    return None;
                };
                let started = Instant::now();
                for byte in hello_frame() {
                    if socket.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    if closed_within(&mut socket, Duration::from_secs(1)).await {
                        break;
                    }
                }
                Some(started.elapsed())
            });
        }
        let mut longest = Duration::ZERO;
        while let Some(Ok(took)) = set.join_next().await {
            longest = longest.max(took.unwrap_or_default());
        }
        let _ = cut_tx.send(longest);
    })
    .await;
    // The attack ran for ATTACK: every trickling connection was cut near HANDSHAKE (a hello
    // needs about 60 bytes, so an uncut one would still be trickling).
    let longest = tokio::time::timeout(Duration::from_secs(1), cut_rx)
        .await
        .expect("the attack ended")
        .expect("every slowloris connection was cut before the attack window ended");
    assert!(longest < HANDSHAKE * 3, "a slowloris lasted {longest:?}");
    s.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_huge_length_prefixes_are_refused_at_once() {
    // Goal: garbage frames and length prefixes up to 4 GiB close the connection at once (no
    // buffering up to the frame limit before authentication); the client keeps working.
    let s = setup(HANDSHAKE).await;
    let addr = s.addr;
    // Each kind of bad first frame closes the connection well before the handshake timeout.
    let prefixes: [&[u8]; 5] = [
        &u32::MAX.to_be_bytes(),
        &(16 * 1024 * 1024u32).to_be_bytes(),
        &(1024 * 1024u32).to_be_bytes(),
        &[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for prefix in prefixes {
        let mut socket = attacker_connection(addr).await.unwrap();
        socket.write_all(prefix).await.unwrap();
        let _ = socket.write_all(&[0u8; 512]).await;
        assert!(
            closed_within(&mut socket, HANDSHAKE / 2).await,
            "first bytes {:?} did not close the connection at once",
            &prefix[..4]
        );
    }
    s.under_attack("garbage and huge prefixes", async move {
        let mut n = 0u32;
        loop {
            n = n.wrapping_add(1);
            let Ok(mut socket) = attacker_connection(addr).await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let bytes: Vec<u8> = if n.is_multiple_of(2) {
                (n | 0x0100_0000).to_be_bytes().to_vec()
            } else {
                (0..256u32)
                    .map(|i| (i.wrapping_mul(n).wrapping_add(31)) as u8)
                    .collect()
            };
            let _ = socket.write_all(&bytes).await;
            let _ = closed_within(&mut socket, Duration::from_millis(200)).await;
        }
    })
    .await;
    s.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pre_authentication_connections_from_one_address_are_bounded() {
    // Goal: 2 000 connections held open from one address get at most PER_ADDRESS slots; the
    // rest are closed at once, and a worker from another address still completes a handshake.
    // The handshake timeout is long here, so only the per-address bound can close them.
    let s = setup(Duration::from_secs(60)).await;
    let addr = s.addr;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..2_000 {
        match attacker_connection(addr).await {
            Ok(socket) => held.push(socket),
            Err(_) => refused += 1,
        }
    }
    let mut open = 0;
    for socket in &mut held {
        if !closed_within(socket, Duration::from_millis(2)).await {
            open += 1;
        }
    }
    // Closing is asynchronous: count again the ones that looked open.
    let mut still_open = 0;
    for socket in &mut held {
        if !closed_within(socket, Duration::from_millis(1)).await {
            still_open += 1;
        }
    }
    println!(
        "2000 connections from one address: {open} looked open, {still_open} stayed open, {refused} refused by connect"
    );
    assert!(
        still_open <= PER_ADDRESS,
        "{still_open} pre-authentication connections stayed open from one address"
    );
    // A handshake from the worker's own address is still served.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(&hello_frame()).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(ROUND_TRIP_LIMIT, socket.read_exact(&mut len))
        .await
        .expect("a challenge arrives while the flood holds its slots")
        .expect("the challenge is readable");
    drop(socket);
    s.under_attack("2000 pre-authentication connections", async move {
        // Keep the flood up: reopen what the broker closes.
        let mut held = held;
        loop {
            held.retain(|s| s.peer_addr().is_ok());
            for _ in 0..64 {
                if let Ok(socket) = attacker_connection(addr).await {
                    held.push(socket);
                }
            }
            held.truncate(2_000);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    s.teardown().await;
}
