//! Framing of the bookie TCP stream: every message is `u32 big-endian length | protobuf bytes`.
//!
//! Also builds the v3 requests this client sends, so that the byte layout of each operation is
//! decided (and tested against the specification's vectors) in one place.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::{self, BkPacketHeader, Request};

/// Largest frame a bookie accepts or sends by default (`nettyMaxFrameSizeBytes`, 5 MiB).
pub const MAX_FRAME_LEN: usize = 5 * 1024 * 1024;

/// Largest response frame this client accepts: the bookie's cap plus room for the envelope, so a
/// maximal entry still fits while a corrupt length cannot make us buffer gigabytes.
pub const MAX_RESPONSE_FRAME_LEN: usize = MAX_FRAME_LEN + 64 * 1024;

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;

/// Why the byte stream from a bookie cannot be read any further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced more bytes than [`MAX_RESPONSE_FRAME_LEN`].
    TooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(len) => write!(f, "frame of {len} bytes exceeds the limit"),
        }
    }
}

/// Appends `request` to `out` as one frame.
pub fn encode_request(request: &Request, out: &mut BytesMut) {
    let len = request.encoded_len();
    out.reserve(LEN_PREFIX + len);
    out.put_u32(u32::try_from(len).expect("requests are capped far below 4 GiB"));
    request
        .encode(out)
        .expect("reserved enough room for the request");
}

/// Takes the next complete frame body out of `buf`, if one is there.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_RESPONSE_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < LEN_PREFIX + len {
        buf.reserve(LEN_PREFIX + len - buf.len());
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

fn header(operation: i32, txn_id: u64, high_priority: bool) -> BkPacketHeader {
    BkPacketHeader {
        version: proto::PROTOCOL_VERSION_THREE,
        operation,
        txn_id,
        priority: high_priority.then_some(proto::HIGH_PRIORITY),
    }
}

/// An ADD_ENTRY request; `recovery` sets RECOVERY_ADD and high priority.
pub fn add_request(
    txn_id: u64,
    ledger_id: i64,
    entry_id: i64,
    master_key: Bytes,
    body: Bytes,
    recovery: bool,
) -> Request {
    Request {
        header: header(proto::op::ADD_ENTRY, txn_id, recovery),
        add_request: Some(proto::AddRequest {
            ledger_id,
            entry_id,
            master_key,
            body,
            flag: recovery.then_some(proto::ADD_FLAG_RECOVERY),
        }),
        ..Default::default()
    }
}

/// The kinds of READ_ENTRY this client sends.
#[derive(Clone, Debug)]
pub enum ReadKind {
    /// A plain read.
    Plain,
    /// A read that first fences the ledger (recovery), with the master key.
    Fence(Bytes),
    /// A long poll: answer once the bookie's LAC exceeds `previous_lac` or `timeout_ms` passes,
    /// attaching entry `previous_lac + 1` when the bookie has it.
    LongPoll {
        /// The LAC the reader knows.
        previous_lac: i64,
        /// How long the bookie may hold the request.
        timeout_ms: i64,
    },
}

/// A READ_ENTRY request.
pub fn read_request(txn_id: u64, ledger_id: i64, entry_id: i64, kind: ReadKind) -> Request {
    let mut read = proto::ReadRequest {
        ledger_id,
        entry_id,
        ..Default::default()
    };
    let high_priority = match kind {
        ReadKind::Plain => false,
        ReadKind::Fence(master_key) => {
            read.flag = Some(proto::read_flag::FENCE_LEDGER);
            read.master_key = Some(master_key);
            true
        }
        ReadKind::LongPoll {
            previous_lac,
            timeout_ms,
        } => {
            read.flag = Some(proto::read_flag::ENTRY_PIGGYBACK);
            read.previous_lac = Some(previous_lac);
            read.time_out = Some(timeout_ms);
            false
        }
    };
    Request {
        header: header(proto::op::READ_ENTRY, txn_id, high_priority),
        read_request: Some(read),
        ..Default::default()
    }
}

/// A WRITE_LAC request carrying the LAC record `body`.
pub fn write_lac_request(
    txn_id: u64,
    ledger_id: i64,
    lac: i64,
    master_key: Bytes,
    body: Bytes,
) -> Request {
    Request {
        header: header(proto::op::WRITE_LAC, txn_id, false),
        write_lac_request: Some(proto::WriteLacRequest {
            ledger_id,
            lac,
            master_key,
            body,
        }),
        ..Default::default()
    }
}

