//! What replicated brokers share: the znodes in ZooKeeper and the entries of the BookKeeper
//! ledgers that hold the commit log.
//!
//! ZooKeeper, under the cluster's base path (`/majordodo` by default), in the original
//! Majordodo's layout so that its Java client's discovery finds our leader:
//!
//! | znode | kind | content |
//! |---|---|---|
//! | `<base>/leader` | ephemeral | [`BrokerInfo`] of the leader |
//! | `<base>/discoverypath/brokers<seq>` | ephemeral sequential | [`BrokerInfo`] of each live broker |
//! | `<base>/ledgers` | persistent | [`LedgersInfo`]: the ledgers holding the log, in order |
//!
//! A ledger entry ([`encode_ledger_entry`]) holds one or more log records with consecutive log
//! positions; BookKeeper's digest (CRC32C by default) covers it where it is stored.

use std::collections::BTreeMap;

use prost::Message;
use serde::{Deserialize, Serialize};

/// Version of the ledger entry format written by this build; readers refuse others.
pub const LEDGER_ENTRY_VERSION: u32 = 1;

/// Bytes a ledger entry spends besides its records' bytes, at most: the version and first
/// position (a tag and a varint of at most 10 each) and, per record, a tag and a length of at
/// most 5 bytes ([`LEDGER_ENTRY_PER_RECORD`]).
pub const LEDGER_ENTRY_OVERHEAD: usize = 2 * 11;

/// Bytes a ledger entry spends per record besides its bytes, at most.
pub const LEDGER_ENTRY_PER_RECORD: usize = 6;

/// What a broker publishes about itself: the original's `BrokerHostData` JSON (`host`, `port`
/// as a string, `version`, `ssl` as `"true"`/`"false"`) with its `client.api.url` and
/// `broker.id` extras, plus this implementation's own (`worker.address`, and on discovery
/// nodes the position the broker has applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    /// Host of the worker port.
    pub host: String,
    /// The worker port, as a string (as the original writes it).
    pub port: String,
    /// The broker's version.
    pub version: String,
    /// Whether the worker port speaks TLS: `"true"` or `"false"`.
    pub ssl: String,
    /// Every other key, kept as written (the original's extras and ours).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Key of the HTTP API's URL in [`BrokerInfo::extra`] (the original's).
pub const CLIENT_API_URL: &str = "client.api.url";
/// Key of the broker's id in [`BrokerInfo::extra`] (the original's).
pub const BROKER_ID: &str = "broker.id";
/// Key of the last log position the broker applied, on discovery nodes (ours).
pub const APPLIED_LSN: &str = "applied.lsn";
/// Key of when the broker wrote its discovery node's data, in ms since the epoch (ours).
pub const UPDATED_AT: &str = "updated.at";

impl BrokerInfo {
    /// A broker's record: its worker address, HTTP API URL and id.
    pub fn new(worker_host: &str, worker_port: u16, api_url: &str, broker_id: &str) -> Self {
        let mut extra = BTreeMap::new();
        extra.insert(CLIENT_API_URL.to_owned(), api_url.into());
        extra.insert(BROKER_ID.to_owned(), broker_id.into());
        BrokerInfo {
            host: worker_host.to_owned(),
            port: worker_port.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ssl: "false".to_owned(),
            extra,
        }
    }

    /// The HTTP API's URL, if published.
    pub fn api_url(&self) -> Option<&str> {
        self.extra.get(CLIENT_API_URL).and_then(|v| v.as_str())
    }

    /// The broker's id, if published.
    pub fn broker_id(&self) -> Option<&str> {
        self.extra.get(BROKER_ID).and_then(|v| v.as_str())
    }

    /// The worker port's address as `host:port`.
    pub fn worker_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The last log position applied, on a discovery node.
    pub fn applied_lsn(&self) -> Option<u64> {
        self.extra.get(APPLIED_LSN).and_then(|v| v.as_u64())
    }

    /// Sets a numeric extra.
    pub fn set_number(&mut self, key: &str, value: u64) {
        self.extra.insert(key.to_owned(), value.into());
    }

    /// Encodes as the JSON stored in the znode.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of strings and numbers serializes")
    }

    /// Decodes a znode's JSON.
    ///
    /// # Errors
    /// [`ClusterFormatError::Json`] when the bytes are not such a JSON object.
    pub fn from_json(bytes: &[u8]) -> Result<BrokerInfo, ClusterFormatError> {
        serde_json::from_slice(bytes).map_err(|e| ClusterFormatError::Json(e.to_string()))
    }
}

