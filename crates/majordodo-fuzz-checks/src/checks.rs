//! One function per fuzz target; see the crate documentation.

use std::io;
use std::path::{Component, Path};
use std::sync::Arc;

use bookkeeper_client::digest::Digester;
use bookkeeper_client::frame::{MAX_RESPONSE_FRAME_LEN, next_frame};
use bookkeeper_client::proto::Response;
use bookkeeper_client::{DigestType, LedgerMetadata};
use bytes::BytesMut;
use majordodo_core::DefaultGroupMapper;
use majordodo_log::vfs::{Fs, SimFs};
use majordodo_log::{Compression, FileLog, FileLogConfig, Lsn, read::FileLogReader};
use majordodo_proto::archive::{self as pool_archive, ArchiveLimits};
use majordodo_proto::cluster::{
    BrokerInfo, LedgersInfo, decode_ledger_entry, encode_ledger_entry, ledger_entry_len_bound,
};
use majordodo_proto::http::{parse_action, parse_view};
use majordodo_proto::record::{decode_entry, encode_entry};
use majordodo_proto::snapshot::{decode_snapshot, encode_snapshot, snapshot_lsn};
use majordodo_proto::worker::{
    Message, WorkerCodec, broker_proof, decode_body, encoded_body_len, verify_broker_proof,
    verify_worker_proof, worker_proof,
};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