/// A READ_LAC request.
pub fn read_lac_request(txn_id: u64, ledger_id: i64) -> Request {
    Request {
        header: header(proto::op::READ_LAC, txn_id, false),
        read_lac_request: Some(proto::ReadLacRequest { ledger_id }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{self, DigestType, Digester};
    use crate::proto::Response;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn add_request_frame_matches_spec_vector() {
        // Goal: the v3 ADD frame of ledger 1 entry 0 "hello" (txnId 1) is byte-identical to protoc's.
        let key = Bytes::copy_from_slice(&digest::master_key(b""));
        let body = Digester::new(DigestType::Crc32c, b"").package_entry(1, 0, -1, 5, b"hello");
        let mut out = BytesMut::new();
        encode_request(&add_request(1, 1, 0, key, body, false), &mut out);
        assert_eq!(
            hex(&out),
            "000000500a06080310021801aa0645080110001a14850bf1071c5e3d8c24235676f8816ae0cbe2f14f\
             222900000000000000010000000000000000ffffffffffffffff0000000000000005e3a5f74d68656c6c6f"
        );
    }

    #[test]
    fn long_poll_frame_matches_spec_vector() {
        // Goal: the long-poll READ frame (txnId 2, previousLAC 4, 1000 ms) is byte-identical to protoc's.
        let mut out = BytesMut::new();
        let kind = ReadKind::LongPoll {
            previous_lac: 4,
            timeout_ms: 1000,
        };
        encode_request(&read_request(2, 1, -1, kind), &mut out);
        assert_eq!(
            hex(&out),
            "000000200a06080310011802a20615080110ffffffffffffffffff01200428e807a00602"
        );
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        // Goal: a frame arriving byte by byte comes out whole, once, and no earlier.
        let response = Response {
            header: header(proto::op::ADD_ENTRY, 77, false),
            status: 0,
            add_response: Some(proto::AddResponse {
                status: 0,
                ledger_id: 3,
                entry_id: 9,
            }),
            ..Default::default()
        };
        let mut wire = BytesMut::new();
        wire.put_u32(response.encoded_len() as u32);
        response.encode(&mut wire).expect("fits");
        wire.extend_from_slice(&wire.clone());
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = next_frame(&mut buf).expect("valid") {
                frames.push(Response::decode(frame).expect("decodes"));
            }
        }
        assert_eq!(frames, vec![response.clone(), response]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused() {
        // Goal: a length beyond the limit is an error, not an allocation.
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert!(matches!(next_frame(&mut buf), Err(FrameError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_stream_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Goal: garbage from a bookie gives errors, never a panic, in framing and decoding.
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = next_frame(&mut buf) {
                let _ = Response::decode(frame);
            }
            let _ = Response::decode(Bytes::from(bytes.clone()));
            let _ = Request::decode(Bytes::from(bytes));
        }

        #[test]
        fn responses_round_trip(
            txn in any::<u64>(), status in any::<i32>(), sub_status in any::<i32>(),
            ledger in any::<i64>(), entry in any::<i64>(), max_lac in proptest::option::of(any::<i64>()),
            body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            kind in 0u8..3,
        ) {
            // Goal: every response shape this client reads survives framing and decoding.
            let body = body.map(Bytes::from);
            let mut response = Response {
                header: header(proto::op::READ_ENTRY, txn, false),
                status,
                ..Default::default()
            };
            match kind {
                0 => response.read_response = Some(proto::ReadResponse {
                    status: sub_status, ledger_id: ledger, entry_id: entry, body: body.clone(),
                    max_lac, lac_update_timestamp: max_lac,
                }),
                1 => response.add_response = Some(proto::AddResponse { status: sub_status, ledger_id: ledger, entry_id: entry }),
                _ => response.read_lac_response = Some(proto::ReadLacResponse {
                    status: sub_status, ledger_id: ledger, lac_body: body.clone(), last_entry_body: body,
                }),
            }
            let mut wire = BytesMut::new();
            wire.put_u32(response.encoded_len() as u32);
            response.encode(&mut wire).expect("fits");
            let frame = next_frame(&mut wire).expect("valid").expect("complete");
            let decoded = Response::decode(frame).expect("decodes");
            prop_assert_eq!(decoded.effective_status(), if status != 0 { status } else { sub_status });
            prop_assert_eq!(decoded, response);
        }

        #[test]
        fn requests_round_trip(
            txn in any::<u64>(), ledger in any::<i64>(), entry in any::<i64>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            recovery in any::<bool>(), prev in any::<i64>(), timeout in any::<i64>(),
        ) {
            // Goal: every request this client builds decodes back to itself through a frame.
            let key = Bytes::copy_from_slice(&digest::master_key(b"k"));
            let requests = [
                add_request(txn, ledger, entry, key.clone(), Bytes::from(body.clone()), recovery),
                read_request(txn, ledger, entry, ReadKind::Plain),
                read_request(txn, ledger, entry, ReadKind::Fence(key.clone())),
                read_request(txn, ledger, -1, ReadKind::LongPoll { previous_lac: prev, timeout_ms: timeout }),
                write_lac_request(txn, ledger, entry, key, Bytes::from(body)),
                read_lac_request(txn, ledger),
            ];
            for request in requests {
                let mut out = BytesMut::new();
                encode_request(&request, &mut out);
                let frame = next_frame(&mut out).expect("valid").expect("complete");
                prop_assert!(out.is_empty());
                prop_assert_eq!(Request::decode(frame).expect("decodes"), request);
            }
        }
    }
}
