//! Entry and LAC record encoding with their digests, and the keys derived from a ledger password.
//!
//! An entry as stored by a bookie is `ledgerId i64 | entryId i64 | lastAddConfirmed i64 |
//! length i64 | digest | payload` (all integers big-endian, `length` the cumulative ledger length
//! including this entry). The digest covers the 32 header bytes followed by the payload. A LAC
//! record (WRITE_LAC / READ_LAC) is `ledgerId i64 | lac i64 | digest` over the first 16 bytes.

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};

/// Bytes of the fixed entry header before the digest.
pub const ENTRY_HEADER_LEN: usize = 32;

/// Bytes of a LAC record before its digest.
pub const LAC_HEADER_LEN: usize = 16;

/// Length of the master key sent with adds and fence reads.
pub const MASTER_KEY_LEN: usize = 20;

/// How entries of a ledger are checksummed (the metadata's `digestType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DigestType {
    /// CRC-32 (IEEE), 8 bytes on the wire.
    Crc32,
    /// HMAC-SHA1 keyed by the password, 20 bytes.
    Hmac,
    /// CRC-32C (Castagnoli), 4 bytes. The default: cheapest, and BookKeeper's own default.
    #[default]
    Crc32c,
    /// No digest at all (no integrity check).
    Dummy,
}

impl DigestType {
    /// The metadata enum value.
    pub fn code(self) -> i32 {
        match self {
            DigestType::Crc32 => 1,
            DigestType::Hmac => 2,
            DigestType::Crc32c => 3,
            DigestType::Dummy => 4,
        }
    }

    /// Parses a metadata enum value.
    pub fn from_code(code: i32) -> Option<DigestType> {
        match code {
            1 => Some(DigestType::Crc32),
            2 => Some(DigestType::Hmac),
            3 => Some(DigestType::Crc32c),
            4 => Some(DigestType::Dummy),
            _ => None,
        }
    }

    /// Bytes the digest takes in an entry.
    pub fn mac_len(self) -> usize {
        match self {
            DigestType::Crc32 => 8,
            DigestType::Hmac => 20,
            DigestType::Crc32c => 4,
            DigestType::Dummy => 0,
        }
    }
}

/// `SHA1("ledger" ‖ password)`: the key every add, fence read and WRITE_LAC carries.
pub fn master_key(password: &[u8]) -> [u8; MASTER_KEY_LEN] {
    let mut sha = Sha1::new();
    sha.update(b"ledger");
    sha.update(password);
    sha.finalize().into()
}

/// `SHA1("mac" ‖ password)`: the HMAC key of the HMAC digest.
pub fn mac_key(password: &[u8]) -> [u8; 20] {
    let mut sha = Sha1::new();
    sha.update(b"mac");
    sha.update(password);
    sha.finalize().into()
}

/// Computes and checks digests of one ledger.
#[derive(Clone)]
pub struct Digester {
    kind: DigestType,
    mac_key: [u8; 20],
}

impl std::fmt::Debug for Digester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digester")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A decoded entry as read from a bookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedEntry {
    /// Ledger id from the header.
    pub ledger_id: i64,
    /// Entry id from the header.
    pub entry_id: i64,
    /// The writer's LAC when it packaged the entry.
    pub last_add_confirmed: i64,
    /// Cumulative ledger length including this entry.
    pub length: i64,
    /// The payload.
    pub payload: Bytes,
}

/// Why an entry or LAC record failed to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header and digest.
    TooShort,
    /// The digest does not match the content.
    DigestMismatch,
}

impl Digester {
    /// A digester for `kind`, keyed by `password` (the key only matters for HMAC).
    pub fn new(kind: DigestType, password: &[u8]) -> Digester {
        Digester {
            kind,
            mac_key: mac_key(password),
        }
    }

    /// The digest type.
    pub fn kind(&self) -> DigestType {
        self.kind
    }

