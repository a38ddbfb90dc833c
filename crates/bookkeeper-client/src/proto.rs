//! Protobuf messages of the BookKeeper v3 wire protocol (`BookkeeperProtocol.proto`) and of the
//! ZooKeeper metadata (`DataFormats.proto`), written by hand with `prost` derives.
//!
//! Both files are proto2: `required` fields are plain values that prost always encodes, because a
//! bookie that cannot parse a v3 request falls back to the v2 protocol and drops the connection.
//! Enum fields are `i32` as prost stores them; the constants below name their values. Only the
//! messages and fields this client uses are declared; unknown fields are skipped on decode.

use bytes::Bytes;

/// `ProtocolVersion.VERSION_THREE`.
pub const PROTOCOL_VERSION_THREE: i32 = 3;

/// `OperationType` values.
pub mod op {
    /// READ_ENTRY.
    pub const READ_ENTRY: i32 = 1;
    /// ADD_ENTRY.
    pub const ADD_ENTRY: i32 = 2;
    /// WRITE_LAC.
    pub const WRITE_LAC: i32 = 6;
    /// READ_LAC.
    pub const READ_LAC: i32 = 7;
}

/// `ReadRequest.Flag` values.
pub mod read_flag {
    /// FENCE_LEDGER: fence the ledger before reading (needs the master key).
    pub const FENCE_LEDGER: i32 = 1;
    /// ENTRY_PIGGYBACK: on a long poll, attach entry previousLAC + 1.
    pub const ENTRY_PIGGYBACK: i32 = 2;
}

/// `AddRequest.Flag.RECOVERY_ADD`: accepted on a fenced ledger.
pub const ADD_FLAG_RECOVERY: i32 = 1;

/// Header priority Java uses for recovery reads and adds (served by the high-priority pool).
pub const HIGH_PRIORITY: u32 = 100;

/// `BKPacketHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BkPacketHeader {
    /// Protocol version, always [`PROTOCOL_VERSION_THREE`].
    #[prost(int32, required, tag = "1")]
    pub version: i32,
    /// Operation type, one of [`op`].
    #[prost(int32, required, tag = "2")]
    pub operation: i32,
    /// Correlation id, echoed in the response.
    #[prost(uint64, required, tag = "3")]
    pub txn_id: u64,
    /// Scheduling priority; values above 0 go to the bookie's high-priority pool.
    #[prost(uint32, optional, tag = "4")]
    pub priority: Option<u32>,
}

/// `Request`: one of the sub-requests is set, matching `header.operation`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// The header.
    #[prost(message, required, tag = "1")]
    pub header: BkPacketHeader,
    /// READ_ENTRY body.
    #[prost(message, optional, tag = "100")]
    pub read_request: Option<ReadRequest>,
    /// ADD_ENTRY body.
    #[prost(message, optional, tag = "101")]
    pub add_request: Option<AddRequest>,
    /// WRITE_LAC body.
    #[prost(message, optional, tag = "103")]
    pub write_lac_request: Option<WriteLacRequest>,
    /// READ_LAC body.
    #[prost(message, optional, tag = "104")]
    pub read_lac_request: Option<ReadLacRequest>,
}

/// `ReadRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadRequest {
    /// Ledger id.
    #[prost(int64, required, tag = "1")]
    pub ledger_id: i64,
    /// Entry id; -1 reads the last entry the bookie stores.
    #[prost(int64, required, tag = "2")]
    pub entry_id: i64,
    /// Master key, needed when fencing.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub master_key: Option<Bytes>,
    /// Long poll: the LAC the reader already knows.
    #[prost(int64, optional, tag = "4")]
    pub previous_lac: Option<i64>,
    /// Long poll: how long the bookie may hold the request, in milliseconds.
    #[prost(int64, optional, tag = "5")]
    pub time_out: Option<i64>,
    /// A single flag, one of [`read_flag`] (declared last so fields encode in tag order).
    #[prost(int32, optional, tag = "100")]
    pub flag: Option<i32>,
}

