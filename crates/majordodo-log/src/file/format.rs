//! Byte layout of the file log: the segment header and the record frame.
//!
//! Everything here is pure (no I/O) so that it can be property-tested: decoding arbitrary bytes
//! never panics, and encode → decode round-trips. All integers are little endian.
//!
//! A segment file starts with a fixed header:
//! ```text
//! offset size field
//!      0    8 magic        b"MDODOLOG"
//!      8    2 version      SEGMENT_VERSION (2)
//!     10    2 flags        0 (reserved; a reader of version 2 rejects other values)
//!     12    8 first_lsn    LSN of the first record of the segment (also in the file name)
//!     20    8 reserved     0
//!     28    4 crc32c       of bytes 0..28
//! ```
//! Records follow back to back, each framed as:
//! ```text
//! offset size field
//!      0    4 header_crc   crc32c of bytes 4..24 of the frame
//!      4    4 length       payload length in bytes
//!      8    4 batch_index  position of the record in the single write that stored it (0, 1, ...)
//!     12    8 lsn
//!     20    4 payload_crc  crc32c of the payload
//!     24    n payload
//! ```
//! Version 2 gave the header a checksum of its own (version 1 had one checksum over header and
//! payload): a valid header tells where its frame ends even when the payload is damaged, which
//! recovery needs to prove that damage is an unfinished write. `batch_index` lets recovery tell
//! the last write from earlier ones. See `recovery`.

use crate::Lsn;

/// Magic bytes opening every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"MDODOLOG";
/// Version of the segment format written by this code; the only one it reads.
pub(crate) const SEGMENT_VERSION: u16 = 2;
/// Length of the segment header in bytes.
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;
/// Length of a record frame header (everything but the payload) in bytes.
pub(crate) const RECORD_HEADER_LEN: usize = 24;

/// The decoded header of a segment file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// LSN of the first record stored (or to be stored) in the segment.
    pub(crate) first_lsn: Lsn,
}

/// Why a segment header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The bytes are not a valid header.
    Invalid(String),
    /// A valid header of a format version this code does not read.
    Version(u16),
}

impl SegmentHeader {
    /// Encodes the header.
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut buf = [0u8; SEGMENT_HEADER_LEN];
        buf[0..8].copy_from_slice(&SEGMENT_MAGIC);
        buf[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        // 10..12 flags and 20..28 reserved stay zero.
        buf[12..20].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        let crc = crc32c::crc32c(&buf[0..28]);
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes and validates a header.
    pub(crate) fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let invalid = |reason: &str| Err(HeaderError::Invalid(reason.to_string()));
        let Some(buf) = buf.get(..SEGMENT_HEADER_LEN) else {
            return Err(HeaderError::Invalid(format!(
                "segment header truncated: {} of {SEGMENT_HEADER_LEN} bytes",
                buf.len()
            )));
        };
        if buf[0..8] != SEGMENT_MAGIC {
            return invalid("bad segment magic");
        }
        let stored_crc = u32_at(buf, 28);
        if crc32c::crc32c(&buf[0..28]) != stored_crc {
            return invalid("segment header checksum mismatch");
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != SEGMENT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let flags = u16::from_le_bytes([buf[10], buf[11]]);
        if flags != 0 || buf[20..28] != [0u8; 8] {
            return invalid("unknown segment header flags");
        }
        let first_lsn = Lsn(u64_at(buf, 12));
        if first_lsn == Lsn::ZERO {
            return invalid("segment header names lsn 0");
        }
        Ok(SegmentHeader { first_lsn })
    }
}

/// The fixed part of a record frame whose header checksum is valid.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Payload length in bytes.
    pub(crate) len: u32,
    /// Position of the record in the write that stored it.
    pub(crate) batch_index: u32,
    /// LSN of the record.
    pub(crate) lsn: Lsn,
    /// Checksum of the payload.
    pub(crate) payload_crc: u32,
}

impl RecordHeader {
    /// Decodes the fixed part of a frame; `None` unless its checksum is valid and it is
    /// plausible: LSN 0 is never a record, and a write never starts before LSN 1. Bytes that are
    /// all zeros are never a valid header.
    pub(crate) fn decode(buf: &[u8; RECORD_HEADER_LEN]) -> Option<RecordHeader> {
        if crc32c::crc32c(&buf[4..24]) != u32_at(buf, 0) {
            return None;
        }
        let header = RecordHeader {
            len: u32_at(buf, 4),
            batch_index: u32_at(buf, 8),
            lsn: Lsn(u64_at(buf, 12)),
            payload_crc: u32_at(buf, 20),
        };
        (header.lsn != Lsn::ZERO && u64::from(header.batch_index) < header.lsn.0).then_some(header)
    }

    /// Total length of the frame (header and payload).
    pub(crate) fn frame_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Whether `payload` is this record's: its length and checksum match.
    pub(crate) fn verify(&self, payload: &[u8]) -> bool {
        payload.len() as u64 == u64::from(self.len) && crc32c::crc32c(payload) == self.payload_crc
    }
}

/// Appends the frame of one record to `buf`.
///
/// The caller guarantees `payload.len() <= u32::MAX` (record sizes are limited far below that).
pub(crate) fn encode_record(buf: &mut Vec<u8>, lsn: Lsn, batch_index: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("record size is limited below u32::MAX");
    let mut head = [0u8; RECORD_HEADER_LEN];
    head[4..8].copy_from_slice(&len.to_le_bytes());
    head[8..12].copy_from_slice(&batch_index.to_le_bytes());
    head[12..20].copy_from_slice(&lsn.0.to_le_bytes());
    head[20..24].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&head[4..24]);
    head[0..4].copy_from_slice(&header_crc.to_le_bytes());
    buf.reserve(RECORD_HEADER_LEN + payload.len());
    buf.extend_from_slice(&head);
    buf.extend_from_slice(payload);
}