    /// Writes the digest of `parts` (read as one stream) to `out`.
    fn put_digest(&self, parts: &[&[u8]], out: &mut BytesMut) {
        match self.kind {
            DigestType::Crc32c => {
                let crc = parts
                    .iter()
                    .fold(0u32, |crc, part| crc32c::crc32c_append(crc, part));
                out.put_u32(crc);
            }
            DigestType::Crc32 => {
                let mut hasher = crc32fast::Hasher::new();
                for part in parts {
                    hasher.update(part);
                }
                out.put_u64(u64::from(hasher.finalize()));
            }
            DigestType::Hmac => {
                let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.mac_key)
                    .expect("hmac accepts keys of any length");
                for part in parts {
                    mac.update(part);
                }
                out.put_slice(&mac.finalize().into_bytes());
            }
            DigestType::Dummy => {}
        }
    }

    fn digest_matches(&self, parts: &[&[u8]], expected: &[u8]) -> bool {
        let mut computed = BytesMut::with_capacity(self.kind.mac_len());
        self.put_digest(parts, &mut computed);
        match self.kind {
            // Compare in constant time so a HMAC cannot be guessed byte by byte.
            DigestType::Hmac => {
                computed.len() == expected.len()
                    && computed
                        .iter()
                        .zip(expected)
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
            _ => computed[..] == *expected,
        }
    }

    /// Packages `payload` as entry `entry_id` of `ledger_id`: header, digest, payload.
    pub fn package_entry(
        &self,
        ledger_id: i64,
        entry_id: i64,
        last_add_confirmed: i64,
        length: i64,
        payload: &[u8],
    ) -> Bytes {
        let mut out =
            BytesMut::with_capacity(ENTRY_HEADER_LEN + self.kind.mac_len() + payload.len());
        out.put_i64(ledger_id);
        out.put_i64(entry_id);
        out.put_i64(last_add_confirmed);
        out.put_i64(length);
        let mut header = [0u8; ENTRY_HEADER_LEN];
        header.copy_from_slice(&out[..ENTRY_HEADER_LEN]);
        self.put_digest(&[&header, payload], &mut out);
        out.put_slice(payload);
        out.freeze()
    }

    /// Decodes an entry and checks its digest. The caller checks the ids against what it asked.
    pub fn decode_entry(&self, body: &Bytes) -> Result<DecodedEntry, DecodeError> {
        let mac_len = self.kind.mac_len();
        if body.len() < ENTRY_HEADER_LEN + mac_len {
            return Err(DecodeError::TooShort);
        }
        let header = &body[..ENTRY_HEADER_LEN];
        let digest = &body[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + mac_len];
        let payload = body.slice(ENTRY_HEADER_LEN + mac_len..);
        if !self.digest_matches(&[header, &payload], digest) {
            return Err(DecodeError::DigestMismatch);
        }
        Ok(DecodedEntry {
            ledger_id: read_i64(body, 0),
            entry_id: read_i64(body, 8),
            last_add_confirmed: read_i64(body, 16),
            length: read_i64(body, 24),
            payload,
        })
    }

    /// Encodes the LAC record `ledger_id | lac | digest`.
    pub fn encode_lac(&self, ledger_id: i64, lac: i64) -> Bytes {
        let mut out = BytesMut::with_capacity(LAC_HEADER_LEN + self.kind.mac_len());
        out.put_i64(ledger_id);
        out.put_i64(lac);
        let mut header = [0u8; LAC_HEADER_LEN];
        header.copy_from_slice(&out[..LAC_HEADER_LEN]);
        self.put_digest(&[&header], &mut out);
        out.freeze()
    }

    /// Decodes a LAC record into `(ledger_id, lac)` after checking its digest.
    pub fn decode_lac(&self, body: &[u8]) -> Result<(i64, i64), DecodeError> {
        let mac_len = self.kind.mac_len();
        if body.len() < LAC_HEADER_LEN + mac_len {
            return Err(DecodeError::TooShort);
        }
        let digest = &body[LAC_HEADER_LEN..LAC_HEADER_LEN + mac_len];
        if !self.digest_matches(&[&body[..LAC_HEADER_LEN]], digest) {
            return Err(DecodeError::DigestMismatch);
        }
        Ok((read_i64(body, 0), read_i64(body, 8)))
    }
}