/// HTTP requests: a `POST` body through [`parse_action`], and the same bytes read as a query
/// string (`key=value&...`, taken as already percent-decoded) through [`parse_view`].
///
/// Properties: no panic; a body that parses re-encodes (`ActionRequest::to_json`, what the
/// Rust client sends) to a body that parses to the same request.
pub fn http_request(data: &[u8]) {
    if let Ok(request) = parse_action(data) {
        let body = serde_json::to_vec(&request.to_json()).expect("a JSON value serializes");
        match parse_action(&body) {
            Ok(again) => assert_eq!(again, request, "the request changed through to_json"),
            Err(error) => panic!(
                "the request {request:?} re-encoded as {} is refused: {error:?}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> = text
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect();
    let _ = parse_view(&pairs);
}

/// Most bytes the codec reserves ahead of a frame's data (its `MAX_RESERVE`): the capacity bound
/// below allows that much beyond what really arrived, never the announced length.
const CODEC_RESERVE: usize = 64 * 1024;

/// The secret and the fixed sides of the handshake used to check the proofs.
const SECRET: &[u8] = b"fuzz shared secret";
const BROKER_NONCE: [u8; 32] = [0xb7; 32];
const CLIENT_NONCE: [u8; 32] = [0xc1; 32];
const WORKER_ID: &str = "fuzz-worker";
/// The per-worker credential secret of the credential handshake seeds.
const CREDENTIAL_SECRET: &[u8] = b"fuzz credential secret";

/// The worker port: the bytes as one frame body ([`decode_body`]) and as a stream of frames
/// through the [`WorkerCodec`] of the default maximum (16 MiB), fed in pieces of a size taken
/// from the first byte; then the decoded messages as a handshake seen by either side.
///
/// Properties: no panic; a decoded message re-encodes to a frame that decodes to the same
/// message; the codec's buffer never grows beyond what arrived plus its bounded reserve, whatever
/// length a prefix announces; a worker proof verifies for the exact fields it was made for and
/// for no other Hello; a proof a peer sent verifies only if it is the right one. The same for a
/// Hello naming a credential: the SCRAM-style proof verifies against the credential's verifier
/// for exactly its fields (credential id included), and a sent proof only if it is the right one.
pub fn worker_protocol(data: &[u8]) {
    if let Ok(message) = decode_body(data) {
        frame_round_trip(&message);
    }
    let step = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
    let mut codec = WorkerCodec::default();
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut fed = 0;
    'feed: for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(message)) => {
                    frame_round_trip(&message);
                    messages.push(message);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        let bound = 2 * (fed + CODEC_RESERVE) + 64;
        assert!(
            buf.capacity() <= bound,
            "the codec holds {} bytes of buffer after {fed} bytes arrived",
            buf.capacity()
        );
    }
    handshake(&messages);
}

fn frame_round_trip(message: &Message) {
    let mut codec = WorkerCodec::default();
    let mut frame = BytesMut::new();
    codec
        .encode(message.clone(), &mut frame)
        .unwrap_or_else(|e| panic!("decoded {} does not re-encode: {e}", message.kind()));
    assert_eq!(
        frame.len(),
        4 + encoded_body_len(message),
        "encoded_body_len"
    );
    let again = codec
        .decode(&mut frame)
        .unwrap_or_else(|e| panic!("re-encoded {} does not decode: {e}", message.kind()))
        .expect("a whole frame decodes");
    assert_eq!(&again, message, "the message changed through a frame");
    assert!(frame.is_empty(), "bytes left after the frame");
}

fn handshake(messages: &[Message]) {
    // The broker's side: the proof binds the Hello's fields, no other Hello's.
    let hellos: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Hello(hello) => Some(hello),
            _ => None,
        })
        .collect();
    if let Some(first) = hellos.first() {
        let fields = |h: &majordodo_proto::worker::Hello| {
            (
                h.client_nonce.clone(),
                h.worker_id.clone(),
                h.process_id.clone(),
            )
        };
        let (nonce, id, pid) = fields(first);
        let proof = worker_proof(SECRET, &BROKER_NONCE, &nonce, &id, &pid);
        assert!(verify_worker_proof(
            SECRET,
            &BROKER_NONCE,
            &nonce,
            &id,
            &pid,
            &proof
        ));
        for other in &hellos[1..] {
            let (n2, id2, pid2) = fields(other);
            if (&n2, &id2, &pid2) != (&nonce, &id, &pid) {
                assert!(
                    !verify_worker_proof(SECRET, &BROKER_NONCE, &n2, &id2, &pid2, &proof),
                    "the proof of {first:?} also proves {other:?}"
                );
            }
        }
        for message in messages {
            if let Message::Connect(connect) = message {
                let accepted =
                    verify_worker_proof(SECRET, &BROKER_NONCE, &nonce, &id, &pid, &connect.proof);
                assert_eq!(accepted, connect.proof == proof, "worker proof check");
            }
        }
        credential_handshake(first, &hellos[1..], messages);
    }
    // The worker's side: the broker's answer to a challenge.
    let mut broker_nonce = None;
    for message in messages {
        match message {
            Message::Challenge(challenge) => broker_nonce = Some(&challenge.broker_nonce),
            Message::Welcome(welcome) => {
                let nonce = broker_nonce.map_or(&BROKER_NONCE[..], |n| n.as_slice());
                let right = broker_proof(SECRET, &CLIENT_NONCE, nonce, WORKER_ID);
                let accepted = verify_broker_proof(
                    SECRET,
                    &CLIENT_NONCE,
                    nonce,
                    WORKER_ID,
                    &welcome.broker_proof,
                );
                assert_eq!(
                    accepted,
                    welcome.broker_proof == right,
                    "broker proof check"
                );
            }
            _ => {}
        }
    }
}

