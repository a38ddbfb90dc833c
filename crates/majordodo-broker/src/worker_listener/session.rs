//! What the listener hands the dispatcher: events, the admission decision, and the session
//! handle that pushes frames to one worker connection.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use majordodo_proto::worker::{Capacity, CodePoolData, CodePoolRequest, FinishReport, RunningTask};

use super::shape::Outgoing;
use tokio::sync::{mpsc, oneshot, watch};

/// Identifies one accepted TCP connection for the listener's lifetime. A worker that reconnects
/// gets a new id, so the dispatcher can tell a stale connection's events from the current one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// What an authenticated worker said about itself in its handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerHello {
    /// Stable name of the worker.
    pub worker_id: String,
    /// This run of the worker process; a new value means the worker restarted.
    pub process_id: String,
    /// Where the worker runs, as it describes itself.
    pub location: String,
    /// The socket address the connection came from.
    pub peer: SocketAddr,
    /// What the worker accepts to run.
    pub capacity: Capacity,
    /// Tasks the worker still executes or whose finish report it has not seen acknowledged.
    pub running: Vec<RunningTask>,
    /// The per-worker credential the worker named, with its proof: not checked yet (the
    /// dispatcher holds the verifiers). `None`: the worker proved the shared secret.
    pub credential: Option<CredentialClaim>,
}

/// A worker's claim of a per-worker credential, for the dispatcher to check against the
/// verifier in the state ([`majordodo_proto::worker::verify_credential_worker_proof`]).
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialClaim {
    /// The credential's id, from `Hello`.
    pub credential_id: String,
    /// The nonce the broker sent in `Challenge`.
    pub broker_nonce: [u8; 32],
    /// The worker's nonce, from `Hello`.
    pub client_nonce: Vec<u8>,
    /// The worker's proof, from `Connect`.
    pub proof: Vec<u8>,
}

impl fmt::Debug for CredentialClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialClaim")
            .field("credential_id", &self.credential_id)
            .finish_non_exhaustive()
    }
}

/// Why the dispatcher refuses a worker; sent to the worker in a `Reject` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why, for the worker's logs.
    pub reason: String,
    /// Whether the worker should try again later.
    pub retryable: bool,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The worker closed the socket, or reading or writing it failed.
    Closed,
    /// No frame arrived for `max_worker_idle_time` (pings included), although the socket may
    /// still be open.
    Idle,
    /// The worker broke the protocol; the text says how.
    ProtocolError(String),
    /// The worker announced a graceful shutdown.
    Shutdown,
    /// The dispatcher closed the connection because the same worker connected again.
    Replaced,
    /// The dispatcher rejected, closed or killed the connection, or did not admit it in time;
    /// the text says which.
    ClosedByBroker(String),
    /// The listener is stopping.
    ListenerStopped,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Closed => f.write_str("closed"),
            DisconnectReason::Idle => f.write_str("idle"),
            DisconnectReason::ProtocolError(text) => write!(f, "protocol error: {text}"),
            DisconnectReason::Shutdown => f.write_str("shutdown"),
            DisconnectReason::Replaced => f.write_str("replaced"),
            DisconnectReason::ClosedByBroker(text) => write!(f, "closed by broker: {text}"),
            DisconnectReason::ListenerStopped => f.write_str("listener stopped"),
        }
    }
}

/// Why the dispatcher closes a session, see [`WorkerSession::close`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection of the same worker took over.
    Replaced,
    /// Any other reason, for the logs.
    Other(String),
}

/// What the listener tells the dispatcher.
///
/// Events of one connection arrive in order. Every `Connected` is followed, sooner or later, by
/// exactly one `Disconnected` with the same `conn` (also when the dispatcher rejected it), and
/// nothing follows that `Disconnected`.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A worker proved the shared secret. The dispatcher must answer through `reply`:
    /// [`Admission::accept`] (the worker then gets its `Welcome`) or [`Admission::reject`].
    Connected {
        /// The connection.
        conn: ConnId,
        /// What the worker said about itself (boxed: it is by far the largest event).
        hello: Box<WorkerHello>,
        /// The dispatcher's answer.
        reply: Admission,
    },
    /// A batch of finish reports. Make them durable, then call [`WorkerSession::ack_finished`]
    /// with `seq`; the worker sends the batch again until then, so duplicates happen.
    Finished {
        /// The connection.
        conn: ConnId,
        /// The worker.
        worker_id: String,
        /// Batch number to acknowledge.
        seq: u64,
        /// The reports.
        reports: Vec<FinishReport>,
    },
    /// A keepalive with the worker's live capacity (the listener already answered it).
    Ping {
        /// The connection.
        conn: ConnId,
        /// The worker.
        worker_id: String,
        /// What the worker accepts now.
        capacity: Capacity,
        /// How many tasks the worker executes.
        running: u32,
    },
    /// The worker asks for a part of a code pool's archive; answer it with
    /// [`WorkerSession::code_pool_data`].
    CodePoolRequest {
        /// The connection.
        conn: ConnId,
        /// The worker.
        worker_id: String,
        /// What it asks for.
        request: CodePoolRequest,
    },
    /// The connection is gone.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// The worker.
        worker_id: String,
        /// Why.
        reason: DisconnectReason,
    },
}

