//! SnapshotStore on disk: atomic writes, retention, fallback on a damaged snapshot, streaming.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use majordodo_log::{Compression, Lsn, SNAPSHOTS_RETAINED, SnapshotStore};
use proptest::prelude::*;

fn data(seed: u64, len: usize) -> Vec<u8> {
    // Compressible but not trivial: a counter pattern with the seed mixed in.
    (0..len)
        .map(|i| ((i as u64 / 7).wrapping_mul(31) ^ seed) as u8)
        .collect()
}

fn snapshot_files(store: &SnapshotStore) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(store.dir())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    out.sort();
    out
}

// Goal: a snapshot written to a file reads back identical, with every compression.
#[test]
fn snapshot_round_trips_through_a_file() {
    for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SnapshotStore::open(dir.path())
            .expect("open")
            .with_compression(compression);
        assert_eq!(store.load_latest().expect("load"), None, "empty store");
        let bytes = data(1, 100_000);
        let info = store.write(Lsn(42), &bytes).expect("write");
        assert_eq!(info.lsn, Lsn(42));
        assert_eq!(info.uncompressed_len, 100_000);
        assert_eq!(
            info.path.file_name().expect("name").to_string_lossy(),
            "snapshot-00000000000000000042.snap"
        );
        if compression != Compression::None {
            assert!(
                info.file_len < 50_000,
                "{compression:?} compresses: {}",
                info.file_len
            );
        }
        let loaded = store.load_latest().expect("load").expect("a snapshot");
        assert_eq!(loaded.lsn, Lsn(42));
        assert!(loaded.data == bytes);
        // An empty snapshot is a valid one.
        store.write(Lsn(43), &[]).expect("write empty");
        let loaded = store.load_latest().expect("load").expect("a snapshot");
        assert_eq!((loaded.lsn, loaded.data.len()), (Lsn(43), 0));
    }
}

// Goal: only the newest two snapshots are kept, and the release point is the older of them.
#[test]
fn only_the_newest_snapshots_are_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    assert_eq!(store.release_point().expect("release point"), None);
    store.write(Lsn(10), &data(10, 1000)).expect("write");
    assert_eq!(
        store.release_point().expect("release point"),
        None,
        "with one snapshot the whole log is needed for a fallback"
    );
    for lsn in [20u64, 30, 40] {
        store.write(Lsn(lsn), &data(lsn, 1000)).expect("write");
    }
    assert_eq!(SNAPSHOTS_RETAINED, 2);
    assert_eq!(store.list().expect("list"), vec![Lsn(40), Lsn(30)]);
    assert_eq!(snapshot_files(&store).len(), 2, "older files are deleted");
    assert_eq!(store.release_point().expect("release point"), Some(Lsn(30)));
}

// Goal: a damaged newest snapshot is skipped and the previous one is loaded.
#[test]
fn load_latest_falls_back_when_the_newest_is_damaged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    store.write(Lsn(5), &data(5, 50_000)).expect("write");
    let newest = store.write(Lsn(9), &data(9, 50_000)).expect("write");
    for offset in [3u64, 20, 60, newest.file_len - 1] {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&newest.path)
            .expect("open");
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).expect("read");
        file.write_all_at(&[byte[0] ^ 1], offset).expect("damage");
        let loaded = store.load_latest().expect("load").expect("a snapshot");
        assert_eq!(
            loaded.lsn,
            Lsn(5),
            "damage at {offset} makes the older one load"
        );
        assert!(loaded.data == data(5, 50_000));
        let reader = store.open_latest().expect("open").expect("a snapshot");
        assert_eq!(reader.lsn(), Lsn(5));
        file.write_all_at(&byte, offset).expect("repair");
    }
    // A truncated newest snapshot too.
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&newest.path)
        .expect("open");
    file.set_len(newest.file_len - 10).expect("truncate");
    assert_eq!(
        store.load_latest().expect("load").expect("a snapshot").lsn,
        Lsn(5)
    );
}

