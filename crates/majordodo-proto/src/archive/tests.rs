use majordodo_testkit::archives::{self, Item, executable, file};
use proptest::prelude::*;

use super::*;

fn small() -> ArchiveLimits {
    ArchiveLimits {
        max_files: 5,
        max_unpacked_bytes: 1_000,
    }
}

fn both(items: &[Item]) -> [(&'static str, Vec<u8>); 2] {
    [
        ("zip", archives::zip(items)),
        ("tar.gz", archives::tar_gz(items)),
    ]
}

#[test]
fn plain_archives_are_walked_in_order_with_their_kinds() {
    // Goal: files and directories of a zip and a tar.gz come out with checked paths, their
    // executable bit and their content; `./` prefixes are dropped.
    let items = [
        Item::Dir("bin/".into()),
        executable("bin/run", b"#!/bin/sh\necho hi\n"),
        file("./lib/data.txt", b"data"),
    ];
    for (format, bytes) in both(&items) {
        let mut seen = Vec::new();
        let summary = walk(&bytes, small(), |e, r| {
            let mut content = Vec::new();
            r.read_to_end(&mut content)?;
            seen.push((e.path.clone(), e.kind, content));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(summary.entries, 3, "{format}");
        assert_eq!(summary.bytes, 22, "{format}");
        assert_eq!(seen[0].1, EntryKind::Dir, "{format}");
        assert_eq!(seen[1].0, PathBuf::from("bin/run"));
        assert_eq!(seen[1].1, EntryKind::File { executable: true }, "{format}");
        assert_eq!(seen[2].0, PathBuf::from("lib/data.txt"));
        assert_eq!(seen[2].1, EntryKind::File { executable: false }, "{format}");
        assert_eq!(seen[2].2, b"data");
    }
}

#[test]
fn escaping_paths_are_refused() {
    // Goal: `..` anywhere, absolute paths, drive prefixes and backslashes are refused in both
    // formats, naming the entry.
    for name in [
        "../evil",
        "a/../../evil",
        "a/..",
        "/etc/passwd",
        "C:/evil",
        "a\\..\\evil",
    ] {
        for (format, bytes) in both(&[file("ok", b"x"), file(name, b"x")]) {
            match validate(&bytes, small()) {
                Err(ArchiveError::UnsafePath { path, .. }) => {
                    assert_eq!(path, name, "{format}")
                }
                other => panic!("{format} {name}: {other:?}"),
            }
        }
    }
}

#[test]
fn links_are_refused_whether_they_point_out_or_in() {
    // Goal: symbolic links (out of the pool or inside it) and hard links are refused.
    for item in [
        Item::Symlink("out".into(), "/etc/passwd".into()),
        Item::Symlink("up".into(), "../../x".into()),
        Item::Symlink("in".into(), "ok".into()),
        Item::HardLink("hard".into(), "/etc/shadow".into()),
    ] {
        for (format, bytes) in both(&[file("ok", b"x"), item.clone()]) {
            assert!(
                matches!(
                    validate(&bytes, small()),
                    Err(ArchiveError::NotPlain { .. })
                ),
                "{format} {item:?}"
            );
        }
    }
}

#[test]
fn limits_are_enforced_on_decompressed_bytes_and_entry_count() {
    // Goal: a zip bomb (tiny archive, large content) and a tar.gz of too much content are
    // refused on the bytes actually decompressed; one entry over the count limit is refused;
    // exactly at the limits passes.
    let bomb = archives::zip_bomb(10_000_000);
    assert!(bomb.len() < 20_000, "the bomb is small: {}", bomb.len());
    assert!(matches!(
        validate(&bomb, small()),
        Err(ArchiveError::TooLarge { max: 1_000 })
    ));
    let big = archives::tar_gz(&[file("zeros", &vec![0; 5_000])]);
    assert!(matches!(
        validate(&big, small()),
        Err(ArchiveError::TooLarge { .. })
    ));
    let exact = archives::zip(&[file("a", &[1; 1_000])]);
    assert_eq!(validate(&exact, small()).unwrap().bytes, 1_000);
    let five: Vec<Item> = (0..5).map(|i| file(&format!("f{i}"), b"x")).collect();
    let six: Vec<Item> = (0..6).map(|i| file(&format!("f{i}"), b"x")).collect();
    for (format, bytes) in both(&five) {
        assert!(validate(&bytes, small()).is_ok(), "{format}");
    }
    for (format, bytes) in both(&six) {
        assert!(
            matches!(
                validate(&bytes, small()),
                Err(ArchiveError::TooManyFiles { max: 5 })
            ),
            "{format}"
        );
    }
}

#[test]
fn duplicates_and_paths_below_files_are_refused() {
    // Goal: a path listed twice, or a path whose parent is a file, is refused.
    // (zip writers refuse to write a name twice, so that case is a tar.gz only.)
    let twice = archives::tar_gz(&[file("a", b"1"), file("a", b"2")]);
    assert!(matches!(
        validate(&twice, small()),
        Err(ArchiveError::UnsafePath {
            reason: "listed twice",
            ..
        })
    ));
    for items in [
        vec![file("a", b"1"), file("a/b", b"2")],
        vec![file("a/b", b"1"), file("a", b"2")],
    ] {
        for (format, bytes) in both(&items) {
            assert!(
                matches!(
                    validate(&bytes, small()),
                    Err(ArchiveError::UnsafePath { .. })
                ),
                "{format} {items:?}"
            );
        }
    }
}

#[test]
fn garbage_is_not_an_archive() {
    // Goal: bytes of neither format, and damaged archives, are clear errors.
    assert!(matches!(
        validate(b"hello", small()),
        Err(ArchiveError::UnknownFormat)
    ));
    let mut zip = archives::zip(&[file("a", b"1")]);
    zip.truncate(zip.len() / 2);
    assert!(matches!(
        validate(&zip, small()),
        Err(ArchiveError::Malformed { format: "zip", .. })
    ));
    let mut tgz = archives::tar_gz(&[file("a", &[7; 600])]);
    tgz.truncate(tgz.len() / 2);
    assert!(validate(&tgz, small()).is_err());
}

#[test]
fn safe_path_keeps_normal_components_only() {
    // Goal: the path check itself: `.` and empty components vanish, the root is none.
    assert_eq!(safe_path("./a//b/").unwrap(), Some(PathBuf::from("a/b")));
    assert_eq!(safe_path("./").unwrap(), None);
    assert!(safe_path("a/../b").is_err());
    assert!(stays_inside(Path::new("a/b")));
    assert!(!stays_inside(Path::new("../b")));
    assert!(!stays_inside(Path::new("/b")));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), zip in any::<bool>()) {
        // Goal: outside data gives a summary or an error, never a panic, in both formats.
        if bytes.len() >= 4 {
            if zip {
                bytes[..4].copy_from_slice(b"PK\x03\x04");
            } else {
                bytes[..2].copy_from_slice(&[0x1f, 0x8b]);
            }
        }
        let _ = validate(&bytes, small());
    }

    #[test]
    fn every_accepted_path_stays_inside(name in "[a-z./\\\\:]{1,12}") {
        // Goal: whatever the name, an accepted path is relative with normal components only.
        if let Ok(Some(p)) = safe_path(&name) {
            prop_assert!(stays_inside(&p), "{name} -> {p:?}");
        }
    }
}
