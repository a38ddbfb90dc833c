//! Ledger metadata as BookKeeper stores it in ZooKeeper: the model, its format-version-3
//! serialization, and the hierarchical znode path of a ledger id.
//!
//! A znode holds `"BookieMetadataFormatVersion\t3\n"`, a varint32 length, then the protobuf
//! `LedgerMetadataFormat`. Only format 3 is read and written; older formats are refused with an
//! error naming their version.

use std::collections::BTreeMap;

use bytes::BufMut;
use prost::Message;

use crate::digest::DigestType;
use crate::error::BkError;
use crate::proto::{self, ledger_state};

/// The header line that opens every metadata znode, before the version number.
const FORMAT_HEADER: &[u8] = b"BookieMetadataFormatVersion\t";

/// The serialization version written and read.
pub const METADATA_FORMAT_VERSION: u32 = 3;

/// Largest ensemble this client handles: acknowledgements are tracked in a 64-bit mask, and real
/// clusters use ensembles of a handful of bookies.
pub const MAX_ENSEMBLE_SIZE: usize = 64;

/// Ledger ids below this use the 10-digit path; larger ones the 19-digit path (Java's
/// `Integer.MAX_VALUE` boundary).
const SHORT_ID_LIMIT: i64 = i32::MAX as i64;

/// Lifecycle state of a ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerState {
    /// Being written.
    Open,
    /// A client is recovering it (the writer is being fenced).
    InRecovery,
    /// Immutable: `last_entry_id` and `length` are final.
    Closed,
}

/// One ensemble of a ledger, used from `first_entry_id` until the next segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First entry written to this ensemble.
    pub first_entry_id: i64,
    /// Bookie ids in ensemble index order.
    pub bookies: Vec<String>,
}

/// The metadata of one ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerMetadata {
    /// Bookies per segment (E).
    pub ensemble_size: usize,
    /// Bookies each entry is written to (Qw).
    pub write_quorum: usize,
    /// Acknowledgements that make an entry durable (Qa).
    pub ack_quorum: usize,
    /// Lifecycle state.
    pub state: LedgerState,
    /// Last entry id once closed (-1 for an empty ledger, and while open).
    pub last_entry_id: i64,
    /// Total payload bytes once closed (0 while open).
    pub length: i64,
    /// Ensembles in ascending `first_entry_id`, the first starting at 0.
    pub segments: Vec<Segment>,
    /// Digest type, when the metadata records one.
    pub digest_type: Option<DigestType>,
    /// The raw password, when the metadata records one.
    pub password: Option<Vec<u8>>,
    /// Creation time in milliseconds, when recorded.
    pub ctime: Option<i64>,
    /// Application key/values.
    pub custom_metadata: BTreeMap<String, Vec<u8>>,
    /// Random token of the creating client, to recognise its own create after a lost reply.
    pub creator_token: Option<i64>,
}

impl LedgerMetadata {
    /// Whether the ledger is closed.
    pub fn is_closed(&self) -> bool {
        self.state == LedgerState::Closed
    }

    /// The segment whose ensemble stores `entry_id`.
    pub fn segment_for(&self, entry_id: i64) -> &Segment {
        self.segments
            .iter()
            .rev()
            .find(|s| s.first_entry_id <= entry_id)
            .unwrap_or_else(|| {
                self.segments
                    .first()
                    .expect("validated metadata has a segment")
            })
    }

    /// The last (current) segment.
    pub fn last_segment(&self) -> &Segment {
        self.segments
            .last()
            .expect("validated metadata has a segment")
    }

    /// Checks the invariants Java's metadata builder enforces; `path` names the source in errors.
    pub fn validate(&self, path: &str) -> Result<(), BkError> {
        let invalid = |detail: String| BkError::InvalidMetadata {
            path: path.to_string(),
            detail,
        };
        let (e, qw, qa) = (self.ensemble_size, self.write_quorum, self.ack_quorum);
        if !(e >= qw && qw >= qa && qa >= 1) {
            return Err(invalid(format!(
                "quorums must satisfy E >= Qw >= Qa >= 1, got {e}/{qw}/{qa}"
            )));
        }
        if e > MAX_ENSEMBLE_SIZE {
            return Err(invalid(format!(
                "ensemble size {e} exceeds {MAX_ENSEMBLE_SIZE}"
            )));
        }
        if self.segments.is_empty() {
            return Err(invalid("no ensemble".to_string()));
        }
        let mut previous = None;
        for segment in &self.segments {
            if segment.bookies.len() != e {
                return Err(invalid(format!(
                    "ensemble at entry {} has {} bookies, expected {e}",
                    segment.first_entry_id,
                    segment.bookies.len()
                )));
            }
            match previous {
                None if segment.first_entry_id != 0 => {
                    return Err(invalid(
                        "first ensemble does not start at entry 0".to_string(),
                    ));
                }
                Some(prev) if segment.first_entry_id <= prev => {
                    return Err(invalid(
                        "ensembles are not in ascending entry order".to_string(),
                    ));
                }
                _ => {}
            }
            previous = Some(segment.first_entry_id);
        }
        if self.state == LedgerState::Closed && (self.last_entry_id < -1 || self.length < 0) {
            return Err(invalid(format!(
                "closed with last entry {} and length {}",
                self.last_entry_id, self.length
            )));
        }
        Ok(())
    }