/// The dispatcher's answer to a [`WorkerEvent::Connected`]. Dropping it without answering
/// rejects the worker with a retryable reason.
#[derive(Debug)]
pub struct Admission {
    /// Tells the connection task the decision (with the broker's credential proof, if any).
    reply: oneshot::Sender<Result<Option<[u8; 32]>, Rejection>>,
    /// The handle `accept` gives out.
    session: WorkerSession,
    /// The broker's proof for a credential claim, sent in `Welcome`.
    broker_proof: Option<[u8; 32]>,
}

impl Admission {
    pub(super) fn new(
        reply: oneshot::Sender<Result<Option<[u8; 32]>, Rejection>>,
        session: WorkerSession,
    ) -> Self {
        Admission {
            reply,
            session,
            broker_proof: None,
        }
    }

    /// Sets the broker's proof for the worker's credential claim, which the dispatcher
    /// checked; `Welcome` carries it.
    pub fn set_broker_proof(&mut self, proof: [u8; 32]) {
        self.broker_proof = Some(proof);
    }

    /// Admits the worker: its `Welcome` is sent before anything pushed through the returned
    /// session. If the connection gave up waiting meanwhile, the session reports
    /// [`SessionError::Closed`] and a `Disconnected` event follows.
    pub fn accept(self) -> WorkerSession {
        // A closed receiver means the connection is already gone; its Disconnected event
        // tells the dispatcher, so the failure needs no handling here.
        let _ = self.reply.send(Ok(self.broker_proof));
        self.session
    }

    /// Refuses the worker: it gets a `Reject` frame with this reason, then the connection closes.
    pub fn reject(self, rejection: Rejection) {
        let _ = self.reply.send(Err(rejection));
    }
}

/// A frame the dispatcher asked to send.
#[derive(Debug)]
pub(super) enum Outbound {
    Assign(Vec<Outgoing>),
    FinishedAck(u64),
    CodePoolData(Box<CodePoolData>),
    /// Cancelled attempts to stop: (task, attempt).
    Cancel(Vec<(u64, u32)>),
}

/// A request to end the connection, taking precedence over queued frames.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    Kill(String),
    Close(CloseReason),
}

/// The dispatcher's handle on one admitted connection.
///
/// Sending never waits: frames go to a bounded queue that the connection task drains, and a
/// full queue is reported as [`SessionError::QueueFull`] (the worker reads slower than the
/// dispatcher pushes; retry later or close the session). Dropping every clone of the session
/// closes the connection.
#[derive(Debug, Clone)]
pub struct WorkerSession {
    /// The connection this session pushes to.
    conn: ConnId,
    /// The worker on the other end.
    worker_id: Arc<str>,
    /// Frames for the connection task to write, bounded by `outbound_queue`.
    outbound: mpsc::Sender<Outbound>,
    /// Kill or close requests; a separate channel so they are never stuck behind a full queue.
    stop: Arc<watch::Sender<Option<Stop>>>,
    /// Frame size limit, to refuse assignments that cannot fit any frame.
    max_frame_size: usize,
}

/// Why a [`WorkerSession`] could not take a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The connection's outbound queue is full. Retryable: try again after some frames were
    /// written, or close the session if the worker does not keep up.
    #[error("outbound queue of {conn} is full")]
    QueueFull {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is closed (a `Disconnected` event follows, if it has not already).
    /// Not retryable on this session.
    #[error("{conn} is closed")]
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// One assignment alone does not fit in a frame. Not retryable: fail that task.
    #[error("assignment of task {task_id} needs {len} bytes, over the frame limit of {max}")]
    AssignmentTooLarge {
        /// The connection.
        conn: ConnId,
        /// The task that does not fit.
        task_id: u64,
        /// Its encoded size in a frame of its own.
        len: usize,
        /// The frame limit.
        max: usize,
    },
}

