//! One multiplexed TCP connection per bookie, shared by every ledger of a client.
//!
//! Callers submit requests without waiting; each gets a transaction id, its frame is appended
//! to the connection's output buffer, and its reply goes to a [`Sink`]: a oneshot for callers
//! that await one answer, or a callback for the ledger writer, which tracks many. A background
//! task per bookie owns the socket: it connects when work arrives, writes whatever is buffered
//! in one system call, reads and dispatches responses by transaction id, and fails requests
//! whose deadline passed. The connection guarantees that every submitted request is completed
//! exactly once: with the bookie's response, a timeout, or a connection failure. After a
//! failure the next request reconnects.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{BkError, BookieStatus};
use crate::frame;
use crate::proto::{Request, Response};

/// How often pending requests are checked against their deadlines. Timeouts are seconds long,
/// so 20 ms of slack is negligible while keeping an idle-free check cheap.
const SWEEP_INTERVAL: Duration = Duration::from_millis(20);

/// Initial size of the socket read buffer: many small responses fit in one read.
const READ_BUFFER_SIZE: usize = 64 * 1024;

/// The outcome of one request.
pub(crate) type Reply = Result<Response, BkError>;

/// Receives replies of requests submitted with [`Sink::Callback`].
///
/// `deliver` is called from the connection task with no connection lock held; it must not
/// block for long.
pub(crate) trait ReplySink: Send + Sync + 'static {
    /// Handles the reply of the request tagged `tag`.
    fn deliver(&self, tag: u64, reply: Reply);
}

/// Where the reply of a request goes.
pub(crate) enum Sink {
    /// To one awaiting caller.
    Oneshot(oneshot::Sender<Reply>),
    /// To a long-lived handler, with a tag of its choosing.
    Callback(Arc<dyn ReplySink>, u64),
}

impl Sink {
    fn complete(self, reply: Reply) {
        match self {
            // The caller may have stopped waiting: nothing to do then.
            Sink::Oneshot(tx) => drop(tx.send(reply)),
            Sink::Callback(sink, tag) => sink.deliver(tag, reply),
        }
    }
}

/// Resolves a bookie id to a socket address (registration data, or the id itself).
pub(crate) trait Resolver: Send + Sync + 'static {
    /// Looks up the address of `bookie_id`.
    fn resolve(&self, bookie_id: String) -> BoxFuture<'static, Result<SocketAddr, BkError>>;
}

/// Settings of bookie connections.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionConfig {
    /// Limit on establishing a TCP connection (including address resolution).
    pub connect_timeout: Duration,
    /// Limit on requests awaiting a reply on one connection.
    pub max_in_flight: usize,
}

struct PendingRequest {
    sink: Sink,
    deadline: Instant,
    operation: &'static str,
}

struct Inner {
    /// Requests awaiting a reply, by transaction id.
    pending: HashMap<u64, PendingRequest>,
    /// Deadlines of pending requests, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Encoded frames not yet written to the socket.
    out: BytesMut,
    /// Next transaction id; unique on this connection.
    next_txn: u64,
    /// Set when the client shuts down: no more requests are accepted.
    closed: bool,
}

struct Shared {
    bookie_id: String,
    config: ConnectionConfig,
    inner: Mutex<Inner>,
    /// Wakes the task: work arrived, bytes to write, or shutdown.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unavailable(&self, reason: impl Into<String>) -> BkError {
        BkError::BookieUnavailable {
            bookie: self.bookie_id.clone(),
            reason: reason.into(),
        }
    }

    /// Removes every pending request and completes each with `error`.
    fn fail_all(&self, error: &BkError) {
        let drained: Vec<PendingRequest> = {
            let mut inner = self.lock();
            inner.out.clear();
            inner.deadlines.clear();
            inner.pending.drain().map(|(_, p)| p).collect()
        };
        if !drained.is_empty() {
            debug!(bookie = %self.bookie_id, count = drained.len(), %error, "failing pending requests");
        }
        for pending in drained {
            pending.sink.complete(Err(error.clone()));
        }
    }

    /// Completes requests whose deadline has passed with a timeout.
    fn sweep(&self, now: Instant) {
        let expired: Vec<PendingRequest> = {
            let mut inner = self.lock();
            let mut expired = Vec::new();
            while let Some(&(deadline, txn)) = inner.deadlines.first() {
                if deadline > now {
                    break;
                }
                inner.deadlines.pop_first();
                if let Some(pending) = inner.pending.remove(&txn) {
                    expired.push(pending);
                }
            }
            expired
        };
        for pending in expired {
            let what = format!("{} on bookie {}", pending.operation, self.bookie_id);
            pending.sink.complete(Err(BkError::Timeout { what }));
        }
    }

    fn dispatch(&self, response: Response) {
        let txn = response.header.txn_id;
        let pending = {
            let mut inner = self.lock();
            let pending = inner.pending.remove(&txn);
            if let Some(p) = &pending {
                inner.deadlines.remove(&(p.deadline, txn));
            }
            pending
        };
        match pending {
            Some(pending) => pending.sink.complete(Ok(response)),
            // A reply after its request timed out.
            None => debug!(bookie = %self.bookie_id, txn, "reply for unknown request"),
        }
    }
}