/// Reads a big-endian i64 at `at`; the caller has checked the length.
fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    const HEADER_HEX: &str = concat!(
        "0000000000000001",
        "0000000000000000",
        "ffffffffffffffff",
        "0000000000000005"
    );

    #[test]
    fn master_and_mac_keys_match_spec_vectors() {
        // Goal: the keys derived from a password are those Java derives.
        assert_eq!(
            hex(&master_key(b"")),
            "850bf1071c5e3d8c24235676f8816ae0cbe2f14f"
        );
        assert_eq!(
            hex(&master_key(b"pw")),
            "2aa226ba095b6969a64871977693b14671710d76"
        );
        assert_eq!(
            hex(&mac_key(b"pw")),
            "1f397c2df518ce03229cc4dc92b608068c3a2fad"
        );
    }

    #[test]
    fn entry_digests_match_spec_vectors() {
        // Goal: ledger 1, entry 0, LAC -1, length 5, "hello" gives Java's digests for every type.
        let cases = [
            (DigestType::Crc32c, &b""[..], "e3a5f74d"),
            (DigestType::Crc32, &b""[..], "0000000030a56872"),
            (
                DigestType::Hmac,
                &b"pw"[..],
                "b1f0ff29955d068a7855eecd5d4cb81fee2bf8df",
            ),
            (DigestType::Dummy, &b""[..], ""),
        ];
        for (kind, password, digest) in cases {
            let entry = Digester::new(kind, password).package_entry(1, 0, -1, 5, b"hello");
            let expected = format!("{HEADER_HEX}{digest}{}", hex(b"hello"));
            assert_eq!(hex(&entry), expected, "{kind:?}");
        }
    }

    #[test]
    fn lac_record_matches_spec_vector() {
        // Goal: the explicit-LAC blob of ledger 1, lac 7 is the one Java writes.
        let blob = Digester::new(DigestType::Crc32c, b"").encode_lac(1, 7);
        assert_eq!(hex(&blob), "0000000000000001000000000000000762842849");
        assert_eq!(
            Digester::new(DigestType::Crc32c, b"").decode_lac(&blob),
            Ok((1, 7))
        );
    }

    #[test]
    fn tampered_entry_fails_digest_check() {
        // Goal: a flipped payload bit, or the wrong HMAC password, is detected.
        for kind in [DigestType::Crc32c, DigestType::Crc32, DigestType::Hmac] {
            let digester = Digester::new(kind, b"secret");
            let entry = digester.package_entry(9, 3, 2, 100, b"payload");
            let mut bad = entry.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(
                digester.decode_entry(&Bytes::from(bad)),
                Err(DecodeError::DigestMismatch),
                "{kind:?}"
            );
        }
        let entry = Digester::new(DigestType::Hmac, b"a").package_entry(1, 1, 0, 1, b"x");
        assert_eq!(
            Digester::new(DigestType::Hmac, b"b").decode_entry(&entry),
            Err(DecodeError::DigestMismatch)
        );
    }

    #[test]
    fn digest_type_codes_round_trip() {
        // Goal: metadata enum values map both ways and unknown ones are refused.
        for kind in [
            DigestType::Crc32,
            DigestType::Hmac,
            DigestType::Crc32c,
            DigestType::Dummy,
        ] {
            assert_eq!(DigestType::from_code(kind.code()), Some(kind));
        }
        assert_eq!(DigestType::from_code(0), None);
        assert_eq!(DigestType::from_code(5), None);
    }

    fn any_digest() -> impl Strategy<Value = DigestType> {
        prop_oneof![
            Just(DigestType::Crc32),
            Just(DigestType::Hmac),
            Just(DigestType::Crc32c),
            Just(DigestType::Dummy),
        ]
    }

    proptest! {
        #[test]
        fn entry_round_trips(
            kind in any_digest(),
            password in proptest::collection::vec(any::<u8>(), 0..16),
            ledger in any::<i64>(), entry in any::<i64>(), lac in any::<i64>(), len in any::<i64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            // Goal: package then decode gives back every field.
            let digester = Digester::new(kind, &password);
            let body = digester.package_entry(ledger, entry, lac, len, &payload);
            let decoded = digester.decode_entry(&body).expect("own entry decodes");
            prop_assert_eq!(decoded.ledger_id, ledger);
            prop_assert_eq!(decoded.entry_id, entry);
            prop_assert_eq!(decoded.last_add_confirmed, lac);
            prop_assert_eq!(decoded.length, len);
            prop_assert_eq!(&decoded.payload[..], &payload[..]);
        }

        #[test]
        fn lac_round_trips(kind in any_digest(), ledger in any::<i64>(), lac in any::<i64>()) {
            // Goal: encode then decode of a LAC record gives back both fields.
            let digester = Digester::new(kind, b"pw");
            prop_assert_eq!(digester.decode_lac(&digester.encode_lac(ledger, lac)), Ok((ledger, lac)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(kind in any_digest(), bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            // Goal: decoding garbage returns an error or a value, never a panic.
            let digester = Digester::new(kind, b"");
            let _ = digester.decode_entry(&Bytes::from(bytes.clone()));
            let _ = digester.decode_lac(&bytes);
        }
    }
}