/// `AddRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddRequest {
    /// Ledger id (echoed; the bookie reads the ids from the body).
    #[prost(int64, required, tag = "1")]
    pub ledger_id: i64,
    /// Entry id (echoed).
    #[prost(int64, required, tag = "2")]
    pub entry_id: i64,
    /// 20-byte master key.
    #[prost(bytes = "bytes", required, tag = "3")]
    pub master_key: Bytes,
    /// The packaged entry (header, digest, payload).
    #[prost(bytes = "bytes", required, tag = "4")]
    pub body: Bytes,
    /// [`ADD_FLAG_RECOVERY`] for recovery adds (declared last so fields encode in tag order).
    #[prost(int32, optional, tag = "100")]
    pub flag: Option<i32>,
}

/// `WriteLacRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteLacRequest {
    /// Ledger id.
    #[prost(int64, required, tag = "1")]
    pub ledger_id: i64,
    /// The last add confirmed.
    #[prost(int64, required, tag = "2")]
    pub lac: i64,
    /// 20-byte master key.
    #[prost(bytes = "bytes", required, tag = "3")]
    pub master_key: Bytes,
    /// The LAC record: ledger id, lac, digest.
    #[prost(bytes = "bytes", required, tag = "4")]
    pub body: Bytes,
}

/// `ReadLacRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadLacRequest {
    /// Ledger id.
    #[prost(int64, required, tag = "1")]
    pub ledger_id: i64,
}

/// `Response`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// The header, echoing the request's operation and txnId.
    #[prost(message, required, tag = "1")]
    pub header: BkPacketHeader,
    /// Overall status.
    #[prost(int32, required, tag = "2")]
    pub status: i32,
    /// READ_ENTRY answer.
    #[prost(message, optional, tag = "100")]
    pub read_response: Option<ReadResponse>,
    /// ADD_ENTRY answer.
    #[prost(message, optional, tag = "101")]
    pub add_response: Option<AddResponse>,
    /// WRITE_LAC answer.
    #[prost(message, optional, tag = "103")]
    pub write_lac_response: Option<WriteLacResponse>,
    /// READ_LAC answer.
    #[prost(message, optional, tag = "104")]
    pub read_lac_response: Option<ReadLacResponse>,
}

impl Response {
    /// The status that decides the outcome: the sub-response's status when the overall status is
    /// EOK and a sub-response is present, else the overall status.
    pub fn effective_status(&self) -> i32 {
        if self.status != 0 {
            return self.status;
        }
        if let Some(r) = &self.read_response {
            return r.status;
        }
        if let Some(r) = &self.add_response {
            return r.status;
        }
        if let Some(r) = &self.write_lac_response {
            return r.status;
        }
        if let Some(r) = &self.read_lac_response {
            return r.status;
        }
        self.status
    }
}

/// `ReadResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadResponse {
    /// Status.
    #[prost(int32, required, tag = "1")]
    pub status: i32,
    /// Ledger id.
    #[prost(int64, required, tag = "2")]
    pub ledger_id: i64,
    /// Entry id (-1 on reads of the last entry and on long polls without an entry).
    #[prost(int64, required, tag = "3")]
    pub entry_id: i64,
    /// The stored entry bytes.
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub body: Option<Bytes>,
    /// The bookie's known LAC.
    #[prost(int64, optional, tag = "5")]
    pub max_lac: Option<i64>,
    /// When the bookie's LAC last changed (long poll).
    #[prost(int64, optional, tag = "6")]
    pub lac_update_timestamp: Option<i64>,
}

/// `AddResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddResponse {
    /// Status.
    #[prost(int32, required, tag = "1")]
    pub status: i32,
    /// Ledger id.
    #[prost(int64, required, tag = "2")]
    pub ledger_id: i64,
    /// Entry id.
    #[prost(int64, required, tag = "3")]
    pub entry_id: i64,
}