    fn to_proto(&self) -> proto::LedgerMetadataFormat {
        let closed = self.state == LedgerState::Closed;
        proto::LedgerMetadataFormat {
            quorum_size: to_i32(self.write_quorum),
            ensemble_size: to_i32(self.ensemble_size),
            length: if closed { self.length } else { 0 },
            last_entry_id: Some(if closed { self.last_entry_id } else { -1 }),
            state: match self.state {
                LedgerState::Open => ledger_state::OPEN,
                LedgerState::InRecovery => ledger_state::IN_RECOVERY,
                LedgerState::Closed => ledger_state::CLOSED,
            },
            segment: self
                .segments
                .iter()
                .map(|s| proto::Segment {
                    ensemble_member: s.bookies.clone(),
                    first_entry_id: s.first_entry_id,
                })
                .collect(),
            digest_type: self.digest_type.map(DigestType::code),
            password: self.password.clone(),
            ack_quorum_size: Some(to_i32(self.ack_quorum)),
            ctime: self.ctime,
            custom_metadata: self
                .custom_metadata
                .iter()
                .map(|(k, v)| proto::CMetadataMapEntry {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
            c_token: self.creator_token,
        }
    }

    /// Serializes in format version 3 (header line, varint length, protobuf).
    pub fn serialize(&self) -> Vec<u8> {
        let message = self.to_proto();
        let mut out = Vec::with_capacity(FORMAT_HEADER.len() + 3 + message.encoded_len() + 5);
        out.put_slice(FORMAT_HEADER);
        out.put_slice(METADATA_FORMAT_VERSION.to_string().as_bytes());
        out.put_u8(b'\n');
        message
            .encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
        out
    }

    /// Parses and validates znode data read from `path`.
    pub fn deserialize(path: &str, data: &[u8]) -> Result<LedgerMetadata, BkError> {
        let invalid = |detail: String| BkError::InvalidMetadata {
            path: path.to_string(),
            detail,
        };
        let rest = data
            .strip_prefix(FORMAT_HEADER)
            .ok_or_else(|| invalid("missing format header".to_string()))?;
        let newline = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| invalid("unterminated format header".to_string()))?;
        let version = std::str::from_utf8(&rest[..newline])
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| invalid("unreadable format version".to_string()))?;
        if version != METADATA_FORMAT_VERSION {
            return Err(invalid(format!(
                "unsupported metadata format version {version}"
            )));
        }
        let message = proto::LedgerMetadataFormat::decode_length_delimited(&rest[newline + 1..])
            .map_err(|e| invalid(format!("undecodable protobuf: {e}")))?;
        let metadata = Self::from_proto(message).map_err(invalid)?;
        metadata.validate(path)?;
        Ok(metadata)
    }

    fn from_proto(m: proto::LedgerMetadataFormat) -> Result<LedgerMetadata, String> {
        let size =
            |v: i32, what: &str| usize::try_from(v).map_err(|_| format!("negative {what} {v}"));
        let write_quorum = size(m.quorum_size, "write quorum")?;
        let state = match m.state {
            ledger_state::OPEN => LedgerState::Open,
            ledger_state::IN_RECOVERY => LedgerState::InRecovery,
            ledger_state::CLOSED => LedgerState::Closed,
            other => return Err(format!("unknown ledger state {other}")),
        };
        // Java reads the digest type and password only when a password is present.
        let (digest_type, password) = match m.password {
            Some(password) => {
                let digest = match m.digest_type {
                    Some(code) => Some(
                        DigestType::from_code(code)
                            .ok_or_else(|| format!("unknown digest type {code}"))?,
                    ),
                    None => None,
                };
                (digest, Some(password))
            }
            None => (None, None),
        };
        let mut custom_metadata = BTreeMap::new();
        for entry in m.custom_metadata {
            custom_metadata.insert(
                entry.key.unwrap_or_default(),
                entry.value.unwrap_or_default(),
            );
        }
        Ok(LedgerMetadata {
            ensemble_size: size(m.ensemble_size, "ensemble size")?,
            write_quorum,
            ack_quorum: match m.ack_quorum_size {
                Some(qa) => size(qa, "ack quorum")?,
                None => write_quorum,
            },
            state,
            last_entry_id: if state == LedgerState::Closed {
                m.last_entry_id.unwrap_or(-1)
            } else {
                -1
            },
            length: if state == LedgerState::Closed {
                m.length
            } else {
                0
            },
            segments: m
                .segment
                .into_iter()
                .map(|s| Segment {
                    first_entry_id: s.first_entry_id,
                    bookies: s.ensemble_member,
                })
                .collect(),
            digest_type,
            password,
            ctime: m.ctime,
            custom_metadata,
            creator_token: m.c_token,
        })
    }
}

