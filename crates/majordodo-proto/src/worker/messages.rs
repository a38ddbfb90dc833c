//! The protobuf messages of the worker protocol, written by hand with `prost` derives.
//!
//! Field numbers are part of the wire format: never reuse or renumber one. Message kinds in
//! [`Message`] use tags from 16 upwards, leaving 2..=15 of the [`Envelope`] for envelope-level
//! fields a later version may need; every message leaves gaps for new fields.

use std::collections::BTreeMap;

use super::{NONCE_LEN, PROOF_LEN, ProtocolError};

/// The key of [`Capacity::max_threads_by_task_type`] that stands for every task type without an
/// entry of its own; all those types are counted together against this one limit.
pub const ANY_TASK_TYPE: &str = "any";

/// The dimension of [`Capacity::amounts`] and [`Assignment::needs`] counting CPU, in
/// millicores (1000 = one core).
pub const CPU_MILLIS: &str = "cpu";

/// The dimension of [`Capacity::amounts`] and [`Assignment::needs`] counting memory, in MiB.
pub const MEMORY_MIB: &str = "memory";

/// One frame body: the protocol version, then exactly one message.
///
/// The version is in every frame so that a peer speaking another version is detected on its first
/// frame, whatever that frame is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Protocol version of the sender; see [`super::PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The message; `None` when the sender used a message kind this version does not know.
    #[prost(
        oneof = "Message",
        tags = "16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 40, 70, 71"
    )]
    pub message: Option<Message>,
}

/// Every message of the protocol. The direction each one travels is in its doc comment.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Message {
    /// W→B, the first frame of a connection.
    #[prost(message, tag = "16")]
    Hello(Hello),
    /// B→W, the answer to [`Hello`].
    #[prost(message, tag = "17")]
    Challenge(Challenge),
    /// W→B, the answer to [`Challenge`]: proof of the shared secret, capacity, running tasks.
    #[prost(message, tag = "18")]
    Connect(Connect),
    /// B→W, the connection is accepted; the broker proves it knows the secret too.
    #[prost(message, tag = "19")]
    Welcome(Welcome),
    /// B→W, the connection is refused; the broker closes it after this frame.
    #[prost(message, tag = "20")]
    Reject(Reject),
    /// B→W, tasks to execute.
    #[prost(message, tag = "21")]
    Assign(Assign),
    /// W→B, a batch of finish reports.
    #[prost(message, tag = "22")]
    Finished(Finished),
    /// B→W, a batch of finish reports is durable.
    #[prost(message, tag = "23")]
    FinishedAck(FinishedAck),
    /// W→B, keepalive carrying the live capacity.
    #[prost(message, tag = "24")]
    Ping(Ping),
    /// B→W, the answer to [`Ping`].
    #[prost(message, tag = "25")]
    Pong(Pong),
    /// W→B, the worker stops gracefully; it sends nothing after this frame.
    #[prost(message, tag = "26")]
    Shutdown(Shutdown),
    /// B→W, the worker must stop executing and exit.
    #[prost(message, tag = "27")]
    Kill(Kill),
    /// W→B, asks for a part of a code pool's archive (any time after Welcome).
    #[prost(message, tag = "70")]
    CodePoolRequest(CodePoolRequest),
    /// B→W, the answer to [`CodePoolRequest`].
    #[prost(message, tag = "71")]
    CodePoolData(CodePoolData),
    /// B→W, attempts to stop: their tasks were cancelled. The worker reports each one ended
    /// once it stopped (any outcome; the broker ignores it); an attempt it does not run is
    /// ignored.
    #[prost(message, tag = "40")]
    Cancel(Cancel),
}