/// Rewrites the snapshot file at `path` through `change` (given the header and the stored body),
/// then seals it again: body length, body checksum and header checksum made to match, so that
/// the damage is seen only when the body is decompressed.
fn reseal(path: &std::path::Path, change: impl FnOnce(&mut [u8; 48], &mut Vec<u8>)) {
    let bytes = fs::read(path).expect("read");
    let mut header: [u8; 48] = bytes[..48].try_into().unwrap();
    let mut body = bytes[48..].to_vec();
    change(&mut header, &mut body);
    header[32..40].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[40..44].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let crc = crc32c::crc32c(&header[..44]);
    header[44..48].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, [&header[..], &body].concat()).expect("write");
}

// Goal: a newest snapshot that passes its checksums but whose body does not decompress to what
// its header announces (a body cut short and sealed again, a length announced wrong) is found
// out while it is read, and the older one is read instead, by `load_latest` and by a reader
// that consumes the stream itself through `read_latest`; a reader's other errors end the search.
#[test]
fn a_body_damaged_past_its_checksum_falls_back_while_it_is_read() {
    type Damage = fn(&mut [u8; 48], &mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("cut short", |_, body| body.truncate(body.len() / 2)),
        ("announced longer", |header, _| {
            let len = u64::from_le_bytes(header[24..32].try_into().unwrap());
            header[24..32].copy_from_slice(&(len + 1).to_le_bytes());
        }),
        ("announced shorter", |header, _| {
            let len = u64::from_le_bytes(header[24..32].try_into().unwrap());
            header[24..32].copy_from_slice(&(len - 1).to_le_bytes());
        }),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SnapshotStore::open(dir.path()).expect("open");
        store.write(Lsn(5), &data(5, 300_000)).expect("write");
        let newest = store.write(Lsn(9), &data(9, 300_000)).expect("write");
        reseal(&newest.path, damage);
        let read_all = |mut reader: majordodo_log::SnapshotReader<'static>| {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .map(|_| bytes)
                .map_err(Failure::Read)
        };
        let damaged = |e: &Failure| match e {
            Failure::Read(e) if e.kind() == std::io::ErrorKind::InvalidData => Some(e.to_string()),
            _ => None,
        };
        let (lsn, bytes) = store
            .read_latest(read_all, damaged)
            .expect("read")
            .expect("a snapshot");
        assert_eq!((lsn, bytes == data(5, 300_000)), (Lsn(5), true), "{what}");
        let loaded = store.load_latest().expect("load").expect("a snapshot");
        assert_eq!(loaded.lsn, Lsn(5), "{what}");
        // An error that is not damage is the reader's own: it is returned.
        let refused = store.read_latest(
            |_| Err::<(), _>(Failure::Read(std::io::Error::other("no room"))),
            damaged,
        );
        assert!(
            matches!(&refused, Err(Failure::Read(e)) if e.to_string() == "no room"),
            "{what}"
        );
    }
}

#[derive(Debug)]
enum Failure {
    Store(#[expect(dead_code, reason = "shown when a test fails")] majordodo_log::SnapshotError),
    Read(std::io::Error),
}

impl From<majordodo_log::SnapshotError> for Failure {
    fn from(e: majordodo_log::SnapshotError) -> Failure {
        Failure::Store(e)
    }
}

// Goal: an interrupted write leaves the previous snapshots as they were and no temporary file.
#[test]
fn abandoned_write_leaves_previous_snapshots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    store.write(Lsn(1), b"first").expect("write");
    let mut writer = store.writer(Lsn(2)).expect("writer");
    writer.write_all(b"half of a snapshot").expect("write");
    drop(writer);
    assert_eq!(
        snapshot_files(&store).len(),
        1,
        "the temporary file was removed"
    );
    assert_eq!(
        store.load_latest().expect("load").expect("a snapshot").data,
        b"first"
    );
    // A temporary file left by a crash is removed at open.
    let stale = dir.path().join("snapshot-00000000000000000003.snap.tmp");
    fs::write(&stale, b"partial").expect("write stale");
    let store = SnapshotStore::open(dir.path()).expect("reopen");
    assert!(!stale.exists());
    assert_eq!(store.list().expect("list"), vec![Lsn(1)]);
}