fn to_i32(v: usize) -> i32 {
    i32::try_from(v).expect("validated sizes are at most MAX_ENSEMBLE_SIZE")
}

/// The znode path of ledger `ledger_id` under `root` in the hierarchical layout.
///
/// Ids below 2^31-1 use 10 zero-padded digits split 2/4/4 (`/ledgers/00/0000/L0001`); larger
/// ids use 19 digits split 3/4/4/4/4.
pub fn ledger_path(root: &str, ledger_id: i64) -> Result<String, BkError> {
    if ledger_id < 0 {
        return Err(BkError::InvalidArgument(format!(
            "negative ledger id {ledger_id}"
        )));
    }
    if ledger_id < SHORT_ID_LIMIT {
        let d = format!("{ledger_id:010}");
        Ok(format!("{root}/{}/{}/L{}", &d[0..2], &d[2..6], &d[6..10]))
    } else {
        let d = format!("{ledger_id:019}");
        Ok(format!(
            "{root}/{}/{}/{}/{}/L{}",
            &d[0..3],
            &d[3..7],
            &d[7..11],
            &d[11..15],
            &d[15..19]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sample() -> LedgerMetadata {
        LedgerMetadata {
            ensemble_size: 3,
            write_quorum: 2,
            ack_quorum: 2,
            state: LedgerState::Open,
            last_entry_id: -1,
            length: 0,
            segments: vec![Segment {
                first_entry_id: 0,
                bookies: vec![
                    "127.0.0.1:3181".into(),
                    "127.0.0.1:3182".into(),
                    "127.0.0.1:3183".into(),
                ],
            }],
            digest_type: Some(DigestType::Crc32c),
            password: Some(Vec::new()),
            ctime: None,
            custom_metadata: BTreeMap::new(),
            creator_token: Some(1234),
        }
    }

    const SAMPLE_HEX: &str = concat!(
        "426f6f6b69654d65746164617461466f726d617456657273696f6e09330a50",
        "08021003180020ffffffffffffffffff01280132320a0e3132372e302e302e313a333138310a0e3132372e302e",
        "302e313a333138320a0e3132372e302e302e313a33313833100038034200480260d209"
    );

    #[test]
    fn serialization_matches_spec_vector() {
        // Goal: an open 3/2/2 CRC32C ledger serializes to exactly the bytes Java writes.
        assert_eq!(hex(&sample().serialize()), SAMPLE_HEX);
    }

    #[test]
    fn spec_vector_deserializes() {
        // Goal: the znode bytes Java writes parse to the expected model.
        let bytes: Vec<u8> = (0..SAMPLE_HEX.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&SAMPLE_HEX[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(
            LedgerMetadata::deserialize("/l", &bytes).expect("valid"),
            sample()
        );
    }

    #[test]
    fn ledger_paths_follow_hierarchical_layout() {
        // Goal: znode paths are those BookKeeper's garbage collector walks.
        assert_eq!(
            ledger_path("/ledgers", 1).expect("ok"),
            "/ledgers/00/0000/L0001"
        );
        assert_eq!(
            ledger_path("/ledgers", 123456789).expect("ok"),
            "/ledgers/01/2345/L6789"
        );
        assert_eq!(
            ledger_path("/ledgers", 4294967296).expect("ok"),
            "/ledgers/000/0000/0042/9496/L7296"
        );
        assert_eq!(
            ledger_path("/ledgers", 2147483647).expect("ok"),
            "/ledgers/000/0000/0021/4748/L3647"
        );
        assert_eq!(
            ledger_path("/ledgers", 2147483646).expect("ok"),
            "/ledgers/21/4748/L3646"
        );
        assert!(ledger_path("/ledgers", -1).is_err());
    }

    #[test]
    fn closed_metadata_round_trips_with_custom_fields() {
        // Goal: closed state, length, custom metadata and ctime survive serialization.
        let mut m = sample();
        m.state = LedgerState::Closed;
        m.last_entry_id = 41;
        m.length = 4200;
        m.ctime = Some(1_700_000_000_000);
        m.custom_metadata
            .insert("application".into(), b"wal".to_vec());
        m.segments.push(Segment {
            first_entry_id: 10,
            bookies: m.segments[0].bookies.clone(),
        });
        let back = LedgerMetadata::deserialize("/l", &m.serialize()).expect("valid");
        assert_eq!(back, m);
        assert_eq!(back.segment_for(9).first_entry_id, 0);
        assert_eq!(back.segment_for(10).first_entry_id, 10);
    }

    #[test]
    fn invalid_metadata_is_refused() {
        // Goal: quorum and ensemble invariants and unknown formats are checked on read.
        let mut bad = sample();
        bad.ack_quorum = 3;
        assert!(LedgerMetadata::deserialize("/l", &bad.serialize()).is_err());
        let mut bad = sample();
        bad.segments[0].bookies.pop();
        assert!(LedgerMetadata::deserialize("/l", &bad.serialize()).is_err());
        let text = b"BookieMetadataFormatVersion\t2\nquorumSize: 2\n";
        let err = LedgerMetadata::deserialize("/l", text).expect_err("format 2");
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    fn any_metadata() -> impl Strategy<Value = LedgerMetadata> {
        (
            1usize..6,
            0usize..6,
            0usize..6,
            0u8..3,
            -1i64..1000,
            0i64..100_000,
            1usize..4,
        )
            .prop_flat_map(|(e, qw_off, qa_off, state, last, len, segments)| {
                let qw = e - qw_off.min(e - 1);
                let qa = qw - qa_off.min(qw - 1);
                (
                    Just((e, qw, qa, state, last, len)),
                    proptest::collection::vec(
                        proptest::collection::vec("[a-z0-9.:]{1,20}", e..=e),
                        segments..=segments,
                    ),
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                    proptest::collection::btree_map(
                        "[a-z]{0,8}",
                        proptest::collection::vec(any::<u8>(), 0..8),
                        0..3,
                    ),
                    proptest::option::of(any::<i64>()),
                )
            })
            .prop_map(
                |((e, qw, qa, state, last, len), ensembles, password, custom, token)| {
                    let state = [
                        LedgerState::Open,
                        LedgerState::InRecovery,
                        LedgerState::Closed,
                    ][state as usize];
                    let closed = state == LedgerState::Closed;
                    LedgerMetadata {
                        ensemble_size: e,
                        write_quorum: qw,
                        ack_quorum: qa,
                        state,
                        last_entry_id: if closed { last } else { -1 },
                        length: if closed { len } else { 0 },
                        segments: ensembles
                            .into_iter()
                            .enumerate()
                            .map(|(i, bookies)| Segment {
                                first_entry_id: i as i64 * 7,
                                bookies,
                            })
                            .collect(),
                        digest_type: password.as_ref().map(|_| DigestType::Hmac),
                        password,
                        ctime: token.map(|t| t / 2),
                        custom_metadata: custom,
                        creator_token: token,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn metadata_round_trips(m in any_metadata()) {
            // Goal: every valid metadata survives serialize then deserialize unchanged.
            prop_assert_eq!(LedgerMetadata::deserialize("/l", &m.serialize()).expect("valid"), m);
        }

        #[test]
        fn arbitrary_znode_data_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Goal: any znode content gives a value or an error, never a panic.
            let _ = LedgerMetadata::deserialize("/l", &bytes);
            let mut framed = b"BookieMetadataFormatVersion\t3\n".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = LedgerMetadata::deserialize("/l", &framed);
        }

        #[test]
        fn ledger_paths_are_unique_and_well_formed(a in 0i64..i64::MAX, b in 0i64..i64::MAX) {
            // Goal: distinct ids never share a znode path, and paths hold only digits and slashes.
            let (pa, pb) = (ledger_path("/r", a).expect("ok"), ledger_path("/r", b).expect("ok"));
            prop_assert_eq!(pa == pb, a == b);
            prop_assert!(pa.trim_start_matches("/r/").chars().all(|c| c.is_ascii_digit() || c == '/' || c == 'L'));
        }
    }
}