/// The broker's side of a credential handshake: the proof made for `first` verifies against
/// the verifier, for no other Hello; a sent proof verifies only if it is that one.
fn credential_handshake(
    first: &majordodo_proto::worker::Hello,
    others: &[&majordodo_proto::worker::Hello],
    messages: &[Message],
) {
    use majordodo_proto::worker::{
        CredentialAuth, credential_broker_proof, credential_verifier, credential_worker_proof,
        verify_credential_broker_proof, verify_credential_worker_proof,
    };
    let auth_of = |h: &'_ majordodo_proto::worker::Hello| -> (Vec<u8>, String, String, String) {
        (
            h.client_nonce.clone(),
            h.worker_id.clone(),
            h.process_id.clone(),
            h.credential_id.clone(),
        )
    };
    let verifier = credential_verifier(CREDENTIAL_SECRET);
    let (nonce, id, pid, cred) = auth_of(first);
    let auth = CredentialAuth {
        broker_nonce: &BROKER_NONCE,
        client_nonce: &nonce,
        worker_id: &id,
        process_id: &pid,
        credential_id: &cred,
    };
    let proof = credential_worker_proof(CREDENTIAL_SECRET, &auth);
    assert!(verify_credential_worker_proof(&verifier, &auth, &proof));
    let answer = credential_broker_proof(&verifier, &auth);
    assert!(verify_credential_broker_proof(
        CREDENTIAL_SECRET,
        &auth,
        &answer
    ));
    for other in others {
        let (n2, id2, pid2, cred2) = auth_of(other);
        if (&n2, &id2, &pid2, &cred2) != (&nonce, &id, &pid, &cred) {
            let changed = CredentialAuth {
                broker_nonce: &BROKER_NONCE,
                client_nonce: &n2,
                worker_id: &id2,
                process_id: &pid2,
                credential_id: &cred2,
            };
            assert!(
                !verify_credential_worker_proof(&verifier, &changed, &proof),
                "the credential proof of {first:?} also proves {other:?}"
            );
        }
    }
    for message in messages {
        if let Message::Connect(connect) = message {
            let accepted = verify_credential_worker_proof(&verifier, &auth, &connect.proof);
            assert_eq!(
                accepted,
                connect.proof == proof,
                "credential worker proof check"
            );
        }
    }
}

/// Log records ([`decode_entry`]), as read back from a file log or a ledger.
///
/// Properties: no panic; an entry that decodes (of any supported version) encodes to bytes
/// that decode to the same entry.
pub fn log_record(data: &[u8]) {
    if let Ok(entry) = decode_entry(data) {
        let bytes = encode_entry(&entry);
        match decode_entry(&bytes) {
            Ok(again) => assert_eq!(again, entry, "the entry changed through encode_entry"),
            Err(error) => panic!("re-encoded {entry:?} does not decode: {error}"),
        }
    }
}

/// Snapshots: the bytes as a snapshot file (`majordodo_log::decode_snapshot`: header, checksums,
/// compression), as the same file with its checksums made valid (so that mutations reach the
/// body), and as snapshot content ([`decode_snapshot`] into a broker state).
///
/// Properties: no panic; a file that decodes re-encodes (either compression) to one that decodes
/// to the same snapshot; content that decodes has the LSN [`snapshot_lsn`] reads, and the
/// state's own snapshot decodes to the same state.
pub fn snapshot(data: &[u8]) {
    snapshot_content(data);
    snapshot_file(data);
    if let Some(fixed) = snapshot_file_with_valid_checksums(data) {
        snapshot_file(&fixed);
    }
}

fn snapshot_content(data: &[u8]) {
    let Ok(state) = decode_snapshot(data, Arc::new(DefaultGroupMapper)) else {
        return;
    };
    assert_eq!(
        snapshot_lsn(data).ok(),
        Some(state.snapshot_header().lsn),
        "snapshot_lsn and decode_snapshot disagree"
    );
    let bytes = encode_snapshot(&state.snapshot_source());
    match decode_snapshot(&bytes, Arc::new(DefaultGroupMapper)) {
        Ok(again) => assert_eq!(
            again.to_snapshot(),
            state.to_snapshot(),
            "the state changed through encode_snapshot"
        ),
        Err(error) => panic!("the snapshot of a decoded state does not decode: {error}"),
    }
}

fn snapshot_file(data: &[u8]) {
    let Ok(snapshot) = majordodo_log::decode_snapshot(data) else {
        return;
    };
    for compression in [Compression::None, Compression::Gzip] {
        let bytes = majordodo_log::encode_snapshot(snapshot.lsn, &snapshot.data, compression);
        match majordodo_log::decode_snapshot(&bytes) {
            Ok(again) => assert_eq!(again, snapshot, "the snapshot changed through a file"),
            Err(error) => panic!("a re-encoded snapshot file does not decode: {error}"),
        }
    }
    snapshot_content(&snapshot.data);
}

/// Length of a snapshot file header (see `majordodo_log`'s snapshot module).
const SNAPSHOT_HEADER_LEN: usize = 48;

