//! Accepts worker connections, authenticates them and turns their frames into events.
//!
//! [`run`] takes the bound socket and a stop signal from its caller (the broker binary, an
//! embedding, a test) and serves every connection on a task of its own, at most
//! [`ListenerConfig::max_connections`] at a time. The dispatcher sees each connection as
//! [`WorkerEvent`]s and answers through the [`Admission`] and [`WorkerSession`] handles they
//! carry; it never touches a socket.
//!
//! Design choices:
//! - The dispatcher admits a worker by calling [`Admission::accept`], which hands it the
//!   session: a session therefore exists only for admitted connections, and the `Welcome` frame
//!   always precedes anything pushed through it.
//! - Pushing never blocks the dispatcher: each connection has a bounded outbound queue and a
//!   full queue is an error the dispatcher handles (see [`SessionError`]).
//! - A worker that sends nothing for `max_worker_idle_time`, pings included, is disconnected
//!   as [`DisconnectReason::Idle`] even if its socket stays open.
//! - Anything malformed closes that one connection with a logged reason; the others go on.

mod connection;
mod session;
mod shape;

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use majordodo_proto::worker::{DEFAULT_MAX_FRAME_SIZE, SharedSecret};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use connection::MAX_IDENTITY_FIELD_LEN;
pub use session::{
    Admission, AssignError, CloseReason, ConnId, CredentialClaim, DisconnectReason, Rejection,
    SessionError, WorkerEvent, WorkerHello, WorkerSession,
};
pub use shape::{Outgoing, Shape};

/// Default most concurrent connections: one per worker process, with room for reconnects that
/// overlap the old connection, for the thousands of hosts the system targets. Each connection
/// costs a task, a read buffer of at most one frame and its outbound queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Default most connections from one peer IP address, authenticated or not. A host runs one
/// worker process, or a few; the bound keeps one address from taking every connection slot
/// (see [`ListenerConfig::max_connections_per_address`]).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// Largest `Hello` frame body read before authentication: its three identity fields at their
/// longest, the nonce and the credential id, with room for the protobuf keys.
pub const MAX_HELLO_FRAME_SIZE: usize = 4 * MAX_IDENTITY_FIELD_LEN;

/// Default largest `Connect` frame body read before the proof in it is checked. `Connect` lists
/// the tasks the worker still runs (a few bytes each) and its capacity: 256 KiB holds more than
/// ten thousand running tasks, while 4 096 half-open connections cannot make the broker buffer
/// more than 1 GiB (and one address, by [`DEFAULT_MAX_CONNECTIONS_PER_ADDRESS`], 16 MiB).
pub const DEFAULT_MAX_HANDSHAKE_FRAME_SIZE: usize = 256 * 1024;

/// Default time a worker has to complete the handshake: generous for a loaded network, short
/// enough that half-open connections do not pile up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time the dispatcher has to admit a worker (it makes the connection durable first).
pub const DEFAULT_ADMISSION_TIMEOUT: Duration = Duration::from_secs(30);

/// Default ping interval asked of workers; the original system pinged every 10 s.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Default silence after which a worker is disconnected: three missed pings, as the original
/// system's 30 s `maxWorkerIdleTime`.
pub const DEFAULT_MAX_WORKER_IDLE_TIME: Duration = Duration::from_secs(30);

/// Default capacity of a connection's outbound queue, in pushes (each an assignment batch or
/// an ack). A worker that falls this far behind gets [`SessionError::QueueFull`] reported to
/// the dispatcher instead of unbounded memory.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 256;

/// Smallest accepted `max_frame_size`: a handshake frame with maximum-length identity fields
/// must fit.
pub const MIN_MAX_FRAME_SIZE: usize = 4 * MAX_IDENTITY_FIELD_LEN;

/// Pause after a failed `accept` (for example too many open files) before trying again, so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Settings of the worker listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name of this broker, sent to workers in the challenge.
    pub broker_id: String,
    /// How workers authenticate: per-worker credentials only, or also the shared secret.
    pub auth: WorkerAuth,
    /// The secret workers may prove instead of a credential when `auth` allows it; must then
    /// not be empty.
    pub shared_secret: SharedSecret,
    /// Most connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Most connections from one peer IP address at once (authenticated or not); more from
    /// that address are closed on accept.
    pub max_connections_per_address: usize,
    /// Largest `Connect` frame body read before authentication (`Hello` frames are capped at
    /// [`MAX_HELLO_FRAME_SIZE`]); `max_frame_size` applies only once the worker is admitted.
    pub max_handshake_frame_size: usize,
    /// Time for a worker to send `Hello` and `Connect`.
    pub handshake_timeout: Duration,
    /// Time for the dispatcher to answer a `Connected` event.
    pub admission_timeout: Duration,
    /// Ping interval asked of workers; sent in `Welcome`. Must be below `max_worker_idle_time`.
    pub keepalive_interval: Duration,
    /// Silence after which a connection is closed as idle; sent in `Welcome` so the worker uses
    /// the same value for the broker's silence.
    pub max_worker_idle_time: Duration,
    /// Largest frame body read or written.
    pub max_frame_size: usize,
    /// Capacity of each connection's outbound queue.
    pub outbound_queue: usize,
    /// TLS on the port (and, with a client CA, the client certificate that must name each
    /// worker's id); `None` serves plain TCP.
    pub tls: Option<majordodo_tls::ServerTls>,
}

