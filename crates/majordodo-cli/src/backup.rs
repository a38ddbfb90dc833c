//! `majordodo backup` and `majordodo restore`: a snapshot of the whole state downloaded from the
//! leader into a file, and a data directory made from such a file for a broker to boot from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use majordodo_core::DefaultGroupMapper;
use majordodo_log::vfs::{Fs, RealFs};
use majordodo_log::{FileLog, SnapshotStore, read_snapshot_file};

use crate::cli::{BackupArgs, RestoreArgs};
use crate::client::Api;
use crate::error::usage;
use crate::server::{LOG_DIR, SNAPSHOTS_DIR};

/// What a snapshot file holds, once read and decoded by this build.
struct Checked {
    lsn: u64,
    tasks: usize,
}

/// Reads `path` as a snapshot and decodes its state, as a broker booting from it would.
fn check(path: &Path) -> anyhow::Result<Checked> {
    let snapshot = read_snapshot_file(path)?;
    let state =
        majordodo_proto::snapshot::decode_snapshot(&snapshot.data, Arc::new(DefaultGroupMapper))
            .with_context(|| {
                format!(
                    "decode the state in {} (a snapshot of another version?)",
                    path.display()
                )
            })?;
    Ok(Checked {
        lsn: snapshot.lsn.0,
        tasks: state.task_count(),
    })
}

/// `<output>.part`, where a download goes before it is checked.
fn partial(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// `majordodo backup --output FILE`.
pub(crate) async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let output = args.output;
    if output.exists() {
        return Err(usage(format!(
            "--output {}: the file exists; choose another name or remove it",
            output.display()
        )));
    }
    let api = Api::new(&args.client)?;
    let part = partial(&output);
    // Private: a backup holds every task's data and the workers' credentials.
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&part)
        .await
        .with_context(|| {
            format!(
                "create {} (a backup still running, or left over? remove it)",
                part.display()
            )
        })?;
    let downloaded = api.client.download_snapshot(&mut file).await;
    let finished = async {
        let lsn = downloaded.map_err(|e| {
            crate::client::explain(e, "download a snapshot (admin only)", &api.url())
        })?;
        file.sync_all()
            .await
            .with_context(|| format!("fsync {}", part.display()))?;
        drop(file);
        let part_for_check = part.clone();
        let checked = tokio::task::spawn_blocking(move || check(&part_for_check))
            .await
            .map_err(|e| anyhow!("check the download: {e}"))??;
        if checked.lsn != lsn {
            return Err(anyhow!(
                "the broker announced a snapshot at lsn {lsn} and sent one at lsn {}",
                checked.lsn
            ));
        }
        std::fs::rename(&part, &output)
            .with_context(|| format!("rename {} to {}", part.display(), output.display()))?;
        sync_parent(&output)?;
        Ok::<Checked, anyhow::Error>(checked)
    }
    .await;
    let checked = match finished {
        Ok(checked) => checked,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup of {} at lsn {}: {} tasks, {} bytes, written to {}",
        api.url(),
        checked.lsn,
        checked.tasks,
        bytes,
        output.display()
    );
    println!(
        "restore it into an empty data directory with: majordodo restore --from {} --data-dir DIR",
        output.display()
    );
    Ok(())
}

/// Makes the directory entry of `path` durable.
fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    RealFs
        .sync_dir(parent)
        .with_context(|| format!("fsync directory {}", parent.display()))
}

/// The first entry of `dir` other than the log's lock file, if any (a missing `dir` is empty).
fn holds_files(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.with_context(|| format!("list {}", dir.display()))?;
                if entry.file_name() != "LOCK" {
                    return Ok(Some(entry.path()));
                }
            }
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("list {}", dir.display())),
    }
}

/// `majordodo restore --from FILE --data-dir DIR`.
pub(crate) fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let (from, data_dir) = (args.from, args.data_dir);
    let log_dir = data_dir.join(LOG_DIR);
    let snapshots_dir = data_dir.join(SNAPSHOTS_DIR);
    for dir in [&log_dir, &snapshots_dir] {
        if let Some(found) = holds_files(dir)? {
            return Err(usage(format!(
                "--data-dir {}: it already holds a broker's data ({}); restore into a new, \
                 empty directory (a broker's data is never overwritten)",
                data_dir.display(),
                found.display()
            )));
        }
    }
    // Everything is checked before anything is written: a file that does not validate or
    // decode leaves no trace.
    let checked = check(&from).with_context(|| format!("read the backup {}", from.display()))?;
    let store = SnapshotStore::open(&snapshots_dir)
        .with_context(|| format!("open {}", snapshots_dir.display()))?;
    let received = snapshots_dir.join(format!("restore-{}.tmp", std::process::id()));
    std::fs::copy(&from, &received)
        .with_context(|| format!("copy {} to {}", from.display(), received.display()))?;
    let info = match store.import(&received) {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&received);
            return Err(e).context("adopt the snapshot");
        }
    };
    FileLog::create_after(&log_dir, info.lsn)
        .with_context(|| format!("prepare the log in {}", log_dir.display()))?;
    println!(
        "restored the snapshot at lsn {} ({} tasks) into {}",
        checked.lsn,
        checked.tasks,
        data_dir.display()
    );
    println!(
        "start a broker on it: majordodo standalone --data-dir {0} (or majordodo broker --data-dir {0})",
        data_dir.display()
    );
    Ok(())
}