// Goal: a large snapshot is written and read in pieces through the streaming interfaces and
// comes back identical.
#[test]
fn large_snapshot_streams_in_both_directions() {
    const PIECE: usize = 64 * 1024;
    const PIECES: u64 = 128; // 8 MiB
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    let mut writer = store.writer(Lsn(77)).expect("writer");
    let mut written = 0u32;
    for piece in 0..PIECES {
        let bytes = data(piece, PIECE);
        written = crc32c::crc32c_append(written, &bytes);
        writer.write_all(&bytes).expect("write piece");
    }
    let info = writer.finish().expect("finish");
    assert_eq!(info.uncompressed_len, PIECE as u64 * PIECES);
    let mut reader = store.open_latest().expect("open").expect("a snapshot");
    assert_eq!(reader.len(), PIECE as u64 * PIECES);
    let mut read = 0u32;
    let mut total = 0u64;
    let mut buf = vec![0u8; 10_000];
    loop {
        let n = reader.read(&mut buf).expect("read piece");
        if n == 0 {
            break;
        }
        read = crc32c::crc32c_append(read, &buf[..n]);
        total += n as u64;
    }
    assert_eq!(total, PIECE as u64 * PIECES);
    assert_eq!(read, written);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    // Goal: whatever bytes sit in the newest snapshot file, loading never panics and falls
    // back on the valid older snapshot.
    #[test]
    fn arbitrary_newest_file_never_panics_and_falls_back(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SnapshotStore::open(dir.path()).expect("open");
        store.write(Lsn(1), b"valid").expect("write");
        fs::write(dir.path().join("snapshot-00000000000000000002.snap"), &bytes).expect("write junk");
        let loaded = store.load_latest().expect("load").expect("a snapshot");
        prop_assert_eq!(loaded.lsn, Lsn(1));
        prop_assert_eq!(loaded.data, b"valid".to_vec());
    }
}

// Goal: a snapshot file received from another store is adopted under its own name once it
// validates; a damaged one is refused and nothing is adopted.
#[test]
fn a_received_snapshot_is_validated_then_adopted() {
    let from = tempfile::tempdir().expect("temp dir");
    let source = SnapshotStore::open(from.path()).expect("open");
    let bytes = data(9, 50_000);
    let info = source.write(Lsn(77), &bytes).expect("write");
    assert_eq!(source.path_of(Lsn(77)), info.path);
    let to = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::open(to.path()).expect("open");

    let damaged = to.path().join("received.tmp");
    let mut raw = fs::read(&info.path).expect("read");
    let last = raw.len() - 1;
    raw[last] ^= 1;
    fs::write(&damaged, &raw).expect("write");
    assert!(store.import(&damaged).is_err(), "a damaged file is refused");
    assert_eq!(store.load_latest().expect("load"), None);

    let received = to.path().join("received2.tmp");
    fs::copy(&info.path, &received).expect("copy");
    let adopted = store.import(&received).expect("import");
    assert_eq!(adopted.lsn, Lsn(77));
    assert!(!received.exists(), "renamed into place");
    let loaded = store.load_latest().expect("load").expect("a snapshot");
    assert_eq!(loaded.lsn, Lsn(77));
    assert!(loaded.data == bytes);
}

// Goal: a snapshot file copied anywhere (a backup) reads back with its position and bytes; a
// copy with one flipped byte or cut short is refused as corrupt.
#[test]
fn a_snapshot_file_anywhere_is_validated_when_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::open(dir.path().join("snapshots")).expect("open");
    let bytes = data(7, 50_000);
    let info = store.write(Lsn(9), &bytes).expect("write");
    let backup = dir.path().join("backup.snap");
    fs::copy(&info.path, &backup).expect("copy");
    let read = majordodo_log::read_snapshot_file(&backup).expect("a valid backup");
    assert_eq!(read.lsn, Lsn(9));
    assert!(read.data == bytes);
    let mut damaged = fs::read(&backup).expect("read");
    let at = damaged.len() - 10;
    damaged[at] ^= 0x40;
    fs::write(&backup, &damaged).expect("write");
    let e = majordodo_log::read_snapshot_file(&backup).expect_err("a flipped byte");
    assert!(e.to_string().contains("checksum"), "{e}");
    damaged.truncate(damaged.len() / 2);
    fs::write(&backup, &damaged).expect("write");
    let e = majordodo_log::read_snapshot_file(&backup).expect_err("cut short");
    assert!(e.to_string().contains("corrupt"), "{e}");
}
