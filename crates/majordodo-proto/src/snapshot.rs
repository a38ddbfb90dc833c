//! Snapshot content: a whole broker state as a stream of length-delimited protobuf items.
//!
//! Layout: a `Header` item (format version, log position, id counters), then one item per task,
//! worker, transaction, code pool and idempotency key, then an `End` item carrying the counts,
//! so a stream cut short
//! is detected even before the store's checksum. Items are decoded in order into a
//! [`StateBuilder`], so a large snapshot is never held twice in memory as records (from 1 MiB on,
//! a thread of its own parses them, at most a few thousand ahead of the builder).
//! [`decode_snapshot_from`] takes the items from a reader (the store's decompressing one) in
//! reads of 256 KiB, so the decompressed body is never held whole either. Compression and
//! the checksummed file envelope are the snapshot store's job (`majordodo-log`).
//!
//! Unlike the original's snapshots, code pools and each task's code pool and mode are
//! kept.
//!
//! Versions: 1, the first; 2 adds the `IdempotencyKey` item (tag 7) and its count in `End`
//! (field 5). Version 2 is written; both are read (a version 1 snapshot has no keys). A reader
//! of version 1 would refuse the new item, but only when a key is present; the version says it
//! up front. Version 3 stores a code pool as a `CodePool` item with its size, checksum and
//! chunk count (fields 70 to 72) followed by one `CodePoolChunk` item (tag 70) per chunk, so no
//! item is larger than a log record; a version 1 or 2 pool item carries its whole archive in
//! `data` and is still read. Version 3 also adds a transaction's owner (field 40 of its item),
//! a task's deferrals (field 40 of its item) and priority (field 50), and the `ServiceLevel`
//! item (tag 50, written right after the header, before the tasks that are queued under it)
//! with its count in `End` (field 50), the `Quota` item (tag 80, count in field 80) and the
//! `Credential` item (tag 90: a worker credential's verifier, never its secret; count in field
//! 90); older snapshots have none of these.

use std::sync::Arc;

use majordodo_core::model::{CodePool, Transaction};
use majordodo_core::snapshot::{
    SnapshotHeader, SnapshotSource, StateBuilder, TaskRecord, WorkerSnapshot,
};
use majordodo_core::{BrokerState, GroupMapper, IdempotencyKey, TaskId, TransactionId};
use prost::Message;

use crate::record::{CredentialPb, LevelPb, NewTaskPb, QuotaPb, RecordError};

/// Version of the snapshot content format written by this build.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 3;