/// A handle on the connection to one bookie.
pub(crate) struct BookieConnection {
    shared: Arc<Shared>,
}

impl BookieConnection {
    /// Creates the connection and its task; nothing connects until the first request.
    pub(crate) fn new(
        bookie_id: String,
        config: ConnectionConfig,
        resolver: Arc<dyn Resolver>,
    ) -> BookieConnection {
        let shared = Arc::new(Shared {
            bookie_id,
            config,
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                deadlines: BTreeSet::new(),
                out: BytesMut::new(),
                next_txn: 1,
                closed: false,
            }),
            wake: Notify::new(),
        });
        tokio::spawn(run(shared.clone(), resolver));
        BookieConnection { shared }
    }

    /// The bookie id.
    pub(crate) fn bookie_id(&self) -> &str {
        &self.shared.bookie_id
    }

    /// Queues the request built by `build` (given its transaction id) for sending. The reply,
    /// a timeout after `timeout`, or a connection failure goes to `sink`. When the request cannot
    /// even be queued, the sink is handed back with the error and nothing is delivered to it.
    pub(crate) fn submit(
        &self,
        build: impl FnOnce(u64) -> Request,
        operation: &'static str,
        timeout: Duration,
        sink: Sink,
    ) -> Result<(), (Sink, BkError)> {
        let shared = &self.shared;
        let was_idle = {
            let mut inner = shared.lock();
            if inner.closed {
                return Err((sink, BkError::ClientClosed));
            }
            if inner.pending.len() >= shared.config.max_in_flight {
                let error = BkError::BookieError {
                    bookie: shared.bookie_id.clone(),
                    status: BookieStatus::TooManyRequests,
                };
                return Err((sink, error));
            }
            let txn = inner.next_txn;
            inner.next_txn += 1;
            let request = build(txn);
            let was_idle = inner.out.is_empty();
            frame::encode_request(&request, &mut inner.out);
            let deadline = Instant::now() + timeout;
            inner.deadlines.insert((deadline, txn));
            inner.pending.insert(
                txn,
                PendingRequest {
                    sink,
                    deadline,
                    operation,
                },
            );
            was_idle
        };
        if was_idle {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// Sends a request and waits for its reply (or timeout, or connection failure).
    pub(crate) async fn call(
        &self,
        build: impl FnOnce(u64) -> Request,
        operation: &'static str,
        timeout: Duration,
    ) -> Reply {
        let (tx, rx) = oneshot::channel();
        if let Err((_, error)) = self.submit(build, operation, timeout, Sink::Oneshot(tx)) {
            return Err(error);
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(self.shared.unavailable("connection task stopped")),
        }
    }

    /// Stops accepting requests and fails those pending; the task then exits.
    pub(crate) fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.fail_all(&BkError::ClientClosed);
        self.shared.wake.notify_one();
    }
}

/// The connection task: connect when there is work, serve until the socket fails, repeat.
async fn run(shared: Arc<Shared>, resolver: Arc<dyn Resolver>) {
    loop {
        // Wait for work.
        loop {
            {
                let inner = shared.lock();
                if inner.closed {
                    return;
                }
                if !inner.pending.is_empty() {
                    break;
                }
            }
            shared.wake.notified().await;
        }
        let connect = async {
            let addr = resolver.resolve(shared.bookie_id.clone()).await?;
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| shared.unavailable(format!("connect to {addr}: {e}")))?;
            // Small requests must not wait for Nagle's algorithm.
            stream
                .set_nodelay(true)
                .map_err(|e| shared.unavailable(format!("set nodelay: {e}")))?;
            Ok::<_, BkError>((addr, stream))
        };
        let (addr, stream) =
            match tokio::time::timeout(shared.config.connect_timeout, connect).await {
                Ok(Ok(connected)) => connected,
                Ok(Err(error)) => {
                    warn!(bookie = %shared.bookie_id, %error, "cannot connect to bookie");
                    shared.fail_all(&error);
                    continue;
                }
                Err(_) => {
                    let error = shared.unavailable("connect timed out");
                    warn!(bookie = %shared.bookie_id, "connect to bookie timed out");
                    shared.fail_all(&error);
                    continue;
                }
            };
        debug!(bookie = %shared.bookie_id, %addr, "connected to bookie");
        let (read_half, write_half) = stream.into_split();
        let error = tokio::select! {
            error = write_loop(&shared, write_half) => error,
            error = read_loop(&shared, read_half) => error,
            error = sweep_loop(&shared) => error,
        };
        if matches!(error, BkError::ClientClosed) {
            shared.fail_all(&error);
            return;
        }
        warn!(bookie = %shared.bookie_id, %error, "bookie connection lost");
        shared.fail_all(&error);
    }
}

