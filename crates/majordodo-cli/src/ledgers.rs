//! `majordodo ledgers`: the BookKeeper ledgers that hold a replicated cluster's log, as the
//! ledger list in ZooKeeper names them, each with its state in BookKeeper; and, given a
//! broker's snapshot directory, which positions each snapshot covers and which ledgers a broker
//! booting from it needs.
//!
//! Nothing is changed: the list is read from ZooKeeper, ledgers are opened without recovery
//! (their writer is not fenced), snapshot files are only read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use bookkeeper_client::{BkError, BookKeeper, ClientConfig, LedgerState, OpenMode};
use majordodo_log::{SnapshotCheck, inspect_snapshots};
use majordodo_proto::cluster::{LedgersInfo, decode_ledger_entry};
use serde_json::{Value, json};

use crate::cli::LedgersArgs;
use crate::config::read_small_file;
use crate::discovery::{ClusterZk, check_znode_path};
use crate::error::usage;
use crate::output::{Table, escape};
use crate::units::Timestamp;

/// Longest the BookKeeper client may take to connect (ZooKeeper answered already).
const BOOKKEEPER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest reading one ledger's state may take: a ledger whose bookies are all down is shown
/// with the problem instead of holding the listing up.
const LEDGER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Custom metadata key naming the broker that created a ledger (`majordodo-cluster`'s).
const BROKER_ID_KEY: &str = "broker-id";

/// One listed ledger as BookKeeper describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LedgerRow {
    pub(crate) id: i64,
    /// When it was created (from the ledger list), ms since the epoch.
    pub(crate) created: i64,
    /// Position of its first record (from the ledger list).
    pub(crate) first_lsn: u64,
    /// `open`, `in recovery` or `closed`; `None` when its metadata could not be read.
    pub(crate) state: Option<&'static str>,
    /// Its last entry: the final one of a closed ledger, the last-add-confirmed of an open one
    /// (-1: empty).
    pub(crate) last_entry: Option<i64>,
    /// Position of its last record; `None` when empty or unknown.
    pub(crate) last_lsn: Option<u64>,
    /// The broker that created it.
    pub(crate) writer: Option<String>,
    /// Why something is unknown.
    pub(crate) problem: Option<String>,
}