impl Message {
    /// The name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Challenge(_) => "challenge",
            Message::Connect(_) => "connect",
            Message::Welcome(_) => "welcome",
            Message::Reject(_) => "reject",
            Message::Assign(_) => "assign",
            Message::Finished(_) => "finished",
            Message::FinishedAck(_) => "finished_ack",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Shutdown(_) => "shutdown",
            Message::Kill(_) => "kill",
            Message::CodePoolRequest(_) => "code_pool_request",
            Message::CodePoolData(_) => "code_pool_data",
            Message::Cancel(_) => "cancel",
        }
    }

    /// Checks what protobuf cannot: fixed-size byte fields and known enum values.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidField`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        fn exact_len(field: &'static str, bytes: &[u8], len: usize) -> Result<(), ProtocolError> {
            if bytes.len() == len {
                Ok(())
            } else {
                Err(ProtocolError::InvalidField {
                    field,
                    reason: format!("expected {len} bytes, got {}", bytes.len()),
                })
            }
        }
        match self {
            Message::Hello(h) => exact_len("hello.client_nonce", &h.client_nonce, NONCE_LEN),
            Message::Challenge(c) => {
                exact_len("challenge.broker_nonce", &c.broker_nonce, NONCE_LEN)
            }
            Message::Connect(c) => exact_len("connect.proof", &c.proof, PROOF_LEN),
            Message::Welcome(w) => exact_len("welcome.broker_proof", &w.broker_proof, PROOF_LEN),
            Message::Finished(f) => {
                for report in &f.reports {
                    if Outcome::try_from(report.outcome).is_err() {
                        return Err(ProtocolError::InvalidField {
                            field: "finished.reports.outcome",
                            reason: format!("unknown outcome {}", report.outcome),
                        });
                    }
                }
                Ok(())
            }
            Message::Assign(a) => {
                if a.shapes.iter().any(|shape| shape.id == 0) {
                    return Err(ProtocolError::InvalidField {
                        field: "assign.shapes.id",
                        reason: "a task shape's id is 0, which means none".into(),
                    });
                }
                Ok(())
            }
            Message::CodePoolData(d) if d.error.is_empty() => {
                exact_len("code_pool_data.sha256", &d.sha256, 32)
            }
            Message::Reject(_)
            | Message::CodePoolRequest(_)
            | Message::CodePoolData(_)
            | Message::FinishedAck(_)
            | Message::Ping(_)
            | Message::Pong(_)
            | Message::Shutdown(_)
            | Message::Kill(_)
            | Message::Cancel(_) => Ok(()),
        }
    }
}

/// W→B, first frame: who the worker is and its half of the handshake randomness.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Stable name of the worker (by default its host name); the broker tracks tasks by it.
    #[prost(string, tag = "1")]
    pub worker_id: String,
    /// Identifies this run of the worker process; changes at every restart.
    #[prost(string, tag = "2")]
    pub process_id: String,
    /// Free text telling operators where the worker runs (host, rack, address).
    #[prost(string, tag = "3")]
    pub location: String,
    /// [`NONCE_LEN`] random bytes from the OS RNG, fresh for every connection attempt.
    #[prost(bytes = "vec", tag = "4")]
    pub client_nonce: Vec<u8>,
    /// Since protocol version 2: the per-worker credential the worker proves in `Connect`;
    /// empty for the legacy shared secret.
    #[prost(string, tag = "90")]
    pub credential_id: String,
}

/// B→W: who the broker is and its half of the handshake randomness.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Challenge {
    /// Name of the broker, for the worker's logs.
    #[prost(string, tag = "1")]
    pub broker_id: String,
    /// [`NONCE_LEN`] random bytes from the OS RNG, fresh for every connection.
    #[prost(bytes = "vec", tag = "2")]
    pub broker_nonce: Vec<u8>,
}

/// W→B: the worker's proof of the shared secret, its capacity and what it still runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Connect {
    /// [`super::credential_worker_proof`] (or, without a credential, [`super::worker_proof`])
    /// over both nonces and the worker's identity.
    #[prost(bytes = "vec", tag = "1")]
    pub proof: Vec<u8>,
    /// What the worker accepts to run.
    #[prost(message, required, tag = "2")]
    pub capacity: Capacity,
    /// Tasks still executing and tasks whose finish report is not yet acknowledged; the broker
    /// fails every other task it believes this worker runs.
    #[prost(message, repeated, tag = "3")]
    pub running: Vec<RunningTask>,
    /// The worker understands [`TaskShape`]s: the broker may then send the resources and needs
    /// that many assignments share once per connection and name them by id. A broker that
    /// predates the field ignores it and sends them with every assignment.
    #[prost(bool, tag = "4")]
    pub task_shapes: bool,
}

/// One attempt of a task the worker still holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct RunningTask {
    /// The task.
    #[prost(uint64, tag = "1")]
    pub task_id: u64,
    /// Which attempt of the task; reports for attempts that are not current are ignored.
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
}

