//! One worker connection: the handshake, admission by the dispatcher, then the session loop
//! that forwards the worker's frames as events and writes what the dispatcher pushes.
//!
//! The connection task owns the socket alone; nothing else reads or writes it. Its life:
//! 1. read `Hello` (other protocol versions get a non-retryable `Reject`);
//! 2. send `Challenge` with a fresh nonce;
//! 3. read `Connect` and verify the shared-secret proof (a bad proof gets a `Reject` and a WARN
//!    log); a worker naming a per-worker credential is checked by the dispatcher in step 4,
//!    which holds the verifiers, and a worker without one is refused unless the shared secret
//!    is accepted (`workers.auth`);
//! 4. send `Connected` to the dispatcher and wait for its [`Admission`] answer (with the
//!    broker's credential proof);
//! 5. send `Welcome`, then loop until the worker leaves, falls silent, breaks the protocol,
//!    the dispatcher closes the session or the listener stops;
//! 6. send `Disconnected` to the dispatcher.
//!
//! Steps 1 to 4 share one deadline, `handshake_timeout`; step 4 has its own,
//! `admission_timeout`, because the dispatcher makes the connection durable before answering.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use majordodo_proto::worker::{
    Assign, Challenge, FinishedAck, Message, Pong, ProtocolError, Reject, Welcome, WorkerCodec,
    broker_proof, chunk_for_frames, random_nonce, verify_worker_proof,
};
use majordodo_tls::ServerStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::ListenerConfig;
use super::session::{
    Admission, CloseReason, ConnId, CredentialClaim, DisconnectReason, Outbound, Rejection, Stop,
    WorkerEvent, WorkerHello, WorkerSession,
};
use super::shape::Defined;

/// Longest accepted `worker_id`, `process_id` or `location`, in bytes. They end up in logs and
/// in the broker's state; 1 KiB is far above any real host name or process id.
pub const MAX_IDENTITY_FIELD_LEN: usize = 1024;

/// Most queued frames written before one flush; bounds how long the loop writes without
/// looking at incoming frames, while still batching writes under load.
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// How long a stopping listener waits to hand a connection's `Disconnected` event to a busy
/// dispatcher before giving up on it.
const STOP_EVENT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What every connection task shares.
pub(super) struct Shared {
    /// The listener's settings.
    pub(super) config: ListenerConfig,
    /// Where events go; bounded by the caller.
    pub(super) events: mpsc::Sender<WorkerEvent>,
    /// Cancelled when the listener stops.
    pub(super) stopping: CancellationToken,
}

type Conn = Framed<ServerStream, WorkerCodec>;

/// Serves one accepted socket until it closes. Never panics on what the peer sends.
pub(super) async fn serve(
    conn: ConnId,
    socket: ServerStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let span = info_span!("worker_conn", %conn, %peer, worker_id = tracing::field::Empty);
    async move {
        // Until the worker is authenticated, frames are capped at what the handshake needs; the
        // configured frame size applies only from `Welcome` on (see `handshake`).
        let framed = Framed::new(socket, WorkerCodec::new(super::MAX_HELLO_FRAME_SIZE));
        let Some(admitted) = handshake(conn, peer, framed, &shared).await else {
            return;
        };
        let worker_id = admitted.hello_worker_id.clone();
        let reason = match admitted.decision {
            Ok(live) => session_loop(conn, live, &shared).await,
            Err(reason) => reason,
        };
        info!(%reason, "worker disconnected");
        let event = WorkerEvent::Disconnected {
            conn,
            worker_id,
            reason,
        };
        let stopped = async {
            shared.stopping.cancelled().await;
            tokio::time::sleep(STOP_EVENT_GRACE).await;
        };
        tokio::select! {
            _ = shared.events.send(event) => {}
            () = stopped => warn!("dispatcher did not take the disconnect event before the listener stopped"),
        }
    }
    .instrument(span)
    .await
}

/// A worker that reached step 4 and got its answer.
struct Admitted {
    hello_worker_id: String,
    /// The live connection if admitted, or why it ended.
    decision: Result<Live, DisconnectReason>,
}