/// The ledger list, as the original writes it (`activeLedgers`, `ledgersTimestamps`,
/// `firstLedger`), plus the first log position of each ledger (`firstLsns`, ours), so a broker
/// knows which ledger holds a position without reading every ledger.
///
/// It changes only by compare-and-set on its znode version: whoever loses the race has been
/// replaced as leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgersInfo {
    /// Ledgers holding the log, oldest first.
    #[serde(rename = "activeLedgers")]
    pub active_ledgers: Vec<i64>,
    /// When each ledger was created (ms since the epoch), same order.
    #[serde(rename = "ledgersTimestamps")]
    pub ledgers_timestamps: Vec<i64>,
    /// The first ledger the cluster ever wrote (-1 before the first); when it is still
    /// listed, the whole history can be replayed from the ledgers alone.
    #[serde(rename = "firstLedger")]
    pub first_ledger: i64,
    /// Log position of the first record of each ledger, same order. A ledger that holds no
    /// record yet would start there.
    #[serde(rename = "firstLsns", default)]
    pub first_lsns: Vec<u64>,
}

impl LedgersInfo {
    /// An empty list (no ledger yet).
    pub fn empty() -> LedgersInfo {
        LedgersInfo {
            first_ledger: -1,
            ..LedgersInfo::default()
        }
    }

    /// The listed ledgers: (id, created, first position), oldest first.
    pub fn ledgers(&self) -> impl Iterator<Item = (i64, i64, u64)> + '_ {
        self.active_ledgers
            .iter()
            .zip(&self.ledgers_timestamps)
            .zip(&self.first_lsns)
            .map(|((id, ts), lsn)| (*id, *ts, *lsn))
    }

    /// Adds a ledger at the end.
    pub fn push(&mut self, id: i64, created: i64, first_lsn: u64) {
        if self.first_ledger < 0 {
            self.first_ledger = id;
        }
        self.active_ledgers.push(id);
        self.ledgers_timestamps.push(created);
        self.first_lsns.push(first_lsn);
    }

    /// Drops the oldest `n` ledgers.
    pub fn drop_oldest(&mut self, n: usize) {
        let n = n.min(self.active_ledgers.len());
        self.active_ledgers.drain(..n);
        self.ledgers_timestamps.drain(..n);
        self.first_lsns.drain(..n);
    }

    /// Whether the whole history is still listed (the first ledger ever was not dropped).
    pub fn has_full_history(&self) -> bool {
        self.first_ledger < 0 || self.active_ledgers.first() == Some(&self.first_ledger)
    }

    /// The first log position the listed ledgers hold (1 with nothing listed).
    pub fn first_lsn(&self) -> u64 {
        self.first_lsns.first().copied().unwrap_or(1)
    }

    /// Encodes as the JSON stored in the znode.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lists of numbers serialize")
    }

    /// Decodes and checks the znode's JSON: the three lists have one element per ledger, and
    /// first positions increase.
    ///
    /// # Errors
    /// [`ClusterFormatError`] when the bytes are not a consistent ledger list.
    pub fn from_json(bytes: &[u8]) -> Result<LedgersInfo, ClusterFormatError> {
        let info: LedgersInfo =
            serde_json::from_slice(bytes).map_err(|e| ClusterFormatError::Json(e.to_string()))?;
        let n = info.active_ledgers.len();
        if info.ledgers_timestamps.len() != n || info.first_lsns.len() != n {
            return Err(ClusterFormatError::Invalid(format!(
                "{n} ledgers but {} timestamps and {} first positions",
                info.ledgers_timestamps.len(),
                info.first_lsns.len()
            )));
        }
        if info.first_lsns.windows(2).any(|w| w[1] < w[0]) || info.first_lsns.contains(&0) {
            return Err(ClusterFormatError::Invalid(format!(
                "first positions {:?} do not increase from 1",
                info.first_lsns
            )));
        }
        Ok(info)
    }
}

/// Why bytes from ZooKeeper or a ledger are not what this build expects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterFormatError {
    /// Not the JSON expected in a znode.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Not a ledger entry this build can read.
    #[error("malformed ledger entry: {0}")]
    Entry(String),
    /// Written by an unknown format version.
    #[error(
        "ledger entry format version {0} is not supported (this build reads version {LEDGER_ENTRY_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// Well-formed but inconsistent.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, PartialEq, Message)]
struct LedgerEntryPb {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    first_lsn: u64,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    records: Vec<bytes::Bytes>,
}

/// The records of one ledger entry, with the log position of the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Log position of `records[0]`; the others follow.
    pub first_lsn: u64,
    /// The records, in log order.
    pub records: Vec<bytes::Bytes>,
}

impl LedgerEntry {
    /// Log position of the last record (`first_lsn - 1` for an entry without records).
    pub fn last_lsn(&self) -> u64 {
        self.first_lsn + self.records.len() as u64 - 1
    }
}