/// What a worker accepts to run, sent at connect time and with every ping.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Capacity {
    /// Most tasks running at once, all types together.
    #[prost(uint32, tag = "1")]
    pub max_threads: u32,
    /// Most tasks of one type running at once. A type without an entry counts against the
    /// [`ANY_TASK_TYPE`] entry, together with every other such type; without that entry it is
    /// not accepted at all.
    #[prost(btree_map = "string, uint32", tag = "2")]
    pub max_threads_by_task_type: BTreeMap<String, u32>,
    /// Groups served, highest priority first; `0` stands for every group not excluded.
    #[prost(uint32, repeated, tag = "3")]
    pub groups: Vec<u32>,
    /// Groups never served, even through `0`.
    #[prost(uint32, repeated, tag = "4")]
    pub excluded_groups: Vec<u32>,
    /// Most tasks of one type one user may run here, in percent of the type's limit (at least
    /// 1 task); 0 = no per-user share. A broker that predates the field ignores it.
    #[prost(uint32, tag = "50")]
    pub max_thread_per_user_per_task_type_percent: u32,
    /// Named resource → most tasks using it that may run here at once. A broker that predates
    /// the field ignores it.
    #[prost(btree_map = "string, uint32", tag = "51")]
    pub resource_limits: BTreeMap<String, u32>,
    /// What the worker has, per dimension: [`CPU_MILLIS`] (millicores), [`MEMORY_MIB`] (MiB),
    /// and any other key a named amount (`db:orders`, `storage-iops`). A broker that predates
    /// the field ignores it.
    #[prost(btree_map = "string, uint64", tag = "80")]
    pub amounts: BTreeMap<String, u64>,
    /// One line saying how this worker's `process` executor enforces the cpu and memory a task
    /// declares (cgroup v2, or rlimits and what they cover), for the broker's workers view.
    #[prost(string, tag = "81")]
    pub enforcement: String,
}

impl Capacity {
    /// The key of [`Capacity::max_threads_by_task_type`] that a task of type `task_type` counts
    /// against, with its limit; `None` when this capacity accepts no task of that type.
    ///
    /// The same rule as the broker's scheduler: entries of 0 are ignored; a type without its own
    /// entry counts against [`ANY_TASK_TYPE`]; a map without any positive entry accepts every
    /// type, up to `max_threads` (counted under [`ANY_TASK_TYPE`]).
    pub fn type_limit<'a>(&'a self, task_type: &'a str) -> Option<(&'a str, u32)> {
        let limits = &self.max_threads_by_task_type;
        if let Some(&limit) = limits.get(task_type)
            && limit > 0
            && task_type != ANY_TASK_TYPE
        {
            return Some((task_type, limit));
        }
        if let Some(&limit) = limits.get(ANY_TASK_TYPE)
            && limit > 0
        {
            return Some((ANY_TASK_TYPE, limit));
        }
        if limits.values().all(|limit| *limit == 0) {
            return Some((ANY_TASK_TYPE, self.max_threads));
        }
        None
    }
}

/// B→W: the connection is accepted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {
    /// [`super::broker_proof`]: the broker knows the shared secret too.
    #[prost(bytes = "vec", tag = "1")]
    pub broker_proof: Vec<u8>,
    /// How often the broker expects a [`Ping`], in milliseconds.
    #[prost(uint64, tag = "2")]
    pub keepalive_interval_ms: u64,
    /// After this many milliseconds without a frame, either side drops the connection.
    #[prost(uint64, tag = "3")]
    pub idle_timeout_ms: u64,
}

/// B→W: the connection is refused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reject {
    /// Why, for the worker's logs and its caller.
    #[prost(string, tag = "1")]
    pub reason: String,
    /// Whether connecting again later may succeed (a broker that is not the leader yet) or not
    /// (a wrong secret, an unsupported version).
    #[prost(bool, tag = "2")]
    pub retryable: bool,
}

/// B→W: tasks to execute.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Assign {
    /// The tasks, in the order the broker chose them.
    #[prost(message, repeated, tag = "1")]
    pub assignments: Vec<Assignment>,
    /// Shapes defined on this connection from this frame on, before its assignments use them
    /// (only to a worker that announced [`Connect::task_shapes`]).
    #[prost(message, repeated, tag = "2")]
    pub shapes: Vec<TaskShape>,
}

/// Most [`TaskShape`]s one connection may define; a broker with more distinct ones sends the
/// rest with each assignment.
pub const MAX_TASK_SHAPES: usize = 1024;

/// The resources and needs that many assignments share, defined once per connection and named
/// by [`Assignment::shape`]: a broker sends each distinct pair once instead of with every task.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TaskShape {
    /// Its id on this connection, from 1 (0 means "no shape"); defined at most once.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// As [`Assignment::resources`].
    #[prost(string, repeated, tag = "2")]
    pub resources: Vec<String>,
    /// As [`Assignment::needs`].
    #[prost(btree_map = "string, uint64", tag = "3")]
    pub needs: BTreeMap<String, u64>,
}

