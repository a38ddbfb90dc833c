//! Code pools in the replicated state: chunked storage, checksums, references and expiry.
//!
//! A pool's archive is logged as a [`LogEntry::BeginCodePool`] header (size, chunk count,
//! SHA-256 of the whole) followed by that many [`LogEntry::CodePoolChunk`] entries, so that no
//! record is larger than the log allows whatever the archive's size. The pool is *complete*
//! (usable by tasks, listed by the views, served to workers) once its last chunk is applied and
//! the checksum of the reassembled bytes matched; until then it is *incomplete*. An incomplete pool
//! that no creation in flight will finish (the leader failed in the middle of writing it) is
//! deleted by the next leader's first tick.
//!
//! Rules (the original's, survey §2.11): a pool with a TTL expires `ttl` ms after its creation;
//! an expired pool is deleted (through a logged [`LogEntry::DeleteCodePool`] decided by the
//! leader's tick) once no waiting, delayed or running task names it.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::entry::LogEntry;
use crate::model::{CodePool, Millis};
use crate::state::{ApplyError, BrokerState};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The SHA-256 as lower-case hexadecimal, for views and logs.
pub fn hex(sha: &[u8; 32]) -> String {
    sha.iter().map(|b| format!("{b:02x}")).collect()
}

impl CodePool {
    /// Whether every chunk arrived (and the checksum matched).
    pub fn is_complete(&self) -> bool {
        self.chunks.len() == self.chunk_count as usize
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    /// When the pool expires, if it has a TTL.
    pub fn expires_at(&self) -> Option<Millis> {
        (self.ttl > 0).then(|| self.created.saturating_add(self.ttl))
    }

    /// Up to `max` bytes of the archive from `offset` (fewer at the end; none past it).
    pub fn read_at(&self, offset: u64, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0u64;
        for chunk in &self.chunks {
            let end = start + chunk.len() as u64;
            if out.len() >= max {
                break;
            }
            if end > offset {
                let from = offset.saturating_sub(start) as usize;
                let take = (chunk.len() - from).min(max - out.len());
                out.extend_from_slice(&chunk[from..from + take]);
            }
            start = end;
        }
        out
    }

    /// The whole archive, reassembled (a copy: for tests and tools).
    pub fn data(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }
}

/// Splits an archive into the entries that log it: the header, then chunks of at most
/// `chunk_size` bytes (at least 1).
pub fn pool_entries(
    id: &str,
    timestamp: Millis,
    ttl: Millis,
    data: &[u8],
    chunk_size: usize,
) -> Vec<LogEntry> {
    let chunk_size = chunk_size.max(1);
    let chunks: Vec<&[u8]> = data.chunks(chunk_size).collect();
    let mut entries = Vec::with_capacity(chunks.len() + 1);
    entries.push(LogEntry::BeginCodePool {
        id: id.to_owned(),
        timestamp,
        ttl,
        size: data.len() as u64,
        chunks: chunks.len() as u32,
        sha256: sha256(data),
    });
    for (i, c) in chunks.into_iter().enumerate() {
        entries.push(LogEntry::CodePoolChunk {
            id: id.to_owned(),
            index: i as u32,
            data: c.to_vec(),
        });
    }
    entries
}

/// SHA-256 of a pool's chunks, hashed in place.
fn chunks_sha256(pool: &CodePool) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for c in &pool.chunks {
        hasher.update(c);
    }
    hasher.finalize().into()
}

fn pool_error(id: &str, reason: &'static str) -> ApplyError {
    ApplyError::CodePool {
        id: id.to_owned(),
        reason,
    }
}

impl BrokerState {
    /// Waiting, delayed and running tasks that name pool `id`.
    pub fn code_pool_users(&self, id: &str) -> u32 {
        self.pool_refs.get(id).copied().unwrap_or(0)
    }

