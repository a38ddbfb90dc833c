//! Zip and tar.gz archives for code-pool tests, including ones no honest tool writes: paths
//! with `..` or a leading `/`, links pointing out, and bombs that expand far beyond their size.
//!
//! Names are written as given, byte for byte (the tar headers are filled by hand, since the
//! `tar` crate's own path setters refuse `..`).

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;

/// One entry of an archive to build.
#[derive(Clone, Debug)]
pub enum Item {
    /// A file with its content and Unix mode.
    File(String, Vec<u8>, u32),
    /// A directory.
    Dir(String),
    /// A symbolic link to `target`.
    Symlink(String, String),
    /// A hard link to `target` (tar only; a zip has none, it is written as a symlink).
    HardLink(String, String),
}

/// A plain file with mode 0644.
pub fn file(name: &str, content: &[u8]) -> Item {
    Item::File(name.to_owned(), content.to_vec(), 0o644)
}

/// An executable file (mode 0755).
pub fn executable(name: &str, content: &[u8]) -> Item {
    Item::File(name.to_owned(), content.to_vec(), 0o755)
}

/// A zip of `items`, deflated.
///
/// # Panics
/// If the zip writer fails (it writes to memory).
pub fn zip(items: &[Item]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for item in items {
        match item {
            Item::File(name, content, mode) => {
                w.start_file(name.as_str(), options.unix_permissions(*mode))
                    .expect("start zip file");
                w.write_all(content).expect("write zip file");
            }
            Item::Dir(name) => w.add_directory(name.as_str(), options).expect("zip dir"),
            Item::Symlink(name, target) | Item::HardLink(name, target) => w
                .add_symlink(name.as_str(), target.as_str(), options)
                .expect("zip symlink"),
        }
    }
    w.finish().expect("finish zip").into_inner()
}

/// A zip holding one file of `len` zero bytes: tiny compressed, `len` bytes unpacked.
pub fn zip_bomb(len: usize) -> Vec<u8> {
    zip(&[file("zeros", &vec![0; len])])
}

/// A tar.gz of `items`, names written verbatim.
///
/// # Panics
/// If the tar writer fails (it writes to memory) or a name is longer than 100 bytes.
pub fn tar_gz(items: &[Item]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for item in items {
        let mut h = tar::Header::new_old();
        let (name, data, mode, kind, link): (&str, &[u8], u32, tar::EntryType, Option<&str>) =
            match item {
                Item::File(n, c, m) => (n, c, *m, tar::EntryType::Regular, None),
                Item::Dir(n) => (n, &[], 0o755, tar::EntryType::Directory, None),
                Item::Symlink(n, t) => (n, &[], 0o777, tar::EntryType::Symlink, Some(t)),
                Item::HardLink(n, t) => (n, &[], 0o644, tar::EntryType::Link, Some(t)),
            };
        let raw = name.as_bytes();
        assert!(raw.len() <= 100, "name too long for this builder: {name}");
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        if let Some(t) = link {
            let t = t.as_bytes();
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        }
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_entry_type(kind);
        h.set_cksum();
        b.append(&h, data).expect("append tar entry");
    }
    b.into_inner()
        .expect("finish tar")
        .finish()
        .expect("finish gzip")
}