/// An admitted connection, ready for the session loop.
struct Live {
    framed: Conn,
    worker_id: String,
    outbound: mpsc::Receiver<Outbound>,
    stop: watch::Receiver<Option<Stop>>,
    /// The task shapes defined on this connection.
    shapes: Defined,
}

/// Why reading a handshake frame failed.
enum ReadFailure {
    TimedOut,
    Closed,
    Protocol(ProtocolError),
}

/// Reads one handshake frame before `deadline`; a stopping listener ends the wait at once.
async fn read_before(
    framed: &mut Conn,
    deadline: Instant,
    stopping: &CancellationToken,
) -> Result<Message, ReadFailure> {
    let read = tokio::select! {
        read = timeout_at(deadline, framed.next()) => read,
        () = stopping.cancelled() => return Err(ReadFailure::Closed),
    };
    match read {
        Err(_) => Err(ReadFailure::TimedOut),
        Ok(None) | Ok(Some(Err(ProtocolError::Io(_)))) => Err(ReadFailure::Closed),
        Ok(Some(Err(error))) => Err(ReadFailure::Protocol(error)),
        Ok(Some(Ok(message))) => Ok(message),
    }
}

/// Sends one frame and flushes it before `deadline`; `false` if the socket is gone or too slow.
async fn send_before(framed: &mut Conn, deadline: Instant, message: Message) -> bool {
    matches!(timeout_at(deadline, framed.send(message)).await, Ok(Ok(())))
}

/// Logs a handshake that ended before admission; no event was sent for it.
fn log_handshake_failure(step: &'static str, failure: ReadFailure) {
    match failure {
        ReadFailure::TimedOut => info!(step, "handshake timed out"),
        ReadFailure::Closed => debug!(step, "connection closed during handshake"),
        ReadFailure::Protocol(error) => warn!(step, %error, "protocol error during handshake"),
    }
}

async fn reject(framed: &mut Conn, deadline: Instant, reason: &str, retryable: bool) {
    let reject = Message::Reject(Reject {
        reason: reason.to_owned(),
        retryable,
    });
    if !send_before(framed, deadline, reject).await {
        debug!("could not deliver the reject frame");
    }
}