/// The bytes with a snapshot file header whose body length and checksums match its body.
fn snapshot_file_with_valid_checksums(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < SNAPSHOT_HEADER_LEN {
        return None;
    }
    let mut out = data.to_vec();
    let body_len = (out.len() - SNAPSHOT_HEADER_LEN) as u64;
    out[32..40].copy_from_slice(&body_len.to_le_bytes());
    let body_crc = crc32c::crc32c(&out[SNAPSHOT_HEADER_LEN..]);
    out[40..44].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..44]);
    out[44..48].copy_from_slice(&header_crc.to_le_bytes());
    Some(out)
}

/// The limits archives are walked under: small, so that a bomb is caught quickly.
const ARCHIVE_LIMITS: ArchiveLimits = ArchiveLimits {
    max_files: 64,
    max_unpacked_bytes: 1 << 20,
};

/// Code-pool archives (zip, tar.gz) through [`pool_archive::walk`], reading every entry, as a
/// worker unpacking a pool does.
///
/// Properties: no panic; every entry handed out is a relative path of normal components; an
/// archive that passes holds at most the limits' entries and bytes, and passes
/// [`pool_archive::validate`] too.
pub fn archive(data: &[u8]) {
    let mut read = 0u64;
    let walked = pool_archive::walk(data, ARCHIVE_LIMITS, |entry, content| {
        assert!(
            !entry.path.as_os_str().is_empty()
                && entry
                    .path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_))),
            "unsafe path {:?} handed out",
            entry.path
        );
        assert!(pool_archive::stays_inside(&entry.path));
        read += io::copy(content, &mut io::sink())?;
        Ok(())
    });
    if let Ok(summary) = walked {
        assert!(summary.entries <= ARCHIVE_LIMITS.max_files, "{summary:?}");
        assert!(
            summary.bytes <= ARCHIVE_LIMITS.max_unpacked_bytes,
            "{summary:?}"
        );
        assert!(read <= summary.bytes, "read {read} bytes, {summary:?}");
        let validated = pool_archive::validate(data, ARCHIVE_LIMITS);
        assert!(
            validated.as_ref().is_ok_and(|v| *v == summary),
            "walk gave {summary:?}, validate {validated:?}"
        );
    }
}

/// Layout of the file log's segments (see `majordodo_log`'s format module).
const SEGMENT_HEADER_LEN: usize = 32;
const RECORD_HEADER_LEN: usize = 24;

/// File-log segments: the bytes as the only segment of a log directory (on the simulated file
/// system), raw and with every checksum made valid, read by `FileLogReader` (what the
/// `dump-log` tool and followers use) and opened by `FileLog::open` (recovery at boot).
///
/// Properties: no panic; records come out with consecutive LSNs, no more of them than the
/// bytes can frame.
pub fn log_segment(data: &[u8]) {
    read_segment(data);
    read_segment(&segment_with_valid_checksums(data));
}