/// Oldest snapshot content format version this build reads.
pub const MIN_SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Why bytes are not a snapshot this build can read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An item is not well-formed protobuf.
    #[error("malformed snapshot item {index}: {source}")]
    Malformed {
        /// Position of the item in the stream.
        index: u64,
        /// The decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// The stream does not start with a header of a known version.
    #[error(
        "snapshot format version {0} is not supported (this build reads versions {MIN_SNAPSHOT_FORMAT_VERSION} to {SNAPSHOT_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// The items are not in the expected order, or the stream ends early.
    #[error("snapshot structure: {0}")]
    Structure(String),
    /// A task record is invalid.
    #[error("snapshot record: {0}")]
    Record(#[from] RecordError),
    /// The records do not form a consistent state.
    #[error(transparent)]
    Restore(#[from] majordodo_core::snapshot::RestoreError),
    /// The stream the snapshot was decoded from failed (see [`decode_snapshot_from`]); an
    /// [`std::io::ErrorKind::InvalidData`] says that its bytes were damaged.
    #[error("read the snapshot: {0}")]
    Read(#[source] std::io::Error),
}

#[derive(Clone, PartialEq, Message)]
struct ItemPb {
    #[prost(oneof = "ItemKind", tags = "1, 2, 3, 4, 5, 6, 7, 50, 70, 80, 90")]
    item: Option<ItemKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ItemKind {
    #[prost(message, tag = "1")]
    Header(HeaderPb),
    #[prost(message, tag = "2")]
    Task(TaskPb),
    #[prost(message, tag = "3")]
    Worker(WorkerPb),
    #[prost(message, tag = "4")]
    Transaction(TransactionPb),
    #[prost(message, tag = "5")]
    CodePool(CodePoolPb),
    #[prost(message, tag = "6")]
    End(EndPb),
    /// Since version 2.
    #[prost(message, tag = "7")]
    IdempotencyKey(IdempotencyKeyPb),
    /// Since version 3: the next chunk of the code pool item before it.
    #[prost(message, tag = "70")]
    CodePoolChunk(CodePoolChunkPb),
    /// Since version 3.
    #[prost(message, tag = "50")]
    ServiceLevel(ServiceLevelItemPb),
    /// Since version 3.
    #[prost(message, tag = "80")]
    Quota(QuotaPb),
    /// Since version 3: a worker credential's verifier (revoked ones too).
    #[prost(message, tag = "90")]
    Credential(CredentialPb),
}

/// Since version 3.
#[derive(Clone, PartialEq, Message)]
struct CodePoolChunkPb {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceLevelItemPb {
    #[prost(string, tag = "1")]
    user_id: String,
    #[prost(message, optional, tag = "2")]
    level: Option<LevelPb>,
}

#[derive(Clone, PartialEq, Message)]
struct HeaderPb {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    lsn: u64,
    #[prost(uint64, tag = "3")]
    max_task_id: u64,
    #[prost(uint64, tag = "4")]
    max_transaction_id: u64,
}

#[derive(Clone, PartialEq, Message)]
struct TaskPb {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    task_type: String,
    #[prost(string, tag = "3")]
    user_id: String,
    #[prost(string, tag = "4")]
    data: String,
    #[prost(uint32, tag = "5")]
    status: u32,
    #[prost(uint32, tag = "6")]
    attempts: u32,
    #[prost(uint32, tag = "7")]
    max_attempts: u32,
    #[prost(string, optional, tag = "8")]
    result: Option<String>,
    #[prost(string, optional, tag = "9")]
    worker_id: Option<String>,
    #[prost(int64, tag = "10")]
    created: i64,
    #[prost(int64, tag = "11")]
    deadline: i64,
    #[prost(int64, tag = "12")]
    requested_start_time: i64,
    #[prost(string, optional, tag = "13")]
    slot: Option<String>,
    #[prost(string, optional, tag = "14")]
    codepool: Option<String>,
    #[prost(string, optional, tag = "15")]
    mode: Option<String>,
    #[prost(string, repeated, tag = "16")]
    resources: Vec<String>,
    /// Since version 3.
    #[prost(uint32, tag = "40")]
    deferrals: u32,
    #[prost(sint32, tag = "50")]
    priority: i32,
    #[prost(btree_map = "string, uint64", tag = "80")]
    needs: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, PartialEq, Message)]
struct WorkerPb {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    location: String,
    #[prost(string, tag = "3")]
    process_id: String,
    #[prost(int64, tag = "4")]
    last_connection: i64,
    #[prost(uint32, tag = "5")]
    status: u32,
}

#[derive(Clone, PartialEq, Message)]
struct TransactionPb {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    created: i64,
    #[prost(message, repeated, tag = "3")]
    prepared: Vec<NewTaskPb>,
    /// Since version 3.
    #[prost(string, optional, tag = "40")]
    owner: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct CodePoolPb {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(int64, tag = "2")]
    created: i64,
    #[prost(int64, tag = "3")]
    ttl: i64,
    /// Versions 1 and 2: the whole archive.
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
    /// Since version 3.
    #[prost(uint64, tag = "70")]
    size: u64,
    /// Since version 3.
    #[prost(bytes = "vec", tag = "71")]
    sha256: Vec<u8>,
    /// Since version 3.
    #[prost(uint32, tag = "72")]
    chunk_count: u32,
}

#[derive(Clone, PartialEq, Message)]
struct IdempotencyKeyPb {
    #[prost(string, tag = "1")]
    user_id: String,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(uint64, tag = "3")]
    task_id: u64,
    #[prost(int64, tag = "4")]
    created: i64,
}

#[derive(Clone, PartialEq, Message)]
struct EndPb {
    #[prost(uint64, tag = "1")]
    tasks: u64,
    #[prost(uint64, tag = "2")]
    workers: u64,
    #[prost(uint64, tag = "3")]
    transactions: u64,
    #[prost(uint64, tag = "4")]
    codepools: u64,
    /// Since version 3.
    #[prost(uint64, tag = "50")]
    service_levels: u64,
    /// Since version 3.
    #[prost(uint64, tag = "80")]
    quotas: u64,
    /// Since version 3.
    #[prost(uint64, tag = "90")]
    credentials: u64,
    /// Since version 2.
    #[prost(uint64, tag = "5")]
    idempotency_keys: u64,
}

fn put(out: &mut Vec<u8>, item: ItemKind) {
    ItemPb { item: Some(item) }
        .encode_length_delimited(out)
        .expect("a Vec grows as needed");
}

/// Encodes a whole state, from the copy [`BrokerState::snapshot_source`] takes.
pub fn encode_snapshot(source: &SnapshotSource) -> Vec<u8> {
    // Rough size: tasks dominate; reserving avoids repeated doubling of a large buffer.
    let mut out = Vec::with_capacity(64 + source.tasks.len() * 96);
    let header = source.header;
    put(
        &mut out,
        ItemKind::Header(HeaderPb {
            version: SNAPSHOT_FORMAT_VERSION,
            lsn: header.lsn,
            max_task_id: header.max_task_id,
            max_transaction_id: header.max_transaction_id,
        }),
    );
    let mut end = EndPb::default();
    for (user, level) in &source.service_levels {
        put(
            &mut out,
            ItemKind::ServiceLevel(ServiceLevelItemPb {
                user_id: user.clone(),
                level: Some(LevelPb {
                    group: level.group,
                    resources: level.resources.clone(),
                    weight: level.weight,
                }),
            }),
        );
        end.service_levels += 1;
    }
    for (tenant, quota) in &source.quotas {
        let (user_id, group) = QuotaPb::of(tenant);
        put(
            &mut out,
            ItemKind::Quota(QuotaPb {
                user_id,
                group,
                quota: quota.iter().cloned().collect(),
                reset: false,
                timestamp: 0,
            }),
        );
        end.quotas += 1;
    }
    for c in &source.credentials {
        put(&mut out, ItemKind::Credential(CredentialPb::of(c)));
        end.credentials += 1;
    }
    for task in &source.tasks {
        let r = TaskRecord::from(&**task);
        put(
            &mut out,
            ItemKind::Task(TaskPb {
                id: r.id,
                task_type: r.task_type,
                user_id: r.user_id,
                data: r.data,
                status: r.status.into(),
                attempts: r.attempts,
                max_attempts: r.max_attempts,
                result: r.result,
                worker_id: r.worker_id,
                created: r.created,
                deadline: r.deadline,
                requested_start_time: r.requested_start_time,
                slot: r.slot,
                codepool: r.codepool,
                mode: r.mode,
                resources: r.resources,
                deferrals: r.deferrals,
                priority: r.priority,
                needs: r.needs.into_iter().collect(),
            }),
        );
        end.tasks += 1;
    }
    for w in &source.workers {
        let w = WorkerSnapshot::from(w);
        put(
            &mut out,
            ItemKind::Worker(WorkerPb {
                id: w.id,
                location: w.location,
                process_id: w.process_id,
                last_connection: w.last_connection,
                status: w.status.into(),
            }),
        );
        end.workers += 1;
    }
    for t in &source.transactions {
        put(
            &mut out,
            ItemKind::Transaction(TransactionPb {
                id: t.id.0,
                created: t.created,
                prepared: t.prepared.iter().map(NewTaskPb::from).collect(),
                owner: t.owner.clone(),
            }),
        );
        end.transactions += 1;
    }
    for c in &source.codepools {
        put(
            &mut out,
            ItemKind::CodePool(CodePoolPb {
                id: c.id.clone(),
                created: c.created,
                ttl: c.ttl,
                data: Vec::new(),
                size: c.size,
                sha256: c.sha256.to_vec(),
                chunk_count: c.chunk_count,
            }),
        );
        for chunk in &c.chunks {
            put(
                &mut out,
                ItemKind::CodePoolChunk(CodePoolChunkPb {
                    id: c.id.clone(),
                    data: chunk.to_vec(),
                }),
            );
        }
        end.codepools += 1;
    }
    for k in &source.idempotency_keys {
        put(
            &mut out,
            ItemKind::IdempotencyKey(IdempotencyKeyPb {
                user_id: k.user_id.to_string(),
                key: k.key.to_string(),
                task_id: k.task_id.0,
                created: k.created,
            }),
        );
        end.idempotency_keys += 1;
    }
    put(&mut out, ItemKind::End(end));
    out
}

/// The log position a snapshot covers, read from its header without decoding the rest.
///
/// # Errors
/// [`SnapshotError`] when the stream does not start with a valid header.
pub fn snapshot_lsn(bytes: &[u8]) -> Result<u64, SnapshotError> {
    let mut buf = bytes;
    match next_item(&mut buf, 0)? {
        Some(ItemKind::Header(h)) => {
            check_version(h.version)?;
            Ok(h.lsn)
        }
        _ => Err(SnapshotError::Structure(
            "does not start with a header".into(),
        )),
    }
}

fn check_version(version: u32) -> Result<(), SnapshotError> {
    if (MIN_SNAPSHOT_FORMAT_VERSION..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(SnapshotError::UnsupportedVersion(version))
    }
}

fn next_item(buf: &mut &[u8], index: u64) -> Result<Option<ItemKind>, SnapshotError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let item = ItemPb::decode_length_delimited(&mut *buf)
        .map_err(|source| SnapshotError::Malformed { index, source })?;
    match item.item {
        Some(kind) => Ok(Some(kind)),
        None => Err(SnapshotError::Structure(format!(
            "item {index} is empty or of an unknown kind"
        ))),
    }
}

/// Decodes a snapshot into a state, rebuilding every index.
///
/// # Errors
/// [`SnapshotError`] on malformed bytes, an unknown version, a truncated stream or inconsistent
/// records.
pub fn decode_snapshot(
    bytes: &[u8],
    mapper: Arc<dyn GroupMapper>,
) -> Result<BrokerState, SnapshotError> {
    let items = Items {
        buf: bytes,
        index: 0,
    };
    decode_on(items, mapper, bytes.len() >= PARALLEL_DECODE_BYTES)
}

/// [`decode_snapshot`] of the bytes `source` streams (`len` of them, as far as the caller
/// knows: it chooses whether the parsing gets a thread of its own). The bytes are read as the
/// items are parsed, so only a buffer of the largest item or so is held besides the state; a
/// decompressing reader does its work on the parsing thread.
///
/// # Errors
/// As [`decode_snapshot`], and [`SnapshotError::Read`] when `source` fails.
pub fn decode_snapshot_from(
    source: impl std::io::Read + Send,
    len: u64,
    mapper: Arc<dyn GroupMapper>,
) -> Result<BrokerState, SnapshotError> {
    decode_on(
        StreamItems::new(source),
        mapper,
        len >= PARALLEL_DECODE_BYTES as u64,
    )
}

/// Builds the state from `items`, parsing them on a thread of their own if `parallel`.
fn decode_on(
    mut items: impl ItemSource,
    mapper: Arc<dyn GroupMapper>,
    parallel: bool,
) -> Result<BrokerState, SnapshotError> {
    if !parallel {
        return build_state(move || items.next(), mapper);
    }
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Parsed>>(BATCHES_AHEAD);
        s.spawn(move || {
            loop {
                let mut batch = Vec::with_capacity(ITEM_BATCH);
                let mut last = false;
                while batch.len() < ITEM_BATCH && !last {
                    let parsed = items.next();
                    last = !matches!(parsed, Ok(Some(_)));
                    batch.push(parsed);
                }
                // The builder hangs up when it stops early (on an error).
                if tx.send(batch).is_err() || last {
                    return;
                }
            }
        });
        let mut batch = Vec::new().into_iter();
        let next = move || {
            loop {
                if let Some(parsed) = batch.next() {
                    return parsed;
                }
                // The parser sends until its last item, an end or an error, and that one
                // ends the build: it never hangs up first, unless it panicked (which the
                // scope passes on).
                batch = rx
                    .recv()
                    .map_err(|_| SnapshotError::Structure("the item parser stopped".into()))?
                    .into_iter();
            }
        };
        build_state(next, mapper)
    })
}