/// `WriteLacResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteLacResponse {
    /// Status.
    #[prost(int32, required, tag = "1")]
    pub status: i32,
    /// Ledger id.
    #[prost(int64, required, tag = "2")]
    pub ledger_id: i64,
}

/// `ReadLacResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadLacResponse {
    /// Status.
    #[prost(int32, required, tag = "1")]
    pub status: i32,
    /// Ledger id.
    #[prost(int64, required, tag = "2")]
    pub ledger_id: i64,
    /// The last explicit LAC record written by WRITE_LAC.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub lac_body: Option<Bytes>,
    /// The last entry the bookie stores.
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub last_entry_body: Option<Bytes>,
}

/// `LedgerMetadataFormat.State` values.
pub mod ledger_state {
    /// OPEN.
    pub const OPEN: i32 = 1;
    /// IN_RECOVERY.
    pub const IN_RECOVERY: i32 = 2;
    /// CLOSED.
    pub const CLOSED: i32 = 3;
}

/// `LedgerMetadataFormat` (DataFormats.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LedgerMetadataFormat {
    /// Write quorum.
    #[prost(int32, required, tag = "1")]
    pub quorum_size: i32,
    /// Ensemble size.
    #[prost(int32, required, tag = "2")]
    pub ensemble_size: i32,
    /// Total payload bytes (0 while open).
    #[prost(int64, required, tag = "3")]
    pub length: i64,
    /// Last entry id (-1 while open).
    #[prost(int64, optional, tag = "4")]
    pub last_entry_id: Option<i64>,
    /// One of [`ledger_state`].
    #[prost(int32, required, tag = "5")]
    pub state: i32,
    /// Ensembles by first entry id.
    #[prost(message, repeated, tag = "6")]
    pub segment: Vec<Segment>,
    /// Digest type: CRC32=1, HMAC=2, CRC32C=3, DUMMY=4.
    #[prost(int32, optional, tag = "7")]
    pub digest_type: Option<i32>,
    /// The raw password.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub password: Option<Vec<u8>>,
    /// Ack quorum (write quorum when absent).
    #[prost(int32, optional, tag = "9")]
    pub ack_quorum_size: Option<i32>,
    /// Creation time in milliseconds.
    #[prost(int64, optional, tag = "10")]
    pub ctime: Option<i64>,
    /// Application key/values.
    #[prost(message, repeated, tag = "11")]
    pub custom_metadata: Vec<CMetadataMapEntry>,
    /// Creator token.
    #[prost(int64, optional, tag = "12")]
    pub c_token: Option<i64>,
}

/// `LedgerMetadataFormat.Segment`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Segment {
    /// Bookie ids, in ensemble index order.
    #[prost(string, repeated, tag = "1")]
    pub ensemble_member: Vec<String>,
    /// First entry written to this ensemble.
    #[prost(int64, required, tag = "2")]
    pub first_entry_id: i64,
}

/// `LedgerMetadataFormat.cMetadataMapEntry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CMetadataMapEntry {
    /// Key.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// Value.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
}

/// `BookieServiceInfoFormat`: the data of a bookie's registration znode.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BookieServiceInfoFormat {
    /// Published endpoints.
    #[prost(message, repeated, tag = "6")]
    pub endpoints: Vec<Endpoint>,
}

/// `BookieServiceInfoFormat.Endpoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Endpoint {
    /// Endpoint id.
    #[prost(string, required, tag = "1")]
    pub id: String,
    /// Port.
    #[prost(int32, required, tag = "2")]
    pub port: i32,
    /// Host.
    #[prost(string, required, tag = "3")]
    pub host: String,
    /// Protocol; "bookie-rpc" is the one clients use.
    #[prost(string, required, tag = "4")]
    pub protocol: String,
}