/// Length of the frame of a record with a payload of `payload_len` bytes.
pub(crate) fn frame_len(payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + payload_len) as u64
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Outcome of decoding one frame from the start of a byte slice.
    #[derive(Debug, PartialEq, Eq)]
    enum Decoded<'a> {
        /// A valid record.
        Record {
            /// Its header.
            header: RecordHeader,
            /// Its payload.
            payload: &'a [u8],
        },
        /// The slice ends before the frame does.
        Incomplete,
        /// The bytes are not a valid frame (checksum or header check failed).
        Invalid,
    }

    /// Decodes the frame at the start of `buf` the way the segment reader does: header, length
    /// check against the bytes present, then `verify`.
    fn decode_record(buf: &[u8]) -> Decoded<'_> {
        let Some(head) = buf.first_chunk::<RECORD_HEADER_LEN>() else {
            return Decoded::Incomplete;
        };
        let Some(header) = RecordHeader::decode(head) else {
            return Decoded::Invalid;
        };
        let rest = &buf[RECORD_HEADER_LEN..];
        let Some(payload) = rest.get(..header.len as usize) else {
            return Decoded::Incomplete;
        };
        if header.verify(payload) {
            Decoded::Record { header, payload }
        } else {
            Decoded::Invalid
        }
    }

    proptest! {
        // Goal: decoding arbitrary bytes as a record frame never panics.
        #[test]
        fn record_decode_of_arbitrary_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(&bytes);
        }

        // Goal: decoding arbitrary bytes as a segment header never panics.
        #[test]
        fn segment_header_decode_of_arbitrary_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SegmentHeader::decode(&bytes);
        }

        // Goal: an encoded record decodes to the same LSN, index and payload, and trailing bytes
        // do not matter.
        #[test]
        fn record_round_trips(
            lsn in 1u64..u64::MAX,
            index in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            trailing in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let index = u32::try_from(u64::from(index) % lsn).expect("smaller than a u32");
            let mut buf = Vec::new();
            encode_record(&mut buf, Lsn(lsn), index, &payload);
            prop_assert_eq!(buf.len() as u64, frame_len(payload.len()));
            buf.extend_from_slice(&trailing);
            match decode_record(&buf) {
                Decoded::Record { header, payload: got } => {
                    prop_assert_eq!(header.lsn, Lsn(lsn));
                    prop_assert_eq!(header.batch_index, index);
                    prop_assert_eq!(header.frame_len(), frame_len(payload.len()));
                    prop_assert_eq!(got, &payload[..]);
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }

        // Goal: any single flipped bit in a frame is detected, and any truncation is reported as
        // incomplete rather than as a record.
        #[test]
        fn damaged_record_is_never_accepted(
            lsn in 1u64..1_000_000,
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            encode_record(&mut buf, Lsn(lsn), 0, &payload);
            let mut flipped = buf.clone();
            flipped[flip.index(buf.len())] ^= 1 << bit;
            let accepted = matches!(decode_record(&flipped), Decoded::Record { .. });
            prop_assert!(!accepted, "a damaged frame was accepted");
            let cut = cut.index(buf.len());
            prop_assert_eq!(decode_record(&buf[..cut]), Decoded::Incomplete);
        }

        // Goal: a segment header round-trips and any flipped bit is rejected.
        #[test]
        fn segment_header_round_trips_and_detects_damage(
            lsn in 1u64..u64::MAX,
            flip in 0usize..SEGMENT_HEADER_LEN,
            bit in 0u8..8,
        ) {
            let header = SegmentHeader { first_lsn: Lsn(lsn) };
            let mut buf = header.encode();
            prop_assert_eq!(SegmentHeader::decode(&buf), Ok(header));
            buf[flip] ^= 1 << bit;
            prop_assert!(SegmentHeader::decode(&buf).is_err());
        }

        // Goal: a damaged payload leaves the header valid, so its length still tells where the
        // frame ends; a damaged header is refused on its own.
        #[test]
        fn header_checksum_is_independent_of_the_payload(
            lsn in 1u64..1_000_000,
            payload in proptest::collection::vec(any::<u8>(), 1..256),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut buf = Vec::new();
            encode_record(&mut buf, Lsn(lsn), 0, &payload);
            let at = RECORD_HEADER_LEN + flip.index(payload.len());
            buf[at] ^= 1 << bit;
            let head = buf.first_chunk::<RECORD_HEADER_LEN>().expect("a header");
            let header = RecordHeader::decode(head).expect("the header is intact");
            prop_assert_eq!(header.frame_len(), buf.len() as u64);
            prop_assert!(!header.verify(&buf[RECORD_HEADER_LEN..]));
            let mut head = *head;
            head[flip.index(RECORD_HEADER_LEN)] ^= 1 << bit;
            prop_assert_eq!(RecordHeader::decode(&head), None);
        }
    }

    // Goal: a zero-filled region (what a crash leaves where a write did not land) is not a
    // record: an all-zero header has a wrong checksum.
    #[test]
    fn zeros_are_not_a_record() {
        assert_eq!(decode_record(&[0u8; 64]), Decoded::Invalid);
        assert_eq!(RecordHeader::decode(&[0u8; RECORD_HEADER_LEN]), None);
    }

    // Goal: a valid header of format version 1 is recognised as such, so that the error can
    // say what to do instead of calling it damage.
    #[test]
    fn version_1_header_is_reported_as_an_old_version() {
        let mut buf = SegmentHeader { first_lsn: Lsn(1) }.encode();
        buf[8..10].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c(&buf[0..28]);
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&buf), Err(HeaderError::Version(1)));
    }
}