/// Snapshots of at least this many bytes are decoded on two threads: one parses the items, the
/// other builds the state from them, so that the two halves of the work overlap.
const PARALLEL_DECODE_BYTES: usize = 1 << 20;
/// Items the parsing thread hands over at once.
const ITEM_BATCH: usize = 1024;
/// Batches parsed ahead of the builder, at most.
const BATCHES_AHEAD: usize = 4;

/// An item, with the number of bytes of the stream after it if it is the end marker (the only
/// item nothing may follow; 0 for the others); `None` past the last byte.
type Parsed = Result<Option<(ItemKind, usize)>, SnapshotError>;

/// The items of a snapshot, in order.
trait ItemSource: Send {
    fn next(&mut self) -> Parsed;
}

/// The items of a snapshot's bytes.
struct Items<'a> {
    buf: &'a [u8],
    /// Position of the next item in the stream (the header's is 0).
    index: u64,
}

impl ItemSource for Items<'_> {
    fn next(&mut self) -> Parsed {
        let item = next_item(&mut self.buf, self.index)?;
        self.index += 1;
        Ok(item.map(|kind| (kind, self.buf.len())))
    }
}

/// Bytes read from a stream at once, at least.
const STREAM_READ: usize = 256 * 1024;

/// The items of a snapshot streamed from a reader. Each item is parsed from a slice that
/// holds it whole (or, at a damaged or cut end, all the bytes that are left), so every item
/// and every error is the one [`Items`] gives for the same bytes.
struct StreamItems<R> {
    source: R,
    /// `buf[start..end]` holds the bytes read and not parsed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    index: u64,
}

impl<R: std::io::Read> StreamItems<R> {
    fn new(source: R) -> StreamItems<R> {
        StreamItems {
            source,
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            index: 0,
        }
    }