    /// Pools with a TTL, by expiry time.
    pub fn code_pools_by_expiry(&self) -> impl Iterator<Item = (Millis, &str)> + '_ {
        self.pool_expiry.iter().map(|(at, id)| (*at, id.as_str()))
    }

    /// Pools whose creation is not complete.
    pub fn incomplete_code_pools(&self) -> impl Iterator<Item = &CodePool> + '_ {
        self.codepools.values().filter(|p| !p.is_complete())
    }

    pub(crate) fn insert_pool(&mut self, pool: CodePool) {
        if let Some(at) = pool.expires_at() {
            self.pool_expiry.insert((at, pool.id.clone()));
        }
        self.codepools.insert(pool.id.clone(), pool);
    }

    pub(crate) fn apply_create_whole_pool(
        &mut self,
        id: String,
        timestamp: Millis,
        ttl: Millis,
        data: Vec<u8>,
    ) -> Result<(), ApplyError> {
        if self.codepools.contains_key(&id) {
            return Err(pool_error(&id, "already exists"));
        }
        let sha = sha256(&data);
        let chunks: Vec<Arc<[u8]>> = if data.is_empty() {
            Vec::new()
        } else {
            vec![Arc::from(data.into_boxed_slice())]
        };
        let size = chunks.iter().map(|c| c.len() as u64).sum();
        self.insert_pool(CodePool {
            id,
            created: timestamp,
            ttl,
            size,
            sha256: sha,
            chunk_count: chunks.len() as u32,
            chunks,
        });
        Ok(())
    }

    pub(crate) fn apply_begin_pool(
        &mut self,
        id: String,
        timestamp: Millis,
        ttl: Millis,
        size: u64,
        chunks: u32,
        sha: [u8; 32],
    ) -> Result<(), ApplyError> {
        if id.is_empty() {
            return Err(pool_error(&id, "empty id"));
        }
        if self.codepools.contains_key(&id) {
            return Err(pool_error(&id, "already exists"));
        }
        if chunks == 0 || size < u64::from(chunks) {
            return Err(pool_error(&id, "needs at least one non-empty chunk"));
        }
        if ttl < 0 {
            return Err(pool_error(&id, "negative ttl"));
        }
        self.insert_pool(CodePool {
            id,
            created: timestamp,
            ttl,
            size,
            sha256: sha,
            chunk_count: chunks,
            chunks: Vec::new(),
        });
        Ok(())
    }

    pub(crate) fn apply_pool_chunk(
        &mut self,
        id: String,
        index: u32,
        data: Vec<u8>,
    ) -> Result<(), ApplyError> {
        let pool = self
            .codepools
            .get(&id)
            .ok_or_else(|| pool_error(&id, "chunk of a pool that is not being created"))?;
        if pool.is_complete() {
            return Err(pool_error(&id, "chunk of a complete pool"));
        }
        if index as usize != pool.chunks.len() {
            return Err(pool_error(&id, "chunk out of order"));
        }
        if data.is_empty() {
            return Err(pool_error(&id, "empty chunk"));
        }
        let received = pool.received() + data.len() as u64;
        let last = index + 1 == pool.chunk_count;
        if received > pool.size || (!last && received == pool.size) {
            return Err(pool_error(&id, "chunks larger than the declared size"));
        }
        if last {
            if received != pool.size {
                return Err(pool_error(&id, "chunks smaller than the declared size"));
            }
            let mut hasher = Sha256::new();
            for c in &pool.chunks {
                hasher.update(c);
            }
            hasher.update(&data);
            let sha: [u8; 32] = hasher.finalize().into();
            if sha != pool.sha256 {
                return Err(pool_error(&id, "checksum mismatch"));
            }
        }
        self.codepools
            .get_mut(&id)
            .expect("checked above")
            .chunks
            .push(Arc::from(data.into_boxed_slice()));
        Ok(())
    }

    pub(crate) fn apply_delete_pool(&mut self, id: &str) -> Result<(), ApplyError> {
        let pool = self
            .codepools
            .remove(id)
            .ok_or_else(|| pool_error(id, "does not exist"))?;
        if let Some(at) = pool.expires_at() {
            self.pool_expiry.remove(&(at, pool.id));
        }
        Ok(())
    }

    /// A task naming `pool` became waiting, delayed or running (or was restored as such).
    pub(crate) fn pool_ref(&mut self, pool: Option<&str>) {
        if let Some(pool) = pool {
            *self.pool_refs.entry(pool.into()).or_default() += 1;
        }
    }

    /// A task naming `pool` ended (takes the index alone, so a task can stay borrowed).
    pub(crate) fn pool_unref(refs: &mut crate::HashMap<Box<str>, u32>, pool: Option<&str>) {
        if let Some(pool) = pool
            && let Some(n) = refs.get_mut(pool)
        {
            *n -= 1;
            if *n == 0 {
                refs.remove(pool);
            }
        }
    }

    /// Checks the pools and their derived indexes; part of `check_invariants`.
    pub(crate) fn check_pools(&self) -> Result<(), String> {
        let mut refs = crate::HashMap::<Box<str>, u32>::default();
        for task in self.tasks.values() {
            if !task.status.is_final()
                && let Some(pool) = task.codepool()
            {
                *refs.entry(pool.into()).or_default() += 1;
            }
        }
        if refs != self.pool_refs {
            return Err(format!(
                "code pool references {:?} != {:?}",
                self.pool_refs, refs
            ));
        }
        let mut expiring = 0;
        for (key, pool) in &self.codepools {
            if *key != pool.id {
                return Err(format!("code pool {key} is stored as {}", pool.id));
            }
            if pool.chunks.len() > pool.chunk_count as usize || pool.received() > pool.size {
                return Err(format!("code pool {key} holds more than it declared"));
            }
            if pool.is_complete()
                && (pool.received() != pool.size || chunks_sha256(pool) != pool.sha256)
            {
                return Err(format!(
                    "code pool {key} does not match its size or checksum"
                ));
            }
            if let Some(at) = pool.expires_at() {
                expiring += 1;
                if !self.pool_expiry.contains(&(at, pool.id.clone())) {
                    return Err(format!("code pool {key} is not in the expiry index"));
                }
            }
        }
        if expiring != self.pool_expiry.len() {
            return Err("code pool expiry index holds unknown pools".into());
        }
        Ok(())
    }
}
