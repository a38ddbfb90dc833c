//! Code pools over HTTP: the `createCodePool` and `deleteCodePool` actions and the `codePool`
//! and `codePools` views, in the original's shapes (survey §3.2, §3.3) where it had them.
//!
//! `createCodePool` is `{"action": "createCodePool", "id": ..., "ttl": ms, "data": base64}`
//! (`ttl` 0 or absent = forever). The archive's own checks (format, paths, links, limits) are the
//! broker's, through [`crate::archive`].

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::request::Fields;
use super::{BrokerStatusInfo, FieldError, MAX_TIMESTAMP, lenient};

/// Fields of `createCodePool` besides `action`.
pub(super) const CREATE_FIELDS: [&str; 3] = ["id", "ttl", "data"];

/// A validated `createCodePool`.
#[derive(Clone, PartialEq, Eq)]
pub struct CreateCodePool {
    /// `id`: required, not empty, at most [`super::MAX_NAME_BYTES`].
    pub id: String,
    /// `ttl` in ms: 0 (the default) keeps the pool until it is deleted.
    pub ttl: i64,
    /// `data`, base64-decoded: the archive (zip or tar.gz).
    pub data: Vec<u8>,
}

impl std::fmt::Debug for CreateCodePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateCodePool")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl CreateCodePool {
    /// The request's fields as a client sends them (without `action`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), self.id.as_str().into());
        m.insert("ttl".into(), self.ttl.into());
        m.insert(
            "data".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&self.data)
                .into(),
        );
        m
    }
}

fn refuse_unknown(
    obj: &Map<String, Value>,
    known: &[&str],
    action: &str,
) -> Result<(), FieldError> {
    for key in obj.keys() {
        if key != "action" && !known.contains(&key.as_str()) {
            return Err(FieldError::new(
                super::request::clip(key),
                format!("is not a field of {action}"),
            ));
        }
    }
    Ok(())
}

pub(super) fn parse_create(obj: &Map<String, Value>) -> Result<CreateCodePool, FieldError> {
    refuse_unknown(obj, &CREATE_FIELDS, "createCodePool")?;
    let f = Fields { obj, path: "" };
    let id = f.required_name("id")?;
    let ttl = f.int("ttl", MAX_TIMESTAMP)?.unwrap_or(0);
    let data = match f.string("data")? {
        None => return Err(f.error("data", "is required (the archive, base64)")),
        // Blank counts as empty: it would decode to an archive of no bytes.
        Some(s) if s.trim().is_empty() => return Err(f.error("data", "must not be empty")),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| f.error("data", format!("is not valid base64: {e}")))?,
    };
    Ok(CreateCodePool { id, ttl, data })
}

pub(super) fn parse_delete(obj: &Map<String, Value>) -> Result<String, FieldError> {
    refuse_unknown(
        obj,
        super::request::fields_of("deleteCodePool"),
        "deleteCodePool",
    )?;
    Fields { obj, path: "" }.required_name("id")
}

/// Answer to `createCodePool` and `deleteCodePool`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodePoolActionResponse {
    /// Echo of the action.
    #[serde(default)]
    pub action: String,
    /// The pool's id.
    #[serde(rename = "codePoolId", default)]
    pub code_pool_id: String,
    /// What was done (`created`, `deleted`).
    #[serde(default)]
    pub result: Option<String>,
    /// Empty when `ok`.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub error: String,
    /// Always true on success (refusals are 4xx errors).
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
}

/// One pool, as the views show it: the original's three fields, then ours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodePoolInfo {
    /// The pool's id.
    pub code_pool_id: String,
    /// When it was created (ms since the epoch).
    #[serde(deserialize_with = "lenient::i64")]
    pub creation_timestamp: i64,
    /// Time to live in ms; 0 = forever.
    #[serde(deserialize_with = "lenient::i64")]
    pub ttl: i64,
    /// Size of the archive in bytes.
    #[serde(default, deserialize_with = "lenient::u64")]
    pub size: u64,
    /// SHA-256 of the archive, hexadecimal.
    #[serde(default)]
    pub sha256: String,
    /// Chunks the archive is stored in.
    #[serde(default, deserialize_with = "lenient::u32")]
    pub chunks: u32,
    /// Waiting, delayed and running tasks that name the pool.
    #[serde(default, deserialize_with = "lenient::u32")]
    pub tasks: u32,
}

/// The `codePool` view: one pool by `codePoolId`, null when unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodePoolView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The pool, or null.
    pub code_pool: Option<CodePoolInfo>,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// The `codePools` view (not in the original): pools in id order from `fromCodePoolId`, at most
/// `max`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodePoolsView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The pools.
    pub code_pools: Vec<CodePoolInfo>,
    /// How many are listed.
    #[serde(deserialize_with = "lenient::u64")]
    pub count: u64,
    /// Whether more pools follow (ask again from `nextCodePoolId`).
    #[serde(default)]
    pub truncated: bool,
    /// Where the next page starts, when truncated.
    #[serde(default)]
    pub next_code_pool_id: Option<String>,
    /// Broker status.
    pub status: BrokerStatusInfo,
}