impl ListenerConfig {
    /// A config with the defaults of this module that accepts per-worker credentials and
    /// (legacy) `shared_secret`.
    pub fn new(broker_id: impl Into<String>, shared_secret: SharedSecret) -> Self {
        ListenerConfig {
            broker_id: broker_id.into(),
            auth: WorkerAuth::CredentialsOrSharedSecret,
            shared_secret,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_handshake_frame_size: DEFAULT_MAX_HANDSHAKE_FRAME_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            admission_timeout: DEFAULT_ADMISSION_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            max_worker_idle_time: DEFAULT_MAX_WORKER_IDLE_TIME,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            tls: None,
        }
    }

    /// A config with the defaults of this module that accepts per-worker credentials only.
    pub fn credentials_only(broker_id: impl Into<String>) -> Self {
        ListenerConfig {
            auth: WorkerAuth::Credentials,
            ..ListenerConfig::new(broker_id, SharedSecret::new(Vec::new()))
        }
    }

    /// Checks the settings against each other.
    ///
    /// # Errors
    /// [`ListenerConfigError`] naming the first setting that is wrong.
    pub fn validate(&self) -> Result<(), ListenerConfigError> {
        let problem = if self.auth.allows_shared_secret() && self.shared_secret.is_empty() {
            "shared_secret must not be empty when the shared secret is accepted"
        } else if self.max_connections == 0 {
            "max_connections must be at least 1"
        } else if self.max_connections_per_address == 0 {
            "max_connections_per_address must be at least 1"
        } else if self.max_handshake_frame_size < MIN_MAX_FRAME_SIZE {
            "max_handshake_frame_size is below MIN_MAX_FRAME_SIZE"
        } else if self.outbound_queue == 0 {
            "outbound_queue must be at least 1"
        } else if self.max_frame_size < MIN_MAX_FRAME_SIZE {
            "max_frame_size is below MIN_MAX_FRAME_SIZE"
        } else if self.max_frame_size > u32::MAX as usize {
            "max_frame_size does not fit the u32 length prefix"
        } else if self.handshake_timeout.is_zero() || self.admission_timeout.is_zero() {
            "handshake_timeout and admission_timeout must be positive"
        } else if self.keepalive_interval.is_zero()
            || self.keepalive_interval >= self.max_worker_idle_time
        {
            "keepalive_interval must be positive and below max_worker_idle_time"
        } else {
            return Ok(());
        };
        Err(ListenerConfigError(problem))
    }
}

/// The listener's settings contradict each other; fix the configuration. Not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid worker listener config: {0}")]
pub struct ListenerConfigError(pub &'static str);

/// How workers authenticate (`workers.auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WorkerAuth {
    /// Per-worker credentials only (the default): a worker presenting the shared secret is
    /// refused.
    #[default]
    Credentials,
    /// Per-worker credentials, and (legacy) the shared secret for workers without one.
    CredentialsOrSharedSecret,
}

impl WorkerAuth {
    /// Whether a worker may prove the shared secret instead of a credential.
    pub fn allows_shared_secret(self) -> bool {
        self == WorkerAuth::CredentialsOrSharedSecret
    }

    /// The name of the mode in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerAuth::Credentials => "credentials",
            WorkerAuth::CredentialsOrSharedSecret => "credentials-or-shared-secret",
        }
    }
}

/// Serves worker connections on `listener` until `shutdown` completes, then closes every
/// connection (each reports [`DisconnectReason::ListenerStopped`]) and returns once their
/// tasks have ended.
///
/// # Errors
/// [`ListenerConfigError`] before accepting anything, if `config` is invalid.
pub async fn run(
    listener: TcpListener,
    config: ListenerConfig,
    events: mpsc::Sender<WorkerEvent>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ListenerConfigError> {
    config.validate()?;
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let per_address = PerAddress::new(config.max_connections_per_address);
    let shared = Arc::new(connection::Shared {
        config,
        events,
        stopping: CancellationToken::new(),
    });
    let mut connections = JoinSet::new();
    let mut next_conn = 0u64;
    tokio::pin!(shutdown);
    info!(addr = ?listener.local_addr().ok(), "worker listener started");
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connection tasks so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Some(slot) = per_address.take(peer.ip()) else {
            // Closed at once, before any byte is read: one address cannot hold every slot.
            debug!(%peer, "too many connections from this address; closing");
            drop(socket);
            continue;
        };
        if let Err(error) = socket.set_nodelay(true) {
            warn!(%peer, %error, "could not set TCP_NODELAY");
        }
        let conn = session::ConnId(next_conn);
        next_conn += 1;
        let shared = shared.clone();
        connections.spawn(async move {
            let socket = majordodo_tls::accept(shared.config.tls.as_ref(), socket);
            connection::serve(conn, socket, peer, shared).await;
            drop(slot);
            drop(permit);
        });
    }
    info!(connections = connections.len(), "worker listener stopping");
    shared.stopping.cancel();
    while let Some(joined) = connections.join_next().await {
        match joined {
            Err(error) if error.is_panic() => error!(%error, "worker connection task panicked"),
            _ => {}
        }
    }
    info!("worker listener stopped");
    Ok(())
}

/// Counts live connections per peer IP address.
#[derive(Clone)]
struct PerAddress {
    max: usize,
    counts: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in [`PerAddress`]; given back on drop.
struct AddressSlot {
    ip: IpAddr,
    counts: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        PerAddress {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` if it has `max` already.
    fn take(&self, ip: IpAddr) -> Option<AddressSlot> {
        let mut counts = self
            .counts
            .lock()
            .expect("never poisoned: no panic while held");
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .expect("never poisoned: no panic while held");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}