    /// Reads until `want` bytes are buffered or the stream ends; the buffer grows only as
    /// bytes arrive, so a damaged length cannot make it reserve more than the stream holds.
    fn fill(&mut self, want: usize) -> Result<(), SnapshotError> {
        while self.end - self.start < want && !self.eof {
            if self.start > 0 && self.buf.len() - self.start < want.max(STREAM_READ) {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < STREAM_READ {
                let len = (self.buf.len() * 2).max(self.end + STREAM_READ);
                self.buf.resize(len, 0);
            }
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SnapshotError::Read(e)),
            }
        }
        Ok(())
    }

    /// Bytes left in the stream, read to its end.
    fn rest(&mut self) -> Result<usize, SnapshotError> {
        let mut left = self.end - self.start;
        self.start = self.end;
        if !self.eof {
            left += std::io::copy(&mut self.source, &mut std::io::sink())
                .map_err(SnapshotError::Read)? as usize;
            self.eof = true;
        }
        Ok(left)
    }
}

impl<R: std::io::Read + Send> ItemSource for StreamItems<R> {
    fn next(&mut self) -> Parsed {
        // The length prefix is a varint of at most 10 bytes.
        self.fill(10)?;
        let mut prefix = &self.buf[self.start..self.end];
        let whole = match prost::encoding::decode_varint(&mut prefix) {
            Ok(len) => {
                let prefix_len = self.end - self.start - prefix.len();
                usize::try_from(len)
                    .ok()
                    .and_then(|len| len.checked_add(prefix_len))
            }
            Err(_) => None,
        };
        if let Some(whole) = whole {
            self.fill(whole)?;
        }
        let available = self.end - self.start;
        // The item whole, or (when it is cut or its prefix is damaged) what is left, on which
        // the parse fails as it does on a slice.
        let len = whole.map_or(available, |whole| whole.min(available));
        let mut item = &self.buf[self.start..self.start + len];
        let parsed = next_item(&mut item, self.index);
        self.start += len - item.len();
        let item = parsed?;
        self.index += 1;
        match item {
            Some(end @ ItemKind::End(_)) => Ok(Some((end, self.rest()?))),
            Some(kind) => Ok(Some((kind, 0))),
            None => Ok(None),
        }
    }
}