/// Steps 1 to 4. `None` when the connection ended before the dispatcher heard of it.
async fn handshake(
    conn: ConnId,
    peer: SocketAddr,
    mut framed: Conn,
    shared: &Shared,
) -> Option<Admitted> {
    let config = &shared.config;
    let deadline = Instant::now() + config.handshake_timeout;

    // 1. Hello.
    let hello = match read_before(&mut framed, deadline, &shared.stopping).await {
        Ok(Message::Hello(hello)) => hello,
        Ok(other) => {
            warn!(kind = other.kind(), "expected hello; closing");
            return None;
        }
        Err(ReadFailure::Protocol(error @ ProtocolError::UnsupportedVersion { .. })) => {
            warn!(%error, "worker speaks another protocol version; rejecting");
            reject(&mut framed, deadline, &error.to_string(), false).await;
            return None;
        }
        Err(failure) => {
            log_handshake_failure("hello", failure);
            return None;
        }
    };
    tracing::Span::current().record("worker_id", hello.worker_id.as_str());
    let identity_problem = if hello.worker_id.is_empty() {
        Some("worker id is empty")
    } else if hello.credential_id.is_empty() && !config.auth.allows_shared_secret() {
        Some(
            "this broker accepts only per-worker credentials (workers.auth = \"credentials\"): \
             give the worker its credential file (majordodo worker-credentials add)",
        )
    } else if [
        &hello.worker_id,
        &hello.process_id,
        &hello.location,
        &hello.credential_id,
    ]
    .iter()
    .any(|field| field.len() > MAX_IDENTITY_FIELD_LEN)
    {
        Some("worker id, process id, location or credential id is too long")
    } else {
        None
    };
    if let Some(problem) = identity_problem {
        warn!(problem, "invalid hello; rejecting");
        reject(&mut framed, deadline, problem, false).await;
        return None;
    }
    // With client certificates required, the certificate must name the claimed worker id.
    if config
        .tls
        .as_ref()
        .is_some_and(|tls| tls.requires_client_cert())
        && let Err(error) = majordodo_tls::check_worker_identity(
            framed.get_ref().peer_certificate(),
            &hello.worker_id,
        )
    {
        warn!(%peer, %error, "client certificate does not allow this worker id; rejecting");
        reject(
            &mut framed,
            deadline,
            &format!("client certificate refused: {error}"),
            false,
        )
        .await;
        return None;
    }

    // 2. Challenge. `Connect` lists the running tasks, so it may be larger than `Hello`.
    *framed.codec_mut() = WorkerCodec::new(config.max_handshake_frame_size);
    let broker_nonce = random_nonce();
    let challenge = Message::Challenge(Challenge {
        broker_id: config.broker_id.clone(),
        broker_nonce: broker_nonce.to_vec(),
    });
    if !send_before(&mut framed, deadline, challenge).await {
        debug!("could not send the challenge");
        return None;
    }

    // 3. Connect, and the proof.
    let connect = match read_before(&mut framed, deadline, &shared.stopping).await {
        Ok(Message::Connect(connect)) => connect,
        Ok(other) => {
            warn!(kind = other.kind(), "expected connect; closing");
            return None;
        }
        Err(failure) => {
            log_handshake_failure("connect", failure);
            return None;
        }
    };
    let secret = config.shared_secret.as_bytes();
    let credential = (!hello.credential_id.is_empty()).then(|| CredentialClaim {
        credential_id: hello.credential_id.clone(),
        broker_nonce,
        client_nonce: hello.client_nonce.clone(),
        proof: connect.proof.clone(),
    });
    if credential.is_none()
        && !verify_worker_proof(
            secret,
            &broker_nonce,
            &hello.client_nonce,
            &hello.worker_id,
            &hello.process_id,
            &connect.proof,
        )
    {
        warn!(%peer, worker_id = %hello.worker_id, "worker authentication failed; rejecting");
        reject(&mut framed, deadline, "authentication failed", false).await;
        return None;
    }

    // 4. Admission by the dispatcher. The worker is authenticated: full-size frames from now on.
    *framed.codec_mut() = WorkerCodec::new(config.max_frame_size);
    let worker_id: Arc<str> = hello.worker_id.as_str().into();
    let task_shapes = connect.task_shapes;
    let (reply_tx, reply_rx) = oneshot::channel();
    let (outbound_tx, outbound_rx) = mpsc::channel(config.outbound_queue);
    let (stop_tx, stop_rx) = watch::channel(None);
    let session = WorkerSession::new(
        conn,
        worker_id.clone(),
        outbound_tx,
        Arc::new(stop_tx),
        config.max_frame_size,
    );
    let event = WorkerEvent::Connected {
        conn,
        hello: Box::new(WorkerHello {
            worker_id: hello.worker_id.clone(),
            process_id: hello.process_id.clone(),
            location: hello.location.clone(),
            peer,
            capacity: connect.capacity,
            running: connect.running,
            credential,
        }),
        reply: Admission::new(reply_tx, session),
    };
    tokio::select! {
        sent = shared.events.send(event) => if sent.is_err() {
            warn!("dispatcher is gone; closing");
            return None;
        },
        () = shared.stopping.cancelled() => return None,
    }
    let admission_deadline = Instant::now() + config.admission_timeout;
    let answer = tokio::select! {
        answer = timeout_at(admission_deadline, reply_rx) => answer,
        () = shared.stopping.cancelled() => {
            return Some(Admitted {
                hello_worker_id: hello.worker_id,
                decision: Err(DisconnectReason::ListenerStopped),
            });
        }
    };
    let write_deadline = Instant::now() + config.handshake_timeout;
    let mut credential_proof = None;
    let refused = match answer {
        Ok(Ok(Ok(proof))) => {
            credential_proof = proof;
            None
        }
        Ok(Ok(Err(Rejection { reason, retryable }))) => {
            info!(%reason, retryable, "dispatcher rejected the worker");
            reject(&mut framed, write_deadline, &reason, retryable).await;
            Some(format!("rejected: {reason}"))
        }
        Ok(Err(_dropped)) => {
            warn!("dispatcher dropped the admission without answering");
            reject(&mut framed, write_deadline, "broker unavailable", true).await;
            Some("admission dropped".to_owned())
        }
        Err(_elapsed) => {
            warn!("dispatcher did not answer in time");
            reject(&mut framed, write_deadline, "broker busy", true).await;
            Some("admission timed out".to_owned())
        }
    };
    if let Some(text) = refused {
        return Some(Admitted {
            hello_worker_id: hello.worker_id,
            decision: Err(DisconnectReason::ClosedByBroker(text)),
        });
    }

    // 5. Welcome.
    let welcome = Message::Welcome(Welcome {
        broker_proof: credential_proof
            .unwrap_or_else(|| {
                broker_proof(secret, &hello.client_nonce, &broker_nonce, &hello.worker_id)
            })
            .to_vec(),
        keepalive_interval_ms: duration_ms(config.keepalive_interval),
        idle_timeout_ms: duration_ms(config.max_worker_idle_time),
    });
    if !send_before(&mut framed, write_deadline, welcome).await {
        return Some(Admitted {
            hello_worker_id: hello.worker_id,
            decision: Err(DisconnectReason::Closed),
        });
    }
    info!(
        process_id = %hello.process_id,
        location = %hello.location,
        "worker connected"
    );
    Some(Admitted {
        hello_worker_id: hello.worker_id,
        decision: Ok(Live {
            framed,
            worker_id: worker_id.to_string(),
            outbound: outbound_rx,
            stop: stop_rx,
            shapes: Defined::new(task_shapes),
        }),
    })
}

fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Step 5: forwards frames as events and writes what the dispatcher pushes, until the end.
async fn session_loop(conn: ConnId, live: Live, shared: &Shared) -> DisconnectReason {
    let Live {
        mut framed,
        worker_id,
        mut outbound,
        mut stop,
        mut shapes,
    } = live;
    let config = &shared.config;
    let idle = config.max_worker_idle_time;
    let mut idle_deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            biased;
            () = shared.stopping.cancelled() => return DisconnectReason::ListenerStopped,
            changed = stop.changed() => {
                let request = match changed {
                    Ok(()) => stop.borrow_and_update().clone(),
                    Err(_) => None,
                };
                return match request {
                    Some(Stop::Kill(reason)) => {
                        info!(%reason, "killing worker");
                        let kill = Message::Kill(majordodo_proto::worker::Kill { reason: reason.clone() });
                        let _ = timeout(idle, framed.send(kill)).await;
                        DisconnectReason::ClosedByBroker(format!("killed: {reason}"))
                    }
                    Some(Stop::Close(CloseReason::Replaced)) => DisconnectReason::Replaced,
                    Some(Stop::Close(CloseReason::Other(text))) => DisconnectReason::ClosedByBroker(text),
                    None => DisconnectReason::ClosedByBroker("session dropped".to_owned()),
                };
            }
            frame = framed.next() => {
                let message = match frame {
                    None => return DisconnectReason::Closed,
                    Some(Err(ProtocolError::Io(error))) => {
                        debug!(%error, "read failed");
                        return DisconnectReason::Closed;
                    }
                    Some(Err(error)) => {
                        warn!(%error, "malformed frame; closing");
                        return DisconnectReason::ProtocolError(error.to_string());
                    }
                    Some(Ok(message)) => message,
                };
                idle_deadline = Instant::now() + idle;
                let event = match message {
                    Message::Finished(finished) => WorkerEvent::Finished {
                        conn,
                        worker_id: worker_id.clone(),
                        seq: finished.seq,
                        reports: finished.reports,
                    },
                    Message::Ping(ping) => {
                        if timeout(idle, framed.send(Message::Pong(Pong {}))).await.map_or(true, |r| r.is_err()) {
                            return DisconnectReason::Closed;
                        }
                        WorkerEvent::Ping {
                            conn,
                            worker_id: worker_id.clone(),
                            capacity: ping.capacity,
                            running: ping.running,
                        }
                    }
                    Message::CodePoolRequest(request) => WorkerEvent::CodePoolRequest {
                        conn,
                        worker_id: worker_id.clone(),
                        request,
                    },
                    Message::Shutdown(_) => return DisconnectReason::Shutdown,
                    other => {
                        warn!(kind = other.kind(), "unexpected frame from worker; closing");
                        return DisconnectReason::ProtocolError(format!(
                            "unexpected {} frame from worker",
                            other.kind()
                        ));
                    }
                };
                tokio::select! {
                    sent = shared.events.send(event) => if sent.is_err() {
                        return DisconnectReason::ClosedByBroker("dispatcher gone".to_owned());
                    },
                    () = shared.stopping.cancelled() => return DisconnectReason::ListenerStopped,
                }
            }
            first = outbound.recv() => {
                let Some(first) = first else {
                    return DisconnectReason::ClosedByBroker("session dropped".to_owned());
                };
                if let Err(reason) = write_outbound(&mut framed, &mut outbound, first, &mut shapes, config).await {
                    return reason;
                }
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                warn!(idle_ms = duration_ms(idle), "worker silent for too long; closing");
                return DisconnectReason::Idle;
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to [`MAX_FRAMES_PER_FLUSH`]), then flushes
/// once. A worker that does not read for `max_worker_idle_time` is dropped.
async fn write_outbound(
    framed: &mut Conn,
    outbound: &mut mpsc::Receiver<Outbound>,
    first: Outbound,
    shapes: &mut Defined,
    config: &ListenerConfig,
) -> Result<(), DisconnectReason> {
    let write = async {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(item) = next.take() {
            match item {
                Outbound::FinishedAck(seq) => {
                    framed
                        .feed(Message::FinishedAck(FinishedAck { seq }))
                        .await?;
                    written += 1;
                }
                Outbound::CodePoolData(data) => {
                    framed.feed(Message::CodePoolData(*data)).await?;
                    written += 1;
                }
                Outbound::Cancel(tasks) => {
                    // Each attempt is 2 small varints: thousands fit the smallest frame.
                    for chunk in tasks.chunks(1_000) {
                        let tasks = chunk
                            .iter()
                            .map(|&(task_id, attempt)| majordodo_proto::worker::RunningTask {
                                task_id,
                                attempt,
                            })
                            .collect();
                        framed
                            .feed(Message::Cancel(majordodo_proto::worker::Cancel { tasks }))
                            .await?;
                        written += 1;
                    }
                }
                Outbound::Assign(outgoing) => {
                    let (new, assignments) = shapes.resolve(outgoing);
                    // New shapes go first, in frames of their own, so that every assignment
                    // that names one follows its definition.
                    for shapes in chunk_for_frames(new, config.max_frame_size) {
                        let assign = Assign {
                            assignments: Vec::new(),
                            shapes,
                        };
                        framed.feed(Message::Assign(assign)).await?;
                        written += 1;
                    }
                    for assignments in chunk_for_frames(assignments, config.max_frame_size) {
                        let assign = Assign {
                            assignments,
                            shapes: Vec::new(),
                        };
                        framed.feed(Message::Assign(assign)).await?;
                        written += 1;
                    }
                }
            }
            if written < MAX_FRAMES_PER_FLUSH {
                next = outbound.try_recv().ok();
            }
        }
        framed.flush().await
    };
    match timeout(config.max_worker_idle_time, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(ProtocolError::Io(error))) => {
            debug!(%error, "write failed");
            Err(DisconnectReason::Closed)
        }
        Ok(Err(error)) => {
            // Sizes are checked when queued, so the encoder refusing a frame is a bug here.
            warn!(%error, "could not encode a frame; closing");
            Err(DisconnectReason::ClosedByBroker(error.to_string()))
        }
        Err(_elapsed) => {
            warn!("worker does not read; closing");
            Err(DisconnectReason::Closed)
        }
    }
}

/// Frame-body size of an `Assign` holding only `assignment`, an upper bound.
pub(super) fn single_assignment_frame_len(
    assignment: &majordodo_proto::worker::Assignment,
) -> usize {
    majordodo_proto::worker::FRAME_OVERHEAD + majordodo_proto::worker::item_frame_len(assignment)
}