/// Runs `majordodo ledgers`.
pub(crate) async fn run(args: LedgersArgs) -> anyhow::Result<()> {
    check_znode_path("--ledgers-root", &args.ledgers_root)?;
    let snapshots =
        match &args.snapshots {
            Some(dir) => Some(inspect_snapshots(dir).with_context(|| {
                format!("read the snapshots in {} (--snapshots)", dir.display())
            })?),
            None => None,
        };
    let password = read_password(args.ledger_password_file.as_deref())?;
    let cluster = ClusterZk::connect(&args.zk, &args.zk_path).await?;
    let Some((info, version)) = cluster.ledgers().await? else {
        return Err(anyhow!(
            "there is no ledger list at {}/ledgers in ZooKeeper {}: no broker of a cluster ever \
             ran with this --zk and --zk-path",
            cluster.base(),
            cluster.connect_string()
        ));
    };
    let rows = if info.active_ledgers.is_empty() {
        Vec::new()
    } else {
        let bk = connect_bookkeeper(&args.zk, &args.ledgers_root).await?;
        let mut rows = Vec::with_capacity(info.active_ledgers.len());
        for (id, created, first_lsn) in info.ledgers() {
            rows.push(describe_ledger(&bk, &password, id, created, first_lsn).await);
        }
        rows
    };
    let boot = snapshots.as_ref().map(|s| boot_plan(&info, &rows, s));
    if args.json {
        let value = json!({
            "zk": cluster.connect_string(),
            "zkPath": cluster.base(),
            "version": version,
            "firstLedger": info.first_ledger,
            "fullHistory": info.has_full_history(),
            "ledgers": rows.iter().map(ledger_json).collect::<Vec<_>>(),
            "snapshots": boot.as_ref().map(|b| b.json()),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "ledger list {}/ledgers in ZooKeeper {} (znode version {version})",
        cluster.base(),
        cluster.connect_string()
    );
    if rows.is_empty() {
        println!("no ledger listed: the cluster has written nothing yet");
    } else {
        print!("{}", ledgers_table(&rows));
    }
    println!("{}", history_line(&info));
    if let (Some(boot), Some(dir)) = (&boot, &args.snapshots) {
        print!("{}", boot.text(dir));
    }
    Ok(())
}

/// The ledgers' password from `--ledger-password-file` (empty without it, as the broker's).
///
/// # Errors
/// A usage error naming the flag when the file cannot be read.
pub(crate) fn read_password(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let Some(path) = file else {
        return Ok(Vec::new());
    };
    let text = read_small_file(path).map_err(|e| {
        usage(format!(
            "--ledger-password-file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
}

/// A BookKeeper client of the cluster in ZooKeeper `zk` with metadata under `ledgers_root`.
///
/// # Errors
/// When BookKeeper's metadata cannot be reached.
pub(crate) async fn connect_bookkeeper(zk: &str, ledgers_root: &str) -> anyhow::Result<BookKeeper> {
    let config = ClientConfig::new(zk).with_ledgers_root(ledgers_root);
    tokio::time::timeout(BOOKKEEPER_CONNECT_TIMEOUT, BookKeeper::connect(config))
        .await
        .map_err(|_| anyhow!("connect to BookKeeper at {zk}: no answer in time"))?
        .with_context(|| {
            format!(
                "connect to BookKeeper's metadata at {ledgers_root} in ZooKeeper {zk} (check --zk \
                 and --ledgers-root)"
            )
        })
}

/// What a BookKeeper error means to someone looking at ledgers.
pub(crate) fn explain_bk(error: &BkError) -> String {
    match error {
        BkError::NoSuchLedger { .. } => "missing from BookKeeper (deleted?)".to_owned(),
        BkError::Unauthorized { .. } => "wrong ledger password (--ledger-password-file)".to_owned(),
        other => other.to_string(),
    }
}

async fn describe_ledger(
    bk: &BookKeeper,
    password: &[u8],
    id: i64,
    created: i64,
    first_lsn: u64,
) -> LedgerRow {
    let mut row = LedgerRow {
        id,
        created,
        first_lsn,
        state: None,
        last_entry: None,
        last_lsn: None,
        writer: None,
        problem: None,
    };
    let read = async {
        let metadata = bk.ledger_metadata(id).await?;
        row.state = Some(match metadata.state {
            LedgerState::Open => "open",
            LedgerState::InRecovery => "in recovery",
            LedgerState::Closed => "closed",
        });
        row.writer = metadata
            .custom_metadata
            .get(BROKER_ID_KEY)
            .map(|id| String::from_utf8_lossy(id).into_owned());
        let reader = bk.open_ledger(id, password, OpenMode::NoRecovery).await?;
        let last = reader.last_add_confirmed();
        row.last_entry = Some(last);
        if last >= 0 {
            let entries = reader.read(last..=last).await?;
            match entries.first().map(|e| decode_ledger_entry(&e.data)) {
                Some(Ok(entry)) => row.last_lsn = Some(entry.last_lsn()),
                Some(Err(e)) => row.problem = Some(format!("entry {last}: {e}")),
                None => row.problem = Some(format!("entry {last} missing")),
            }
        }
        Ok::<(), BkError>(())
    };
    match tokio::time::timeout(LEDGER_READ_TIMEOUT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => row.problem = Some(explain_bk(&e)),
        Err(_) => row.problem = Some("no answer from its bookies in time".to_owned()),
    }
    row
}

fn ledgers_table(rows: &[LedgerRow]) -> String {
    let mut table = Table::new(vec![
        "LEDGER",
        "CREATED",
        "FIRST LSN",
        "STATE",
        "LAST ENTRY",
        "LAST LSN",
        "WRITER",
        "NOTE",
    ]);
    for r in rows {
        table.row(vec![
            r.id.to_string(),
            Timestamp(r.created).to_string(),
            r.first_lsn.to_string(),
            r.state.unwrap_or("?").to_owned(),
            match r.last_entry {
                Some(-1) => "none".to_owned(),
                Some(n) => n.to_string(),
                None => "?".to_owned(),
            },
            match (r.last_entry, r.last_lsn) {
                (Some(-1), _) => "-".to_owned(),
                (_, Some(lsn)) => lsn.to_string(),
                _ => "?".to_owned(),
            },
            escape(r.writer.as_deref().unwrap_or("-")),
            escape(r.problem.as_deref().unwrap_or("")),
        ]);
    }
    table.render()
}

fn ledger_json(r: &LedgerRow) -> Value {
    json!({
        "id": r.id,
        "created": r.created,
        "firstLsn": r.first_lsn,
        "state": r.state,
        "lastEntry": r.last_entry,
        "lastLsn": r.last_lsn,
        "writer": r.writer,
        "problem": r.problem,
    })
}

/// Whether the whole history is still listed.
fn history_line(info: &LedgersInfo) -> String {
    if info.first_ledger < 0 {
        "firstLedger: none yet".to_owned()
    } else if info.has_full_history() {
        format!(
            "firstLedger: {}, still listed: the ledgers hold the whole history (a broker can \
             boot without a snapshot)",
            info.first_ledger
        )
    } else {
        format!(
            "firstLedger: {}, dropped: the history before lsn {} is only in snapshots",
            info.first_ledger,
            info.first_lsn()
        )
    }
}

/// One snapshot and what booting from it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotUse {
    pub(crate) lsn: u64,
    pub(crate) path: PathBuf,
    /// Why it is not valid.
    pub(crate) invalid: Option<String>,
    /// The ledgers holding the positions after it (replayed at boot), when the list still
    /// holds them.
    pub(crate) needs: Option<Vec<i64>>,
    /// Set when it is ahead of the end of the ledgers: from another cluster or history.
    pub(crate) ahead_of: Option<u64>,
}

/// What a broker booting with the snapshot directory does (the broker's own rule: the newest
/// valid snapshot if the ledgers continue it, else a snapshot from the leader, else the empty
/// state when the whole history is listed, else nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootPlan {
    pub(crate) snapshots: Vec<SnapshotUse>,
    /// The position the listed ledgers start at.
    pub(crate) first_lsn: u64,
    pub(crate) full_history: bool,
    /// Every listed ledger, in order.
    pub(crate) all_ledgers: Vec<i64>,
}

/// Which ledgers hold the positions after `lsn`: from the one holding `lsn + 1` to the last;
/// `None` when the list starts after it (released).
pub(crate) fn ledgers_after(info: &LedgersInfo, lsn: u64) -> Option<Vec<i64>> {
    let ledgers: Vec<(i64, i64, u64)> = info.ledgers().collect();
    if ledgers.is_empty() {
        return Some(Vec::new());
    }
    let next = lsn + 1;
    if next < ledgers[0].2 {
        return None;
    }
    let start = ledgers
        .iter()
        .rposition(|(_, _, first)| *first <= next)
        .expect("the first ledger starts at or before next");
    Some(ledgers[start..].iter().map(|(id, _, _)| *id).collect())
}

pub(crate) fn boot_plan(
    info: &LedgersInfo,
    rows: &[LedgerRow],
    found: &[SnapshotCheck],
) -> BootPlan {
    // The end of the log, when the last ledger's last position is known (an empty last
    // ledger ends where it would start).
    let end = rows.last().and_then(|r| match (r.last_entry, r.last_lsn) {
        (Some(-1), _) => Some(r.first_lsn - 1),
        (_, lsn) => lsn,
    });
    let snapshots = found
        .iter()
        .map(|s| SnapshotUse {
            lsn: s.lsn.0,
            path: s.path.clone(),
            invalid: s.validity.clone().err(),
            needs: ledgers_after(info, s.lsn.0),
            ahead_of: end.filter(|end| s.lsn.0 > *end),
        })
        .collect();
    BootPlan {
        snapshots,
        first_lsn: info.first_lsn(),
        full_history: info.has_full_history(),
        all_ledgers: info.active_ledgers.clone(),
    }
}

fn ledger_list(ids: &[i64]) -> String {
    match ids {
        [] => "no ledger".to_owned(),
        [one] => format!("ledger {one}"),
        many => format!(
            "ledgers {}",
            many.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl BootPlan {
    /// The sentence saying how a broker with this directory boots.
    pub(crate) fn verdict(&self) -> String {
        let newest = self.snapshots.iter().find(|s| s.invalid.is_none());
        match newest {
            Some(s) if s.ahead_of.is_some() => format!(
                "a broker booting with it starts from snapshot {}, which is ahead of the end of \
                 the ledgers (lsn {}): it was taken in another cluster or history, and the \
                 broker would not follow this log",
                s.lsn,
                s.ahead_of.unwrap_or_default()
            ),
            Some(s) if s.needs.is_some() => {
                let needs = s.needs.clone().unwrap_or_default();
                if needs.is_empty() {
                    format!(
                        "a broker booting with it starts from snapshot {} (no ledger to replay)",
                        s.lsn
                    )
                } else {
                    format!(
                        "a broker booting with it starts from snapshot {} and replays {} from lsn {}",
                        s.lsn,
                        ledger_list(&needs),
                        s.lsn + 1
                    )
                }
            }
            _ => {
                let why = match newest {
                    Some(s) => format!(
                        "its newest valid snapshot ({}) is older than the ledgers, which start at \
                         lsn {}",
                        s.lsn, self.first_lsn
                    ),
                    None => "it holds no valid snapshot".to_owned(),
                };
                let then = if self.full_history {
                    format!(
                        "it downloads a snapshot from the leader (with cluster.peer_token_file), \
                         else starts from the empty state and replays {}",
                        ledger_list(&self.all_ledgers)
                    )
                } else {
                    "it downloads a snapshot from the leader (with cluster.peer_token_file), \
                     else it cannot boot: copy a recent snapshot from another broker"
                        .to_owned()
                };
                format!("{why}: a broker booting with it {then}")
            }
        }
    }

    fn text(&self, dir: &Path) -> String {
        let mut out = format!("snapshots in {}:\n", dir.display());
        if self.snapshots.is_empty() {
            out.push_str("none\n");
        } else {
            let mut table = Table::new(vec!["SNAPSHOT", "COVERS", "STATE", "NEEDS"]);
            for s in &self.snapshots {
                let state = match &s.invalid {
                    Some(why) => format!("damaged: {}", escape(why)),
                    None => "valid".to_owned(),
                };
                let needs = match (&s.needs, s.ahead_of) {
                    (_, Some(end)) => format!("none: ahead of the ledgers (they end at lsn {end})"),
                    (Some(ids), _) if ids.is_empty() => "no ledger".to_owned(),
                    (Some(ids), _) => format!("{} from lsn {}", ledger_list(ids), s.lsn + 1),
                    (None, _) => format!(
                        "released: the ledgers start at lsn {}, after {}",
                        self.first_lsn,
                        s.lsn + 1
                    ),
                };
                table.row(vec![
                    s.path
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    if s.lsn == 0 {
                        "nothing (taken before the first record)".to_owned()
                    } else {
                        format!("lsn 1 to {}", s.lsn)
                    },
                    state,
                    needs,
                ]);
            }
            out.push_str(&table.render());
        }
        out.push_str(&self.verdict());
        out.push('\n');
        out
    }

    fn json(&self) -> Value {
        json!({
            "snapshots": self.snapshots.iter().map(|s| json!({
                "lsn": s.lsn,
                "file": s.path.display().to_string(),
                "valid": s.invalid.is_none(),
                "problem": s.invalid,
                "needsLedgers": s.needs,
                "aheadOfLedgersEnd": s.ahead_of,
            })).collect::<Vec<_>>(),
            "boot": self.verdict(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordodo_log::Lsn;

    fn list() -> LedgersInfo {
        let mut info = LedgersInfo::empty();
        info.push(3, 1000, 1);
        info.push(7, 2000, 41);
        info.push(9, 3000, 80);
        info
    }

    fn check(lsn: u64, valid: bool) -> SnapshotCheck {
        SnapshotCheck {
            lsn: Lsn(lsn),
            path: PathBuf::from(format!("snapshot-{lsn}.snap")),
            file_len: 100,
            validity: if valid {
                Ok(())
            } else {
                Err("body checksum mismatch".into())
            },
        }
    }

    #[test]
    fn a_snapshot_needs_the_ledger_holding_the_next_position_and_the_later_ones() {
        // Goal: the ledgers replayed after a snapshot start with the one holding lsn + 1.
        let info = list();
        assert_eq!(ledgers_after(&info, 0), Some(vec![3, 7, 9]));
        assert_eq!(ledgers_after(&info, 40), Some(vec![7, 9]));
        assert_eq!(ledgers_after(&info, 50), Some(vec![7, 9]));
        assert_eq!(ledgers_after(&info, 79), Some(vec![9]));
        let mut dropped = list();
        dropped.drop_oldest(1);
        assert_eq!(ledgers_after(&dropped, 39), None);
        assert_eq!(ledgers_after(&dropped, 40), Some(vec![7, 9]));
    }

    #[test]
    fn the_boot_verdict_follows_the_brokers_rule() {
        // Goal: newest valid snapshot if the ledgers continue it; else the leader's snapshot,
        // the empty state with the whole history, or no boot at all.
        let info = list();
        let plan = boot_plan(&info, &[], &[check(60, false), check(45, true)]);
        assert_eq!(
            plan.verdict(),
            "a broker booting with it starts from snapshot 45 and replays ledgers 7, 9 from lsn 46"
        );
        let mut dropped = list();
        dropped.drop_oldest(2);
        let plan = boot_plan(&dropped, &[], &[check(45, true)]);
        assert!(
            plan.verdict()
                .contains("older than the ledgers, which start at lsn 80")
        );
        assert!(plan.verdict().contains("cannot boot"));
        let plan = boot_plan(&info, &[], &[]);
        assert!(
            plan.verdict()
                .contains("empty state and replays ledgers 3, 7, 9")
        );
        let last = LedgerRow {
            id: 9,
            created: 3000,
            first_lsn: 80,
            state: Some("open"),
            last_entry: Some(4),
            last_lsn: Some(90),
            writer: None,
            problem: None,
        };
        let plan = boot_plan(&info, &[last], &[check(500, true)]);
        assert!(
            plan.verdict()
                .contains("ahead of the end of the ledgers (lsn 90)")
        );
    }
}