/// Builds the state from the items `next` gives, in the order of the stream.
fn build_state(
    mut next: impl FnMut() -> Parsed,
    mapper: Arc<dyn GroupMapper>,
) -> Result<BrokerState, SnapshotError> {
    let (header, version) = match next()?.map(|(kind, _)| kind) {
        Some(ItemKind::Header(h)) => {
            check_version(h.version)?;
            let header = SnapshotHeader {
                lsn: h.lsn,
                max_task_id: h.max_task_id,
                max_transaction_id: h.max_transaction_id,
            };
            (header, h.version)
        }
        _ => {
            return Err(SnapshotError::Structure(
                "does not start with a header".into(),
            ));
        }
    };
    let mut builder = StateBuilder::new(header, mapper);
    let mut seen = EndPb::default();
    let mut index = 1u64;
    // The pool the chunks that follow belong to.
    let mut current_pool: Option<String> = None;
    loop {
        let (item, after) =
            next()?.ok_or_else(|| SnapshotError::Structure("ends before its end marker".into()))?;
        index += 1;
        match item {
            ItemKind::Header(_) => {
                return Err(SnapshotError::Structure(format!(
                    "second header at item {index}"
                )));
            }
            ItemKind::Task(t) => {
                let status = u8::try_from(t.status).map_err(|_| {
                    SnapshotError::Structure(format!("task {}: status code {}", t.id, t.status))
                })?;
                builder.add_task(TaskRecord {
                    id: t.id,
                    task_type: t.task_type,
                    user_id: t.user_id,
                    data: t.data,
                    status,
                    attempts: t.attempts,
                    max_attempts: t.max_attempts,
                    result: t.result,
                    worker_id: t.worker_id,
                    created: t.created,
                    deadline: t.deadline,
                    requested_start_time: t.requested_start_time,
                    slot: t.slot,
                    codepool: t.codepool,
                    mode: t.mode,
                    resources: t.resources,
                    deferrals: t.deferrals,
                    priority: t.priority,
                    needs: crate::record::amounts_of("task.needs", t.needs, false)?,
                })?;
                seen.tasks += 1;
            }
            ItemKind::Worker(w) => {
                let status = u8::try_from(w.status).map_err(|_| {
                    SnapshotError::Structure(format!("worker {}: status code {}", w.id, w.status))
                })?;
                builder.add_worker(WorkerSnapshot {
                    id: w.id,
                    location: w.location,
                    process_id: w.process_id,
                    last_connection: w.last_connection,
                    status,
                })?;
                seen.workers += 1;
            }
            ItemKind::Transaction(t) => {
                let prepared = t
                    .prepared
                    .into_iter()
                    .map(NewTaskPb::into_task)
                    .collect::<Result<Vec<_>, _>>()?;
                builder.add_transaction(Transaction {
                    id: TransactionId(t.id),
                    created: t.created,
                    owner: t.owner,
                    prepared,
                })?;
                seen.transactions += 1;
            }
            ItemKind::CodePool(c) => {
                let pool = if version < 3 {
                    // The whole archive in the item, as the one-record creation logged it.
                    let sha256 = majordodo_core::codepool::sha256(&c.data);
                    let chunks: Vec<Arc<[u8]>> = if c.data.is_empty() {
                        Vec::new()
                    } else {
                        vec![Arc::from(c.data.into_boxed_slice())]
                    };
                    CodePool {
                        id: c.id,
                        created: c.created,
                        ttl: c.ttl,
                        size: chunks.iter().map(|c| c.len() as u64).sum(),
                        sha256,
                        chunk_count: chunks.len() as u32,
                        chunks,
                    }
                } else {
                    if !c.data.is_empty() {
                        return Err(SnapshotError::Structure(format!(
                            "item {index}: code pool {} carries inline data in a version {version} snapshot",
                            c.id
                        )));
                    }
                    let sha256 = c.sha256.as_slice().try_into().map_err(|_| {
                        SnapshotError::Structure(format!(
                            "item {index}: code pool {} checksum is not 32 bytes",
                            c.id
                        ))
                    })?;
                    CodePool {
                        id: c.id,
                        created: c.created,
                        ttl: c.ttl,
                        size: c.size,
                        sha256,
                        chunk_count: c.chunk_count,
                        chunks: Vec::new(),
                    }
                };
                current_pool = Some(pool.id.clone());
                builder.add_codepool(pool)?;
                seen.codepools += 1;
            }
            ItemKind::CodePoolChunk(c) => {
                if version < 3 || current_pool.as_deref() != Some(c.id.as_str()) {
                    return Err(SnapshotError::Structure(format!(
                        "item {index}: chunk of code pool {} does not follow its pool",
                        c.id
                    )));
                }
                builder.add_codepool_chunk(&c.id, c.data)?;
            }
            ItemKind::IdempotencyKey(k) => {
                if version < 2 {
                    return Err(SnapshotError::Structure(format!(
                        "item {index}: idempotency key in a version {version} snapshot"
                    )));
                }
                builder.add_idempotency_key(IdempotencyKey {
                    user_id: k.user_id.into(),
                    key: k.key.into(),
                    task_id: TaskId(k.task_id),
                    created: k.created,
                })?;
                seen.idempotency_keys += 1;
            }
            ItemKind::ServiceLevel(l) => {
                if version < 3 {
                    return Err(SnapshotError::Structure(format!(
                        "item {index}: service level in a version {version} snapshot"
                    )));
                }
                let level = l.level.ok_or_else(|| {
                    SnapshotError::Structure(format!("item {index}: service level without level"))
                })?;
                builder.add_service_level(
                    &l.user_id,
                    majordodo_core::model::ServiceLevel {
                        group: level.group,
                        resources: level.resources,
                        weight: level.weight,
                    },
                )?;
                seen.service_levels += 1;
            }
            ItemKind::Quota(q) => {
                if version < 3 {
                    return Err(SnapshotError::Structure(format!(
                        "item {index}: quota in a version {version} snapshot"
                    )));
                }
                if q.reset {
                    return Err(SnapshotError::Structure(format!(
                        "item {index}: a quota item is never a reset"
                    )));
                }
                let tenant = q.tenant()?;
                let quota = crate::record::amounts_of("quota.quota", q.quota, true)?;
                builder.add_quota(tenant, quota)?;
                seen.quotas += 1;
            }
            ItemKind::Credential(c) => {
                if version < 3 {
                    return Err(SnapshotError::Structure(format!(
                        "item {index}: worker credential in a version {version} snapshot"
                    )));
                }
                builder.add_credential(c.into_credential()?)?;
                seen.credentials += 1;
            }
            ItemKind::End(end) => {
                if end != seen {
                    return Err(SnapshotError::Structure(format!(
                        "end marker counts {end:?} but the stream holds {seen:?}"
                    )));
                }
                if after != 0 {
                    return Err(SnapshotError::Structure(format!(
                        "{after} bytes after the end marker"
                    )));
                }
                break;
            }
        }
    }
    Ok(builder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordodo_core::{DefaultGroupMapper, LogEntry, TaskStatus};
    use proptest::prelude::*;

    fn sample_state() -> BrokerState {
        let mut s = BrokerState::default();
        let mut lsn = 0;
        let mut apply = |s: &mut BrokerState, e: LogEntry| {
            lsn += 1;
            s.apply(lsn, e).unwrap();
        };
        for i in 1..=30u64 {
            apply(
                &mut s,
                LogEntry::AddTask(majordodo_core::NewTask {
                    id: TaskId(i),
                    task_type: format!("t{}", i % 3),
                    user_id: format!("{}", i % 4),
                    data: "é data".repeat(i as usize % 5),
                    max_attempts: (i % 3) as u32,
                    attempts: 0,
                    requested_start_time: if i % 7 == 0 { 10_000 } else { 0 },
                    deadline: if i % 5 == 0 { 20_000 } else { 0 },
                    slot: (i % 6 == 0).then(|| format!("s{i}")),
                    codepool: (i % 9 == 0).then(|| "pool".to_string()),
                    mode: (i % 9 == 0).then(|| "object".to_string()),
                    created: 100 + i as i64,
                    idempotency_key: (i % 4 == 0).then(|| format!("key-{i}")),
                    priority: (i % 3) as i32 - 1,
                    needs: if i % 5 == 1 {
                        vec![("cpu".into(), 100 * i), ("db:orders".into(), 1)]
                    } else {
                        Vec::new()
                    },
                }),
            );
        }
        apply(
            &mut s,
            LogEntry::WorkerConnected {
                worker_id: "w1".into(),
                location: "host".into(),
                process_id: "p".into(),
                timestamp: 5,
            },
        );
        apply(
            &mut s,
            LogEntry::AssignTask {
                task_id: TaskId(1),
                worker_id: "w1".into(),
                attempt: 1,
                resources: vec!["db".into()],
                timestamp: 6,
            },
        );
        apply(
            &mut s,
            LogEntry::AssignTask {
                task_id: TaskId(2),
                worker_id: "w1".into(),
                attempt: 1,
                resources: vec![],
                timestamp: 6,
            },
        );
        apply(
            &mut s,
            LogEntry::TaskStatusChange {
                task_id: TaskId(2),
                status: TaskStatus::Finished,
                attempt: 1,
                worker_id: Some("w1".into()),
                result: Some("ok".into()),
                timestamp: 7,
            },
        );
        apply(
            &mut s,
            LogEntry::BeginTransaction {
                transaction_id: TransactionId(3),
                timestamp: 8,
                owner: Some("alice".into()),
            },
        );
        apply(
            &mut s,
            LogEntry::AssignTask {
                task_id: TaskId(3),
                worker_id: "w1".into(),
                attempt: 1,
                resources: vec![],
                timestamp: 8,
            },
        );
        apply(
            &mut s,
            LogEntry::DeferTask {
                task_id: TaskId(3),
                attempt: 1,
                worker_id: "w1".into(),
                until: 50_000,
                timestamp: 8,
            },
        );
        apply(
            &mut s,
            LogEntry::PrepareAddTask {
                transaction_id: TransactionId(3),
                task: majordodo_core::NewTask {
                    id: TaskId(40),
                    task_type: "t".into(),
                    user_id: "u".into(),
                    data: String::new(),
                    max_attempts: 1,
                    attempts: 0,
                    requested_start_time: 0,
                    deadline: 0,
                    slot: Some("txslot".into()),
                    codepool: None,
                    mode: None,
                    created: 8,
                    idempotency_key: Some("prepared".into()),
                    priority: 4,
                    needs: vec![("memory".into(), 5)],
                },
            },
        );
        apply(
            &mut s,
            LogEntry::CreateCodePool {
                id: "pool".into(),
                timestamp: 9,
                ttl: 60_000,
                data: vec![0, 1, 2, 255],
            },
        );
        // A pool logged in three chunks, and one whose creation stopped after its first chunk.
        for e in majordodo_core::codepool::pool_entries("big", 10, 0, &big_archive(), 1000) {
            apply(&mut s, e);
        }
        for e in majordodo_core::codepool::pool_entries("half", 11, 5, &big_archive(), 2000)
            .into_iter()
            .take(2)
        {
            apply(&mut s, e);
        }
        apply(
            &mut s,
            LogEntry::SetServiceLevel {
                user_id: "3".into(),
                level: Some(majordodo_core::model::ServiceLevel {
                    group: 7,
                    resources: vec!["db".into(), "hbase".into()],
                    weight: 3,
                }),
                timestamp: 10,
            },
        );
        apply(
            &mut s,
            LogEntry::SetQuota {
                tenant: majordodo_core::quota::QuotaTenant::User("3".into()),
                quota: Some(vec![("cpu".into(), 1000), ("tasks".into(), 5)]),
                timestamp: 12,
            },
        );
        apply(
            &mut s,
            LogEntry::SetQuota {
                tenant: majordodo_core::quota::QuotaTenant::Group(7),
                quota: Some(vec![("memory".into(), 64)]),
                timestamp: 12,
            },
        );
        apply(
            &mut s,
            LogEntry::SetTaskPriority {
                task_id: TaskId(3),
                priority: 9,
                timestamp: 11,
            },
        );
        for (id, worker, comment) in [("c1", "w1", Some("rack 4")), ("c2", "w1", None)] {
            apply(
                &mut s,
                LogEntry::AddWorkerCredential {
                    credential_id: id.into(),
                    worker_id: worker.into(),
                    stored_key: [1; 32],
                    server_key: [2; 32],
                    comment: comment.map(str::to_owned),
                    timestamp: 13,
                },
            );
        }
        apply(
            &mut s,
            LogEntry::RevokeWorkerCredential {
                credential_id: "c1".into(),
                timestamp: 14,
            },
        );
        s
    }

    #[test]
    fn snapshot_round_trips_a_state_with_every_kind_of_record() {
        // Goal: decode(encode(state)) == state, indexes, transactions and code pools included.
        let state = sample_state();
        let bytes = encode_snapshot(&state.snapshot_source());
        assert_eq!(snapshot_lsn(&bytes).unwrap(), state.last_lsn());
        let back = decode_snapshot(&bytes, Arc::new(DefaultGroupMapper)).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.idempotency_key_count(), 7);
        assert_eq!(back.idempotency_key("0", "key-4"), Some((TaskId(4), 104)));
        assert!(back.codepool("pool").is_some());
        assert_eq!(back.task(TaskId(9)).unwrap().mode(), Some("object"));
        assert_eq!(back.service_level_of("3").group, 7);
        assert_eq!(back.queued_group_of("3"), Some(7));
        assert_eq!(back.task(TaskId(3)).unwrap().priority(), 9);
        assert_eq!(back.resource_in_use("db"), 1);
        // Quotas, needs and the running tasks' use come back.
        assert_eq!(back.quotas(), state.quotas());
        assert_eq!(back.quotas().groups.len(), 1);
        // Worker credentials, revoked or not, come back with their verifiers.
        assert_eq!(back.credentials().count(), 2);
        assert_eq!(back.credential("c1").unwrap().revoked, Some(14));
        assert!(back.credential_for("c2", "w1").is_ok());
        assert!(back.credential_for("c1", "w1").is_err());
        assert_eq!(back.tenant_use().user("1").unwrap().get("cpu"), 100);
        assert_eq!(back.task(TaskId(6)).unwrap().needs().len(), 2);
        // A quota item is refused in a version 2 snapshot.
        let mut v2 = Vec::new();
        put(
            &mut v2,
            ItemKind::Header(HeaderPb {
                version: 2,
                ..Default::default()
            }),
        );
        put(
            &mut v2,
            ItemKind::Quota(QuotaPb {
                user_id: Some("u".into()),
                quota: [("cpu".to_string(), 1)].into(),
                ..Default::default()
            }),
        );
        let err = decode_snapshot(&v2, Arc::new(DefaultGroupMapper)).unwrap_err();
        assert!(err.to_string().contains("quota in a version 2"), "{err}");
        let big = back.codepool("big").unwrap();
        assert_eq!(big.chunks.len(), 3);
        assert_eq!(big.data(), big_archive());
        assert_eq!(back.codepool("half").unwrap().chunks.len(), 1);
        assert_eq!(back.code_pool_users("pool"), state.code_pool_users("pool"));
    }

    fn big_archive() -> Vec<u8> {
        (0..2500u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn version_2_whole_pool_items_still_decode() {
        // Goal: a version 2 snapshot, whose pool items carry the whole archive, decodes to
        // complete pools with the same bytes and checksum; chunk items are refused there.
        let mut v2 = Vec::new();
        put(
            &mut v2,
            ItemKind::Header(HeaderPb {
                version: 2,
                lsn: 3,
                ..Default::default()
            }),
        );
        put(
            &mut v2,
            ItemKind::CodePool(CodePoolPb {
                id: "old".into(),
                created: 1,
                ttl: 0,
                data: vec![9, 8, 7],
                ..Default::default()
            }),
        );
        put(
            &mut v2,
            ItemKind::End(EndPb {
                codepools: 1,
                ..Default::default()
            }),
        );
        let back = decode_snapshot(&v2, Arc::new(DefaultGroupMapper)).unwrap();
        let old = back.codepool("old").unwrap();
        assert!(old.is_complete());
        assert_eq!(old.data(), vec![9, 8, 7]);
        assert_eq!(old.sha256, majordodo_core::codepool::sha256(&[9, 8, 7]));
        let mut bad = Vec::new();
        put(
            &mut bad,
            ItemKind::Header(HeaderPb {
                version: 2,
                ..Default::default()
            }),
        );
        put(
            &mut bad,
            ItemKind::CodePoolChunk(CodePoolChunkPb {
                id: "old".into(),
                data: vec![1],
            }),
        );
        assert!(decode_snapshot(&bad, Arc::new(DefaultGroupMapper)).is_err());
    }

    #[test]
    fn every_truncation_is_detected() {
        // Goal: a stream cut anywhere fails to decode (the end marker guards the tail).
        let bytes = encode_snapshot(&sample_state().snapshot_source());
        for cut in 0..bytes.len() {
            assert!(
                decode_snapshot(&bytes[..cut], Arc::new(DefaultGroupMapper)).is_err(),
                "cut at {cut} of {} decoded",
                bytes.len()
            );
        }
    }

    #[test]
    fn parsing_on_its_own_thread_decodes_and_refuses_as_inline() {
        // Goal: a snapshot large enough to be parsed on a thread of its own (many batches of
        // items) decodes to the same state, and every damaged stream gives the same error, as
        // when parsed inline.
        let mut state = sample_state();
        let mut lsn = state.last_lsn();
        for i in 1_000..1_000 + 3 * ITEM_BATCH as u64 {
            lsn += 1;
            state
                .apply(
                    lsn,
                    LogEntry::AddTask(majordodo_core::NewTask {
                        id: TaskId(i),
                        task_type: "bulk".into(),
                        user_id: format!("u{}", i % 7),
                        data: "x".repeat(400),
                        max_attempts: 1,
                        attempts: 0,
                        requested_start_time: 0,
                        deadline: 0,
                        slot: None,
                        codepool: None,
                        mode: None,
                        created: 1_000 + i as i64,
                        idempotency_key: Some(format!("k{i}")),
                        priority: 0,
                        needs: Vec::new(),
                    }),
                )
                .unwrap();
        }
        let bytes = encode_snapshot(&state.snapshot_source());
        assert!(
            bytes.len() >= PARALLEL_DECODE_BYTES,
            "{} bytes",
            bytes.len()
        );
        let decoded = decode_snapshot(&bytes, Arc::new(DefaultGroupMapper)).unwrap();
        assert_eq!(decoded.to_snapshot(), state.to_snapshot());
        let mut damaged = Vec::new();
        for cut in [1, bytes.len() / 3, bytes.len() / 2 + 7, bytes.len() - 1] {
            damaged.push(bytes[..cut].to_vec());
        }
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&[0, 0]);
        damaged.push(trailing);
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0xff;
        damaged.push(flipped);
        let mut repeated = bytes.clone();
        repeated.splice(
            bytes.len() / 2..bytes.len() / 2,
            bytes[..bytes.len() / 4].to_vec(),
        );
        damaged.push(repeated);
        for (i, d) in damaged.iter().enumerate() {
            let ways: Vec<String> = all_ways(d)
                .into_iter()
                .map(|w| w.map_or_else(|e| e.to_string(), |_| "decoded".into()))
                .collect();
            assert_ne!(ways[0], "decoded", "damaged stream {i}");
            for (way, other) in ways.iter().enumerate().skip(1) {
                assert_eq!(&ways[0], other, "damaged stream {i}, way {way}");
            }
        }
        for (way, decoded) in all_ways(&bytes).into_iter().enumerate() {
            assert_eq!(decoded.unwrap(), state.to_snapshot(), "way {way}");
        }
    }

    /// A reader that hands its bytes out in pieces of 1 to 1 000 bytes, in a fixed irregular
    /// order, so that items and their length prefixes straddle the reads.
    struct Trickle<'a> {
        bytes: &'a [u8],
        reads: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let piece = [1, 7, 1000, 3, 150, 2, 999, 64][self.reads % 8];
            let n = piece.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// `bytes` decoded inline, with the parsing on a thread of its own, and streamed (whole,
    /// and in pieces), each inline and on a thread of its own.
    fn all_ways(bytes: &[u8]) -> Vec<Result<majordodo_core::snapshot::Snapshot, SnapshotError>> {
        let mapper = || -> Arc<dyn GroupMapper> { Arc::new(DefaultGroupMapper) };
        let slice = || Items {
            buf: bytes,
            index: 0,
        };
        let trickle = || StreamItems::new(Trickle { bytes, reads: 0 });
        [
            decode_on(slice(), mapper(), false),
            decode_on(slice(), mapper(), true),
            decode_on(StreamItems::new(bytes), mapper(), false),
            decode_on(StreamItems::new(bytes), mapper(), true),
            decode_on(trickle(), mapper(), false),
            decode_on(trickle(), mapper(), true),
        ]
        .into_iter()
        .map(|decoded| decoded.map(|s| s.to_snapshot()))
        .collect()
    }

    #[test]
    fn a_failing_stream_is_reported_as_a_read_error() {
        // Goal: when the stream under a snapshot fails midway, the decode stops with that
        // error, its kind kept (a damaged body is told apart from the other failures by it).
        let bytes = encode_snapshot(&sample_state().snapshot_source());
        for len in [0, u64::MAX] {
            let cut = std::io::Read::chain(
                &bytes[..bytes.len() / 2],
                FailingRead(std::io::ErrorKind::InvalidData),
            );
            let err = decode_snapshot_from(cut, len, Arc::new(DefaultGroupMapper)).unwrap_err();
            assert!(
                matches!(&err, SnapshotError::Read(e) if e.kind() == std::io::ErrorKind::InvalidData),
                "{err}"
            );
        }
    }

    struct FailingRead(std::io::ErrorKind);

    impl std::io::Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
    }

    #[test]
    fn trailing_bytes_and_unknown_versions_are_refused() {
        // Goal: nothing may follow the end marker; a future version is refused by name.
        let mut bytes = encode_snapshot(&sample_state().snapshot_source());
        bytes.push(0);
        assert!(decode_snapshot(&bytes, Arc::new(DefaultGroupMapper)).is_err());
        let mut v4 = Vec::new();
        put(
            &mut v4,
            ItemKind::Header(HeaderPb {
                version: 4,
                ..Default::default()
            }),
        );
        let err = decode_snapshot(&v4, Arc::new(DefaultGroupMapper)).unwrap_err();
        assert!(err.to_string().contains("version 4"), "{err}");
    }

    /// The snapshot of `state` as a writer of `version` (1 or 2) made it: no service levels,
    /// no priorities, and for version 1 no key items.
    fn encode_old(state: &BrokerState, version: u32) -> Vec<u8> {
        let mut source = state.snapshot_source();
        if version < 2 {
            source.idempotency_keys.clear();
        }
        source.service_levels.clear();
        source.quotas.clear();
        source.credentials.clear();
        let v3 = encode_snapshot(&source);
        let mut buf = v3.as_slice();
        let mut out = Vec::new();
        while let Some(item) = next_item(&mut buf, 0).unwrap() {
            let item = match item {
                ItemKind::Header(h) => ItemKind::Header(HeaderPb { version, ..h }),
                ItemKind::Task(t) => ItemKind::Task(TaskPb {
                    priority: 0,
                    deferrals: 0,
                    needs: Default::default(),
                    ..t
                }),
                // Older pools carry their whole archive, and only complete pools existed.
                ItemKind::CodePool(c) => {
                    let pool = state.codepool(&c.id).unwrap();
                    if !pool.is_complete() {
                        continue;
                    }
                    ItemKind::CodePool(CodePoolPb {
                        id: c.id,
                        created: c.created,
                        ttl: c.ttl,
                        data: pool.data(),
                        ..Default::default()
                    })
                }
                ItemKind::CodePoolChunk(_) => continue,
                ItemKind::End(e) => ItemKind::End(EndPb {
                    codepools: e.codepools - 1,
                    ..e
                }),
                other => other,
            };
            put(&mut out, item);
        }
        out
    }

    fn encode_v1(state: &BrokerState) -> Vec<u8> {
        encode_old(state, 1)
    }

    fn tasks_at_priority_0(state: &BrokerState) -> Vec<TaskRecord> {
        let mut tasks = state.to_snapshot().tasks;
        for t in &mut tasks {
            t.priority = 0;
            t.deferrals = 0;
            t.needs.clear();
        }
        tasks
    }

    #[test]
    fn version_2_snapshots_still_decode_without_levels() {
        // Goal: a snapshot written before service levels and priorities decodes to the same
        // tasks at priority 0; a service-level item inside a version 2 snapshot is refused.
        let state = sample_state();
        let back = decode_snapshot(&encode_old(&state, 2), Arc::new(DefaultGroupMapper)).unwrap();
        assert_eq!(back.to_snapshot().tasks, tasks_at_priority_0(&state));
        assert_eq!(back.idempotency_key_count(), state.idempotency_key_count());
        assert_eq!(back.service_levels().count(), 0);
        let mut bad = Vec::new();
        put(
            &mut bad,
            ItemKind::Header(HeaderPb {
                version: 2,
                ..Default::default()
            }),
        );
        put(
            &mut bad,
            ItemKind::ServiceLevel(ServiceLevelItemPb {
                user_id: "u".into(),
                level: Some(LevelPb {
                    group: 2,
                    resources: vec![],
                    weight: 0,
                }),
            }),
        );
        put(
            &mut bad,
            ItemKind::End(EndPb {
                service_levels: 1,
                ..Default::default()
            }),
        );
        let err = decode_snapshot(&bad, Arc::new(DefaultGroupMapper)).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn version_1_snapshots_still_decode_without_keys() {
        // Goal: a snapshot written before idempotency keys existed decodes to the same state
        // with no key; a key item inside a version 1 snapshot is refused.
        let state = sample_state();
        let back = decode_snapshot(&encode_v1(&state), Arc::new(DefaultGroupMapper)).unwrap();
        assert_eq!(back.idempotency_key_count(), 0);
        assert_eq!(back.to_snapshot().tasks, tasks_at_priority_0(&state));
        assert_eq!(back.last_lsn(), state.last_lsn());
        let (old, new) = (
            back.codepool("big").unwrap(),
            state.codepool("big").unwrap(),
        );
        assert!(old.data() == new.data() && old.sha256 == new.sha256 && old.is_complete());
        let mut bad = Vec::new();
        put(
            &mut bad,
            ItemKind::Header(HeaderPb {
                version: 1,
                ..Default::default()
            }),
        );
        put(
            &mut bad,
            ItemKind::IdempotencyKey(IdempotencyKeyPb {
                user_id: "u".into(),
                key: "k".into(),
                task_id: 1,
                created: 1,
            }),
        );
        put(
            &mut bad,
            ItemKind::End(EndPb {
                idempotency_keys: 1,
                ..Default::default()
            }),
        );
        let err = decode_snapshot(&bad, Arc::new(DefaultGroupMapper)).unwrap_err();
        assert!(err.to_string().contains("version 1"), "{err}");
    }

    #[test]
    fn duplicate_idempotency_keys_are_refused() {
        // Goal: a snapshot naming one key of one user twice does not decode.
        let mut source = sample_state().snapshot_source();
        let first = source.idempotency_keys[0].clone();
        let first_key = first.key.clone();
        source.idempotency_keys.push(IdempotencyKey {
            task_id: TaskId(999),
            ..first
        });
        let err =
            decode_snapshot(&encode_snapshot(&source), Arc::new(DefaultGroupMapper)).unwrap_err();
        assert!(err.to_string().contains(&*first_key.as_text()), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Goal: outside data yields a state or an error, never a panic.
            let _ = decode_snapshot(&bytes, Arc::new(DefaultGroupMapper));
            let _ = snapshot_lsn(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            // Goal: a corrupted valid snapshot yields an error or some state, never a panic.
            let mut bytes = encode_snapshot(&sample_state().snapshot_source());
            let i = flip.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let _ = decode_snapshot(&bytes, Arc::new(DefaultGroupMapper));
        }
    }
}