/// The size of the entry [`encode_ledger_entry`] makes of records of these sizes, at most.
pub fn ledger_entry_len_bound(record_lens: impl IntoIterator<Item = usize>) -> usize {
    record_lens
        .into_iter()
        .fold(LEDGER_ENTRY_OVERHEAD, |total, len| {
            total.saturating_add(len.saturating_add(LEDGER_ENTRY_PER_RECORD))
        })
}

/// Encodes records with consecutive positions from `first_lsn` as one ledger entry.
pub fn encode_ledger_entry(first_lsn: u64, records: &[bytes::Bytes]) -> Vec<u8> {
    LedgerEntryPb {
        version: LEDGER_ENTRY_VERSION,
        first_lsn,
        records: records.to_vec(),
    }
    .encode_to_vec()
}

/// Decodes a ledger entry.
///
/// # Errors
/// [`ClusterFormatError`] when the bytes are not an entry of a known version with at least one
/// record and a valid first position.
pub fn decode_ledger_entry(bytes: &[u8]) -> Result<LedgerEntry, ClusterFormatError> {
    let pb = LedgerEntryPb::decode(bytes).map_err(|e| ClusterFormatError::Entry(e.to_string()))?;
    if pb.version != LEDGER_ENTRY_VERSION {
        return Err(ClusterFormatError::UnsupportedVersion(pb.version));
    }
    if pb.first_lsn == 0 || pb.records.is_empty() {
        return Err(ClusterFormatError::Entry(format!(
            "entry at position {} with {} records",
            pb.first_lsn,
            pb.records.len()
        )));
    }
    if pb.first_lsn.checked_add(pb.records.len() as u64).is_none() {
        return Err(ClusterFormatError::Entry(
            "positions overflow 64 bits".to_owned(),
        ));
    }
    Ok(LedgerEntry {
        first_lsn: pb.first_lsn,
        records: pb.records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ledger_entries_round_trip_within_their_bound(
            first in 1u64..u64::MAX / 2,
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
        ) {
            // Goal: decode(encode) gives the records back, and the size bound holds.
            let records: Vec<bytes::Bytes> = records.into_iter().map(bytes::Bytes::from).collect();
            let bytes = encode_ledger_entry(first, &records);
            prop_assert!(bytes.len() <= ledger_entry_len_bound(records.iter().map(|r| r.len())));
            let entry = decode_ledger_entry(&bytes).unwrap();
            prop_assert_eq!(entry.first_lsn, first);
            prop_assert_eq!(entry.records, records);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Goal: outside data yields an entry or an error.
            let _ = decode_ledger_entry(&bytes);
            let _ = LedgersInfo::from_json(&bytes);
            let _ = BrokerInfo::from_json(&bytes);
        }
    }

    #[test]
    fn broker_info_is_the_originals_shape() {
        // Goal: the leader znode carries host, port (a string), version, ssl and the
        // original's client.api.url and broker.id keys, which its Java client reads.
        let info = BrokerInfo::new("127.0.0.1", 7363, "http://127.0.0.1:7364/majordodo", "b1");
        let json: serde_json::Value = serde_json::from_slice(&info.to_json()).unwrap();
        assert_eq!(json["host"], "127.0.0.1");
        assert_eq!(json["port"], "7363");
        assert_eq!(json["ssl"], "false");
        assert_eq!(json["client.api.url"], "http://127.0.0.1:7364/majordodo");
        assert_eq!(json["broker.id"], "b1");
        assert_eq!(BrokerInfo::from_json(&info.to_json()).unwrap(), info);
        assert_eq!(info.worker_address(), "127.0.0.1:7363");
    }

    #[test]
    fn ledger_list_is_the_originals_shape_and_is_checked() {
        // Goal: the original's keys, our first positions, and inconsistent lists refused.
        let mut info = LedgersInfo::empty();
        assert!(info.has_full_history());
        info.push(7, 1000, 1);
        info.push(9, 2000, 40);
        let json: serde_json::Value = serde_json::from_slice(&info.to_json()).unwrap();
        assert_eq!(json["activeLedgers"], serde_json::json!([7, 9]));
        assert_eq!(json["ledgersTimestamps"], serde_json::json!([1000, 2000]));
        assert_eq!(json["firstLedger"], 7);
        assert_eq!(LedgersInfo::from_json(&info.to_json()).unwrap(), info);
        info.drop_oldest(1);
        assert!(!info.has_full_history());
        assert_eq!(info.first_lsn(), 40);
        let bad =
            br#"{"activeLedgers":[1,2],"ledgersTimestamps":[1],"firstLedger":1,"firstLsns":[1,2]}"#;
        assert!(LedgersInfo::from_json(bad).is_err());
        let bad = br#"{"activeLedgers":[1,2],"ledgersTimestamps":[1,2],"firstLedger":1,"firstLsns":[5,2]}"#;
        assert!(LedgersInfo::from_json(bad).is_err());
    }
}