async fn write_loop(shared: &Shared, mut socket: OwnedWriteHalf) -> BkError {
    let mut batch = BytesMut::new();
    loop {
        {
            let mut inner = shared.lock();
            if inner.closed {
                return BkError::ClientClosed;
            }
            if !inner.out.is_empty() {
                std::mem::swap(&mut batch, &mut inner.out);
            }
        }
        if batch.is_empty() {
            shared.wake.notified().await;
            continue;
        }
        if let Err(e) = socket.write_all(&batch).await {
            return shared.unavailable(format!("write: {e}"));
        }
        batch.clear();
    }
}

async fn read_loop(shared: &Shared, mut socket: OwnedReadHalf) -> BkError {
    let mut buf = BytesMut::with_capacity(READ_BUFFER_SIZE);
    loop {
        loop {
            match frame::next_frame(&mut buf) {
                Ok(Some(body)) => match Response::decode(body) {
                    Ok(response) => shared.dispatch(response),
                    Err(e) => {
                        return BkError::Protocol {
                            bookie: shared.bookie_id.clone(),
                            detail: format!("undecodable response: {e}"),
                        };
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    return BkError::Protocol {
                        bookie: shared.bookie_id.clone(),
                        detail: e.to_string(),
                    };
                }
            }
        }
        if buf.capacity() - buf.len() < READ_BUFFER_SIZE / 4 {
            buf.reserve(READ_BUFFER_SIZE);
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) => return shared.unavailable("connection closed by bookie"),
            Ok(_) => {}
            Err(e) => return shared.unavailable(format!("read: {e}")),
        }
    }
}

async fn sweep_loop(shared: &Shared) -> BkError {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = tick.tick().await;
        shared.sweep(now);
    }
}

/// The connections of one client, one per bookie id, created on first use.
pub(crate) struct BookiePool {
    config: ConnectionConfig,
    resolver: Arc<dyn Resolver>,
    connections: Mutex<HashMap<String, Arc<BookieConnection>>>,
}

impl BookiePool {
    /// An empty pool.
    pub(crate) fn new(config: ConnectionConfig, resolver: Arc<dyn Resolver>) -> BookiePool {
        BookiePool {
            config,
            resolver,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `bookie_id`.
    pub(crate) fn get(&self, bookie_id: &str) -> Arc<BookieConnection> {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(connection) = connections.get(bookie_id) {
            return connection.clone();
        }
        let connection = Arc::new(BookieConnection::new(
            bookie_id.to_string(),
            self.config.clone(),
            self.resolver.clone(),
        ));
        connections.insert(bookie_id.to_string(), connection.clone());
        connection
    }

    /// Connections for each bookie of an ensemble, in index order.
    pub(crate) fn ensemble(&self, bookies: &[String]) -> Vec<Arc<BookieConnection>> {
        bookies.iter().map(|b| self.get(b)).collect()
    }
}

impl Drop for BookiePool {
    fn drop(&mut self) {
        let connections = self
            .connections
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        for connection in connections.values() {
            connection.shutdown();
        }
    }
}

/// The entry body of a read response, if it carries one.
pub(crate) fn read_body(response: &Response) -> Option<Bytes> {
    response.read_response.as_ref().and_then(|r| r.body.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, BkPacketHeader};
    use bytes::BufMut;
    use tokio::net::TcpListener;

    struct Fixed(SocketAddr);

    impl Resolver for Fixed {
        fn resolve(&self, _bookie_id: String) -> BoxFuture<'static, Result<SocketAddr, BkError>> {
            let addr = self.0;
            Box::pin(async move { Ok(addr) })
        }
    }

    fn config() -> ConnectionConfig {
        ConnectionConfig {
            connect_timeout: Duration::from_secs(2),
            max_in_flight: 4,
        }
    }

    fn read_lac(ledger: i64) -> impl FnOnce(u64) -> Request {
        move |txn| frame::read_lac_request(txn, ledger)
    }

    /// Reads one request frame from a raw socket.
    async fn read_request(socket: &mut TcpStream) -> Request {
        let len = socket.read_u32().await.expect("length") as usize;
        let mut body = vec![0u8; len];
        socket.read_exact(&mut body).await.expect("body");
        Request::decode(&body[..]).expect("request decodes")
    }

    async fn write_response(socket: &mut TcpStream, txn: u64, ledger: i64) {
        let response = Response {
            header: BkPacketHeader {
                version: 3,
                operation: proto::op::READ_LAC,
                txn_id: txn,
                priority: None,
            },
            status: 0,
            read_lac_response: Some(proto::ReadLacResponse {
                status: 403,
                ledger_id: ledger,
                lac_body: None,
                last_entry_body: None,
            }),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        out.put_u32(response.encoded_len() as u32);
        response.encode(&mut out).expect("fits");
        socket.write_all(&out).await.expect("write");
    }

    #[tokio::test]
    async fn replies_are_matched_by_transaction_id_out_of_order() {
        // Goal: two pipelined requests answered in reverse order each get their own reply.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let first = read_request(&mut socket).await;
            let second = read_request(&mut socket).await;
            for request in [second, first] {
                let ledger = request.read_lac_request.expect("read lac").ledger_id;
                write_response(&mut socket, request.header.txn_id, ledger).await;
            }
            socket
        });
        let conn = BookieConnection::new("b".into(), config(), Arc::new(Fixed(addr)));
        let timeout = Duration::from_secs(5);
        let (a, b) = tokio::join!(
            conn.call(read_lac(10), "read lac", timeout),
            conn.call(read_lac(20), "read lac", timeout)
        );
        assert_eq!(
            a.expect("reply").read_lac_response.expect("lac").ledger_id,
            10
        );
        assert_eq!(
            b.expect("reply").read_lac_response.expect("lac").ledger_id,
            20
        );
        drop(server.await);
    }