/// One task attempt given to a worker.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Assignment {
    /// The task.
    #[prost(uint64, tag = "1")]
    pub task_id: u64,
    /// Which attempt this is, starting at 1; the finish report must repeat it.
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
    /// Chooses the executor.
    #[prost(string, tag = "3")]
    pub task_type: String,
    /// The task's owner.
    #[prost(string, tag = "4")]
    pub user_id: String,
    /// The task's payload, opaque to Majordodo.
    #[prost(string, tag = "5")]
    pub data: String,
    /// The code pool that provides the executor, if any.
    #[prost(string, optional, tag = "6")]
    pub codepool: Option<String>,
    /// The execution mode, if not the default.
    #[prost(string, optional, tag = "7")]
    pub mode: Option<String>,
    /// Resource ids the task holds while it runs.
    #[prost(string, repeated, tag = "8")]
    pub resources: Vec<String>,
    /// What the task declared it needs, in the units of [`Capacity::amounts`]; empty when it
    /// declared nothing.
    #[prost(btree_map = "string, uint64", tag = "80")]
    pub needs: BTreeMap<String, u64>,
    /// The [`TaskShape`] holding this task's resources and needs, defined earlier on this
    /// connection; 0: none (they are the two fields above, empty when the task has none).
    #[prost(uint32, tag = "81")]
    pub shape: u32,
}

/// W→B: a batch of finish reports.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Finished {
    /// Numbers the batch for [`FinishedAck`]; increases within one worker process.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The reports.
    #[prost(message, repeated, tag = "2")]
    pub reports: Vec<FinishReport>,
}

/// How one task attempt ended.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FinishReport {
    /// The task.
    #[prost(uint64, tag = "1")]
    pub task_id: u64,
    /// The attempt that ended.
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
    /// A value of [`Outcome`]; use [`FinishReport::outcome`] to read it.
    #[prost(enumeration = "Outcome", tag = "3")]
    pub outcome: i32,
    /// The executor's result, or the error's description.
    #[prost(string, tag = "4")]
    pub result: String,
    /// With [`Outcome::RetryLater`]: milliseconds after which the task may run again.
    #[prost(uint64, tag = "40")]
    pub retry_after_ms: u64,
}

/// How a task attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Outcome {
    /// Never sent; the zero value protobuf gives a missing field.
    Unspecified = 0,
    /// The executor returned a result.
    Finished = 1,
    /// The executor failed, or the worker refused the task; the broker may retry it.
    Error = 2,
    /// The executor asks to run the task again after [`FinishReport::retry_after_ms`], without
    /// using an attempt (the broker bounds how often).
    RetryLater = 3,
}

/// B→W: the reports of batch `seq` are durable; the worker may forget them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FinishedAck {
    /// The [`Finished::seq`] acknowledged.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
}

/// W→B: keepalive with the live capacity.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    /// What the worker accepts now (it may have changed since connecting).
    #[prost(message, required, tag = "1")]
    pub capacity: Capacity,
    /// How many tasks the worker is executing.
    #[prost(uint32, tag = "2")]
    pub running: u32,
}

/// B→W: answer to a [`Ping`], proving the broker is alive.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {}

/// W→B: graceful stop.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Shutdown {}

/// B→W: stop executing and exit.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Kill {
    /// Why, for the worker's logs and its caller.
    #[prost(string, tag = "1")]
    pub reason: String,
}

/// W→B: asks for up to `max_len` bytes of pool `pool_id`'s archive from `offset`. The worker
/// asks part after part (one at a time per pool) until it holds the whole archive, then checks it
/// against the SHA-256 the answers carry.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CodePoolRequest {
    /// Chosen by the worker; repeated in the answer.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// The pool.
    #[prost(string, tag = "2")]
    pub pool_id: String,
    /// First byte wanted.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// Most bytes wanted; the broker may send fewer (never more, never beyond its frame limit).
    #[prost(uint32, tag = "4")]
    pub max_len: u32,
}

/// B→W: a part of a pool's archive, or why there is none.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CodePoolData {
    /// The [`CodePoolRequest::request_id`] answered.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// The pool.
    #[prost(string, tag = "2")]
    pub pool_id: String,
    /// Where `data` starts in the archive.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// Size of the whole archive.
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// SHA-256 of the whole archive (32 bytes unless `error` is set).
    #[prost(bytes = "vec", tag = "5")]
    pub sha256: Vec<u8>,
    /// The bytes; empty at the end of the archive.
    #[prost(bytes = "vec", tag = "6")]
    pub data: Vec<u8>,
    /// Set when the broker cannot serve the pool (unknown, deleted): the text says why.
    #[prost(string, tag = "7")]
    pub error: String,
}

/// B→W: cancelled attempts to stop.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Cancel {
    /// The attempts.
    #[prost(message, repeated, tag = "1")]
    pub tasks: Vec<RunningTask>,
}