fn read_segment(data: &[u8]) {
    let fs = SimFs::new(0);
    let dir = Path::new("/log");
    fs.create_dir(dir).expect("the simulated root exists");
    // The file is named after the first LSN its header names, as the log names its segments.
    let first = data
        .get(12..20)
        .map_or(1, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let path = dir.join(format!("{first:020}.log"));
    let file = fs.create_new(&path).expect("a new file");
    file.write_all_at(data, 0).expect("write");
    file.sync_all().expect("sync");
    fs.sync_dir(dir).expect("sync dir");

    let mut reader = FileLogReader::open_with(Box::new(fs.clone()), dir, Lsn(0)).expect("listing");
    let mut last: Option<Lsn> = None;
    let mut records = 0usize;
    while let Ok(Some((lsn, _payload))) = reader.next_record() {
        if let Some(last) = last {
            assert_eq!(lsn, last.next(), "records out of order");
        }
        last = Some(lsn);
        records += 1;
        assert!(
            records <= data.len() / RECORD_HEADER_LEN,
            "{records} records out of {} bytes",
            data.len()
        );
    }
    drop(reader);
    // Recovery may cut an unfinished write and start a segment; it must not panic.
    if let Ok((log, _report)) = FileLog::open_with(Arc::new(fs), dir, FileLogConfig::default()) {
        drop(log);
    }
}

/// The bytes with a valid segment header checksum and, for every record frame that fits, valid
/// header and payload checksums.
fn segment_with_valid_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if out.len() < SEGMENT_HEADER_LEN {
        return out;
    }
    let crc = crc32c::crc32c(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut at = SEGMENT_HEADER_LEN;
    while at + RECORD_HEADER_LEN <= out.len() {
        let len = u32::from_le_bytes(out[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let start = at + RECORD_HEADER_LEN;
        let end = start.saturating_add(len).min(out.len());
        let payload_crc = crc32c::crc32c(&out[start..end]);
        out[at + 20..at + 24].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&out[at + 4..at + 24]);
        out[at..at + 4].copy_from_slice(&header_crc.to_le_bytes());
        if end - start < len {
            break;
        }
        at = end;
    }
    out
}

/// What a replicated broker reads from ZooKeeper and the bookies: ledger entries
/// ([`decode_ledger_entry`]), the leader and ledger-list znodes ([`BrokerInfo`],
/// [`LedgersInfo`]), BookKeeper ledger metadata znodes ([`LedgerMetadata`]) and the bookie
/// response stream (frames, responses, entries with their digests).
///
/// Properties: no panic; whatever decodes re-encodes to what decodes to the same value; a
/// ledger entry's size stays within [`ledger_entry_len_bound`]; the response buffer never grows
/// beyond what arrived plus one maximal frame, whatever a length prefix announces.
pub fn cluster(data: &[u8]) {
    if let Ok(entry) = decode_ledger_entry(data) {
        let _ = entry.last_lsn();
        let bytes = encode_ledger_entry(entry.first_lsn, &entry.records);
        assert!(bytes.len() <= ledger_entry_len_bound(entry.records.iter().map(|r| r.len())));
        match decode_ledger_entry(&bytes) {
            Ok(again) => assert_eq!(again, entry, "the ledger entry changed"),
            Err(error) => panic!("a re-encoded ledger entry does not decode: {error}"),
        }
    }
    if let Ok(info) = BrokerInfo::from_json(data) {
        let _ = (info.api_url(), info.broker_id(), info.applied_lsn());
        let _ = info.worker_address();
        let again = BrokerInfo::from_json(&info.to_json()).expect("re-encoded broker info");
        assert_eq!(again, info, "the broker info changed");
    }
    if let Ok(info) = LedgersInfo::from_json(data) {
        let _ = (
            info.first_lsn(),
            info.has_full_history(),
            info.ledgers().count(),
        );
        let again = LedgersInfo::from_json(&info.to_json()).expect("re-encoded ledger list");
        assert_eq!(again, info, "the ledger list changed");
    }
    let path = "/ledgers/00/0000/L0001";
    if let Ok(metadata) = LedgerMetadata::deserialize(path, data) {
        let _ = (metadata.segment_for(0), metadata.last_segment());
        let again = LedgerMetadata::deserialize(path, &metadata.serialize())
            .unwrap_or_else(|e| panic!("re-serialized metadata does not parse: {e}"));
        assert_eq!(again, metadata, "the ledger metadata changed");
    }
    bookie_responses(data);
}

fn bookie_responses(data: &[u8]) {
    let step = data.first().map_or(1, |b| usize::from(*b % 64) + 1);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    'feed: for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match next_frame(&mut buf) {
                Ok(Some(body)) => {
                    let Ok(response) = Response::decode(body) else {
                        continue;
                    };
                    let _ = response.effective_status();
                    if let Some(entry) = response.read_response.and_then(|r| r.body) {
                        for kind in [DigestType::Crc32, DigestType::Crc32c, DigestType::Hmac] {
                            let digester = Digester::new(kind, b"fuzz");
                            let _ = digester.decode_entry(&entry);
                            let _ = digester.decode_lac(&entry);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        let bound = 2 * (fed + MAX_RESPONSE_FRAME_LEN) + 64;
        assert!(
            buf.capacity() <= bound,
            "{} bytes of buffer",
            buf.capacity()
        );
    }
}