    #[tokio::test]
    async fn silent_bookie_times_out_and_dropped_connection_fails_pending() {
        // Goal: no reply gives Timeout; a closed socket fails what is pending, then reconnects.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conn = BookieConnection::new("b".into(), config(), Arc::new(Fixed(addr)));
        let accept = tokio::spawn(async move {
            let (first, _) = listener.accept().await.expect("accept");
            (listener, first)
        });
        let reply = conn
            .call(read_lac(1), "read lac", Duration::from_millis(200))
            .await;
        assert!(matches!(reply, Err(BkError::Timeout { .. })), "{reply:?}");
        let (listener, first) = accept.await.expect("accepted");

        let pending = tokio::spawn({
            let conn_shared = conn.shared.clone();
            async move {
                let conn = BookieConnection {
                    shared: conn_shared,
                };
                conn.call(read_lac(2), "read lac", Duration::from_secs(10))
                    .await
            }
        });
        // Let the request reach the socket (after the one that timed out), then close it from
        // the server side.
        let mut first = first;
        let timed_out = read_request(&mut first).await;
        assert_eq!(timed_out.read_lac_request.expect("read lac").ledger_id, 1);
        let request = read_request(&mut first).await;
        assert_eq!(request.read_lac_request.expect("read lac").ledger_id, 2);
        drop(first);
        let reply = pending.await.expect("task");
        assert!(
            matches!(reply, Err(BkError::BookieUnavailable { .. })),
            "{reply:?}"
        );

        // The next request opens a new connection and succeeds.
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let request = read_request(&mut socket).await;
            write_response(&mut socket, request.header.txn_id, 3).await;
            socket
        });
        let reply = conn
            .call(read_lac(3), "read lac", Duration::from_secs(5))
            .await;
        assert!(reply.is_ok(), "{reply:?}");
        drop(server.await);
    }

    #[tokio::test]
    async fn garbage_from_bookie_closes_connection_with_protocol_error() {
        // Goal: an undecodable frame fails pending requests instead of panicking.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let _ = read_request(&mut socket).await;
            socket
                .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
                .await
                .expect("write");
            socket
        });
        let conn = BookieConnection::new("b".into(), config(), Arc::new(Fixed(addr)));
        let reply = conn
            .call(read_lac(1), "read lac", Duration::from_secs(5))
            .await;
        assert!(matches!(reply, Err(BkError::Protocol { .. })), "{reply:?}");
        drop(server.await);
    }

    #[tokio::test]
    async fn in_flight_limit_refuses_excess_requests() {
        // Goal: requests beyond max_in_flight are refused at once, not queued without bound.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conn = BookieConnection::new("b".into(), config(), Arc::new(Fixed(addr)));
        let mut receivers = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            assert!(
                conn.submit(
                    read_lac(1),
                    "read lac",
                    Duration::from_secs(5),
                    Sink::Oneshot(tx)
                )
                .is_ok()
            );
            receivers.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        let refused = conn.submit(
            read_lac(1),
            "read lac",
            Duration::from_secs(5),
            Sink::Oneshot(tx),
        );
        assert!(matches!(
            refused,
            Err((
                _,
                BkError::BookieError {
                    status: BookieStatus::TooManyRequests,
                    ..
                }
            ))
        ));
        conn.shutdown();
        for rx in receivers {
            assert!(matches!(rx.await, Ok(Err(BkError::ClientClosed))));
        }
        drop(listener);
    }
}
