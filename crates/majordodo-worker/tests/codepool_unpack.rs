//! Unpacking code pools on the worker with crafted malicious archives: nothing lands outside the
//! pools directory, nothing half-unpacked stays, and a good archive unpacks exactly.

use majordodo_proto::archive::ArchiveLimits;
use majordodo_testkit::archives::{self, Item, executable, file};
use majordodo_worker::unpack;

fn limits() -> ArchiveLimits {
    ArchiveLimits {
        max_files: 10,
        max_unpacked_bytes: 10_000,
    }
}

#[test]
fn a_good_archive_unpacks_atomically_with_its_modes() {
    // Goal: files, directories and the executable bit arrive; only the final directory remains.
    let root = tempfile::tempdir().unwrap();
    let pools = root.path().join("pools");
    let tgz = archives::tar_gz(&[
        Item::Dir("bin".into()),
        executable("bin/run", b"#!/bin/sh\n"),
        file("etc/conf", b"k=v"),
    ]);
    let dir = unpack(&tgz, &pools, "abc", limits()).unwrap();
    assert_eq!(dir, pools.join("abc"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("bin/run"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    assert_eq!(std::fs::read(dir.join("etc/conf")).unwrap(), b"k=v");
    assert_eq!(std::fs::read_dir(&pools).unwrap().count(), 1);
    // Unpacking it again (a concurrent download) keeps the first copy and leaves nothing else.
    unpack(&tgz, &pools, "abc", limits()).unwrap();
    assert_eq!(std::fs::read_dir(&pools).unwrap().count(), 1);
}

#[test]
fn malicious_archives_write_nothing_outside_and_leave_nothing_behind() {
    // Goal: `..`, absolute paths, links out, a zip bomb and too many files are refused by the
    // worker itself (whatever the broker checked); no file appears next to the pools directory,
    // no pool directory and no temporary directory remains.
    let root = tempfile::tempdir().unwrap();
    let pools = root.path().join("pools");
    let many: Vec<Item> = (0..11).map(|i| file(&format!("f{i}"), b"x")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            archives::tar_gz(&[file("ok", b"1"), file("../escaped", b"x")]),
        ),
        (
            "deep dot-dot",
            archives::zip(&[file("a/../../escaped", b"x")]),
        ),
        (
            "absolute",
            archives::tar_gz(&[file("/tmp/escaped-by-test", b"x")]),
        ),
        (
            "symlink out",
            archives::tar_gz(&[
                Item::Symlink("link".into(), "..".into()),
                file("link/escaped", b"x"),
            ]),
        ),
        (
            "hard link",
            archives::tar_gz(&[Item::HardLink("h".into(), "/etc/passwd".into())]),
        ),
        (
            "zip symlink",
            archives::zip(&[Item::Symlink("link".into(), "/etc".into())]),
        ),
        ("zip bomb", archives::zip_bomb(1_000_000)),
        ("too many files", archives::zip(&many)),
    ];
    for (name, bytes) in cases {
        let err = unpack(&bytes, &pools, "p", limits()).unwrap_err();
        assert!(!err.is_empty(), "{name}");
        assert!(!root.path().join("escaped").exists(), "{name}");
        assert!(
            !std::path::Path::new("/tmp/escaped-by-test").exists(),
            "{name}"
        );
        let left: Vec<_> = std::fs::read_dir(&pools).unwrap().collect();
        assert!(left.is_empty(), "{name} left {left:?}");
    }
}