/// A failed [`WorkerSession::assign`]: the error and the assignments, none of which was sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct AssignError {
    /// Why.
    #[source]
    pub error: SessionError,
    /// The assignments handed back.
    pub assignments: Vec<Outgoing>,
}

impl WorkerSession {
    pub(super) fn new(
        conn: ConnId,
        worker_id: Arc<str>,
        outbound: mpsc::Sender<Outbound>,
        stop: Arc<watch::Sender<Option<Stop>>>,
        max_frame_size: usize,
    ) -> Self {
        WorkerSession {
            conn,
            worker_id,
            outbound,
            stop,
            max_frame_size,
        }
    }

    /// The connection this session pushes to.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The worker on the other end.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Queues assignments; the connection names their shapes (defining new ones first) and
    /// splits them into as many `Assign` frames as the frame size requires.
    ///
    /// # Errors
    /// [`AssignError`] with every assignment handed back: the queue is full, the connection is
    /// closed, or one assignment is too large for any frame (counting its shape inline).
    pub fn assign<A: Into<Outgoing>>(&self, assignments: Vec<A>) -> Result<(), AssignError> {
        let assignments: Vec<Outgoing> = assignments.into_iter().map(Into::into).collect();
        if let Some(error) = assignments.iter().find_map(|a| {
            let len = a.inline_frame_len();
            (len > self.max_frame_size).then_some(SessionError::AssignmentTooLarge {
                conn: self.conn,
                task_id: a.assignment.task_id,
                len,
                max: self.max_frame_size,
            })
        }) {
            return Err(AssignError { error, assignments });
        }
        match self.outbound.try_reserve() {
            Ok(permit) => {
                permit.send(Outbound::Assign(assignments));
                Ok(())
            }
            Err(e) => Err(AssignError {
                error: self.send_error(e),
                assignments,
            }),
        }
    }

    /// Queues the acknowledgement of finish-report batch `seq`; call it only once the reports
    /// are durable.
    ///
    /// # Errors
    /// [`SessionError::QueueFull`] or [`SessionError::Closed`]; the worker re-sends an
    /// unacknowledged batch, so a lost ack costs a duplicate, not a report.
    pub fn ack_finished(&self, seq: u64) -> Result<(), SessionError> {
        let permit = self
            .outbound
            .try_reserve()
            .map_err(|e| self.send_error(e))?;
        permit.send(Outbound::FinishedAck(seq));
        Ok(())
    }

    /// Most bytes of archive one [`CodePoolData`] frame may carry on this connection.
    pub fn max_code_pool_part(&self) -> usize {
        // The frame's other fields (ids, offsets, checksum) take far less than a kilobyte.
        self.max_frame_size.saturating_sub(1024).max(1)
    }

    /// Queues a part of a code pool's archive (or the reason there is none).
    ///
    /// # Errors
    /// [`SessionError::QueueFull`] or [`SessionError::Closed`]; the worker's download then
    /// times out and its task fails (to be retried by its attempts).
    pub fn code_pool_data(&self, data: CodePoolData) -> Result<(), SessionError> {
        let permit = self
            .outbound
            .try_reserve()
            .map_err(|e| self.send_error(e))?;
        permit.send(Outbound::CodePoolData(Box::new(data)));
        Ok(())
    }

    /// Queues the cancellation of attempts (task, attempt) of cancelled tasks; call it only once
    /// the cancellations are durable.
    ///
    /// # Errors
    /// [`SessionError::QueueFull`] or [`SessionError::Closed`]; a cancellation not sent is sent
    /// again on the worker's next connection if it still lists the attempt.
    pub fn cancel(&self, tasks: Vec<(u64, u32)>) -> Result<(), SessionError> {
        let permit = self
            .outbound
            .try_reserve()
            .map_err(|e| self.send_error(e))?;
        permit.send(Outbound::Cancel(tasks));
        Ok(())
    }

    /// Tells the worker to stop executing and exit, then closes the connection. Frames still
    /// queued are dropped.
    pub fn kill(&self, reason: impl Into<String>) {
        self.stop.send_replace(Some(Stop::Kill(reason.into())));
    }

    /// Closes the connection without a word to the worker, which will reconnect. Frames still
    /// queued are dropped.
    pub fn close(&self, reason: CloseReason) {
        self.stop.send_replace(Some(Stop::Close(reason)));
    }

    fn send_error(&self, error: mpsc::error::TrySendError<()>) -> SessionError {
        match error {
            mpsc::error::TrySendError::Full(()) => SessionError::QueueFull { conn: self.conn },
            mpsc::error::TrySendError::Closed(()) => SessionError::Closed { conn: self.conn },
        }
    }
}
