//! `majordodo dump-log`: the records of a commit log, one line each (position, entry kind, key
//! fields), or JSON Lines; from a file log directory or from one BookKeeper ledger.
//!
//! Nothing is changed by reading: the file log is read with `majordodo_log::read` (no lock, no
//! cut of an unfinished write, unlike opening it), a ledger is opened without recovery (its
//! writer is not fenced). Records are decoded with `majordodo_proto::record::decode_entry`,
//! ledger entries with `majordodo_proto::cluster::decode_ledger_entry`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bookkeeper_client::{BkError, LedgerReader, LedgerState, OpenMode};
use bytes::Bytes;
use majordodo_core::{LogEntry, NewTask};
use majordodo_log::read::FileLogReader;
use majordodo_log::{LogError, Lsn};
use majordodo_proto::cluster::{LedgerEntry, decode_ledger_entry};
use majordodo_proto::record::decode_entry;
use serde_json::{Map, Value};

use crate::cli::DumpLogArgs;
use crate::error::usage;
use crate::ledgers::{connect_bookkeeper, explain_bk, read_password};
use crate::output::{clip, escape};
use crate::units::Timestamp;

/// Ledger entries read per request: a few MiB at most with the entries brokers write.
const LEDGER_READ_BATCH: i64 = 100;

/// Longest one read of a ledger may take before the dump gives up.
const LEDGER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Widest free-text value (data, result) on a text line, in characters; `--json` has it all.
const MAX_TEXT_VALUE: usize = 60;

/// Task ids listed on a text line of a purge before the rest are only counted.
const MAX_PURGED_SHOWN: usize = 10;

/// Where a record came from, for JSON Lines.
#[derive(Clone, Copy, Debug)]
struct Origin {
    /// Ledger id and entry id, for a ledger.
    ledger: Option<(i64, i64)>,
}

/// Runs `majordodo dump-log`.
pub(crate) async fn run(args: DumpLogArgs) -> anyhow::Result<()> {
    let from = Lsn(args.from.unwrap_or(1));
    let max = args.max.unwrap_or(u64::MAX);
    let mut out = Printer {
        json: args.json,
        printed: 0,
        undecodable: 0,
        stdout: std::io::stdout().lock(),
    };
    match (&args.dir, args.ledger) {
        (Some(dir), _) => {
            if args.ledger.is_some() {
                return Err(usage(
                    "--dir and --ledger: give one of them (a file log, or a ledger with --zk)",
                ));
            }
            dump_file_log(dir, from, max, &mut out)?;
        }
        (None, Some(ledger)) => {
            let Some(zk) = &args.zk else {
                return Err(usage(
                    "--ledger needs --zk (the cluster's ZooKeeper servers)",
                ));
            };
            crate::discovery::check_znode_path("--ledgers-root", &args.ledgers_root)?;
            let password = read_password(args.ledger_password_file.as_deref())?;
            // Fails fast, naming --zk, when ZooKeeper does not answer.
            drop(
                crate::discovery::ClusterZk::connect(zk, crate::config::cluster::DEFAULT_ZK_PATH)
                    .await?,
            );
            dump_ledger(
                zk,
                &args.ledgers_root,
                &password,
                ledger,
                from,
                max,
                &mut out,
            )
            .await?;
        }
        (None, None) => {
            return Err(usage(
                "nothing to read: give --dir <data dir>/log for a file log, or --zk and --ledger ID \
                 for a ledger of a cluster (`majordodo ledgers` lists them)",
            ));
        }
    }
    out.finish()
}

/// Prints records and counts what could not be decoded.
struct Printer<W: Write> {
    json: bool,
    printed: u64,
    undecodable: u64,
    stdout: W,
}

impl<W: Write> Printer<W> {
    fn record(&mut self, lsn: Lsn, bytes: &[u8], origin: Origin) -> anyhow::Result<()> {
        let line = match decode_entry(bytes) {
            Ok(entry) => render(lsn, entry.kind(), &fields(&entry), origin, self.json),
            Err(e) => {
                self.undecodable += 1;
                let fields = vec![
                    ("error", Value::from(e.to_string())),
                    ("bytes", Value::from(bytes.len())),
                ];
                render(lsn, "undecodable", &fields, origin, self.json)
            }
        };
        self.printed += 1;
        writeln!(self.stdout, "{line}").context("write to stdout")
    }

    /// Ends the dump: exit status 1 when a record could not be decoded.
    fn finish(mut self) -> anyhow::Result<()> {
        self.stdout.flush().context("write to stdout")?;
        if self.undecodable > 0 {
            return Err(anyhow!(
                "{} of the {} records shown could not be decoded (written by another version?)",
                self.undecodable,
                self.printed
            ));
        }
        Ok(())
    }
}

fn dump_file_log<W: Write>(
    dir: &Path,
    from: Lsn,
    max: u64,
    out: &mut Printer<W>,
) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Err(usage(format!(
            "--dir {}: not a directory (give the log directory, <data dir>/log)",
            dir.display()
        )));
    }
    let mut reader = FileLogReader::open(dir, from)
        .with_context(|| format!("read the log in {}", dir.display()))?;
    match reader.first_lsn() {
        None if dir.join("log").is_dir() => {
            return Err(usage(format!(
                "--dir {}: no log segments here; the log is in {}",
                dir.display(),
                dir.join("log").display()
            )));
        }
        None => {
            eprintln!("{}: no log segments", dir.display());
            return Ok(());
        }
        Some(first) if first > from && from > Lsn(1) => eprintln!(
            "note: the log starts at lsn {first} (older records were released after a snapshot)"
        ),
        Some(_) => {}
    }
    let origin = Origin { ledger: None };
    while out.printed < max {
        match reader.next_record() {
            Ok(Some((lsn, bytes))) => out.record(lsn, &bytes, origin)?,
            Ok(None) => break,
            Err(LogError::Corrupt {
                file,
                offset,
                reason,
            }) => {
                out.stdout.flush().context("write to stdout")?;
                return Err(anyhow!(
                    "the log stops being readable in {file} at offset {offset}: {reason}; an \
                     unfinished write of a crash (or of a broker writing right now) or damage: \
                     `majordodo log repair --dir {}` tells which (nothing was changed)",
                    dir.display()
                ));
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("read the log in {}", dir.display()))
                );
            }
        }
    }
    Ok(())
}

async fn dump_ledger<W: Write>(
    zk: &str,
    ledgers_root: &str,
    password: &[u8],
    ledger: i64,
    from: Lsn,
    max: u64,
    out: &mut Printer<W>,
) -> anyhow::Result<()> {
    let bk = connect_bookkeeper(zk, ledgers_root).await?;
    let reader = bounded(bk.open_ledger(ledger, password, OpenMode::NoRecovery))
        .await
        .map_err(|e| anyhow!("open ledger {ledger}: {e}"))?;
    let metadata = reader.metadata();
    let last = reader.last_add_confirmed();
    let state = match metadata.state {
        LedgerState::Open => "open: entries up to the last one its writer confirmed",
        LedgerState::InRecovery => "being recovered by a new leader",
        LedgerState::Closed => "closed",
    };
    eprintln!(
        "ledger {ledger}: {state}; {}",
        if last < 0 {
            "no entry".to_owned()
        } else {
            format!("entries 0 to {last}")
        }
    );
    if last < 0 {
        return Ok(());
    }
    let mut entry_id = if from > Lsn(1) {
        entry_holding(&reader, from.0, last).await?
    } else {
        0
    };
    while entry_id <= last && out.printed < max {
        let upto = last.min(entry_id + LEDGER_READ_BATCH - 1);
        let entries = bounded(reader.read(entry_id..=upto))
            .await
            .map_err(|e| anyhow!("read ledger {ledger} entries {entry_id} to {upto}: {e}"))?;
        for e in entries {
            let origin = Origin {
                ledger: Some((ledger, e.entry_id)),
            };
            let entry = decode_ledger_entry(&e.data).map_err(|error| {
                anyhow!(
                    "ledger {ledger} entry {} is not a log entry: {error}",
                    e.entry_id
                )
            })?;
            for (lsn, record) in records(&entry) {
                if lsn < from {
                    continue;
                }
                if out.printed >= max {
                    return Ok(());
                }
                out.record(lsn, &record, origin)?;
            }
        }
        entry_id = upto + 1;
    }
    Ok(())
}

/// `future` bounded by [`LEDGER_READ_TIMEOUT`], its error explained.
async fn bounded<T>(future: impl Future<Output = Result<T, BkError>>) -> Result<T, String> {
    match tokio::time::timeout(LEDGER_READ_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(explain_bk(&e)),
        Err(_) => Err(format!(
            "no answer from its bookies within {}s",
            LEDGER_READ_TIMEOUT.as_secs()
        )),
    }
}

/// The records of a ledger entry with their positions.
fn records(entry: &LedgerEntry) -> impl Iterator<Item = (Lsn, Bytes)> + '_ {
    entry
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (Lsn(entry.first_lsn + i as u64), r.clone()))
}

/// The id of the last entry of `0..=last` that starts at or before position `lsn` (entries
/// start at increasing positions), found by bisection.
async fn entry_holding(reader: &LedgerReader, lsn: u64, last: i64) -> anyhow::Result<i64> {
    let ledger = reader.ledger_id();
    let (mut low, mut high) = (0, last);
    while low < high {
        let middle = low + (high - low + 1) / 2;
        let entries = bounded(reader.read(middle..=middle))
            .await
            .map_err(|e| anyhow!("read ledger {ledger} entry {middle}: {e}"))?;
        let data = &entries
            .first()
            .ok_or_else(|| anyhow!("ledger {ledger} entry {middle} is missing"))?
            .data;
        let entry = decode_ledger_entry(data)
            .map_err(|e| anyhow!("ledger {ledger} entry {middle} is not a log entry: {e}"))?;
        if entry.first_lsn <= lsn {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    Ok(low)
}

/// The key fields of an entry, in the order they are shown. Times are ms since the epoch.
fn fields(entry: &LogEntry) -> Vec<(&'static str, Value)> {
    let mut f: Vec<(&'static str, Value)> = Vec::new();
    match entry {
        LogEntry::AddTask(task) => task_fields(&mut f, task),
        LogEntry::PrepareAddTask {
            transaction_id,
            task,
        } => {
            f.push(("transaction", transaction_id.0.into()));
            task_fields(&mut f, task);
        }
        LogEntry::SetServiceLevel {
            user_id,
            level,
            timestamp,
        } => {
            f.push(("user", user_id.as_str().into()));
            match level {
                Some(l) => {
                    f.push(("group", l.group.into()));
                    if !l.resources.is_empty() {
                        f.push(("resources", l.resources.join(",").into()));
                    }
                }
                None => f.push(("level", "default".into())),
            }
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::SetTaskPriority {
            task_id,
            priority,
            timestamp,
        } => {
            f.push(("task", task_id.0.into()));
            f.push(("priority", (*priority).into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::SetQuota {
            tenant,
            quota,
            timestamp,
        } => {
            match tenant {
                majordodo_core::quota::QuotaTenant::User(u) => f.push(("user", u.as_str().into())),
                majordodo_core::quota::QuotaTenant::Group(g) => f.push(("group", (*g).into())),
            }
            match quota {
                Some(q) => {
                    let text: Vec<String> = q.iter().map(|(d, n)| format!("{d}={n}")).collect();
                    f.push(("quota", text.join(",").into()));
                }
                None => f.push(("quota", "none".into())),
            }
            f.push(("at", (*timestamp).into()));
        }
        // The verifier is not shown: it is not needed to read the log.
        LogEntry::AddWorkerCredential {
            credential_id,
            worker_id,
            comment,
            timestamp,
            ..
        } => {
            f.push(("credential", credential_id.as_str().into()));
            f.push(("worker", worker_id.as_str().into()));
            if let Some(c) = comment {
                f.push(("comment", c.as_str().into()));
            }
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::RevokeWorkerCredential {
            credential_id,
            timestamp,
        } => {
            f.push(("credential", credential_id.as_str().into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::WorkerConnected {
            worker_id,
            location,
            process_id,
            timestamp,
        } => {
            f.push(("worker", worker_id.as_str().into()));
            f.push(("location", location.as_str().into()));
            f.push(("process", process_id.as_str().into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::AssignTask {
            task_id,
            worker_id,
            attempt,
            resources,
            timestamp,
        } => {
            f.push(("task", task_id.0.into()));
            f.push(("worker", worker_id.as_str().into()));
            f.push(("attempt", (*attempt).into()));
            if !resources.is_empty() {
                f.push(("resources", resources.join(",").into()));
            }
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::TaskStatusChange {
            task_id,
            status,
            attempt,
            worker_id,
            result,
            timestamp,
        } => {
            f.push(("task", task_id.0.into()));
            f.push(("status", status.as_str().into()));
            f.push(("attempt", (*attempt).into()));
            if let Some(worker) = worker_id {
                f.push(("worker", worker.as_str().into()));
            }
            f.push(("at", (*timestamp).into()));
            if let Some(result) = result {
                f.push(("result", result.as_str().into()));
            }
        }
        LogEntry::WorkerDisconnected {
            worker_id,
            timestamp,
        }
        | LogEntry::WorkerDied {
            worker_id,
            timestamp,
        } => {
            f.push(("worker", worker_id.as_str().into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::BeginTransaction {
            transaction_id,
            timestamp,
            owner,
        } => {
            f.push(("transaction", transaction_id.0.into()));
            if let Some(owner) = owner {
                f.push(("owner", owner.as_str().into()));
            }
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::CommitTransaction {
            transaction_id,
            timestamp,
        }
        | LogEntry::RollbackTransaction {
            transaction_id,
            timestamp,
        } => {
            f.push(("transaction", transaction_id.0.into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::Noop { timestamp } => f.push(("at", (*timestamp).into())),
        LogEntry::DeleteCodePool { id, timestamp } => {
            f.push(("pool", id.as_str().into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::CreateCodePool {
            id,
            timestamp,
            ttl,
            data,
        } => {
            f.push(("pool", id.as_str().into()));
            f.push(("ttl_ms", (*ttl).into()));
            f.push(("bytes", data.len().into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::BeginCodePool {
            id,
            timestamp,
            ttl,
            size,
            chunks,
            sha256,
        } => {
            f.push(("pool", id.as_str().into()));
            f.push(("ttl_ms", (*ttl).into()));
            f.push(("bytes", (*size).into()));
            f.push(("chunks", (*chunks).into()));
            f.push(("sha256", majordodo_core::codepool::hex(sha256).into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::CodePoolChunk { id, index, data } => {
            f.push(("pool", id.as_str().into()));
            f.push(("chunk", (*index).into()));
            f.push(("bytes", data.len().into()));
        }
        LogEntry::PurgeTasks {
            task_ids,
            timestamp,
        } => {
            f.push((
                "tasks",
                Value::Array(task_ids.iter().map(|t| t.0.into()).collect()),
            ));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::ForgetIdempotencyKeys {
            created_before,
            timestamp,
        } => {
            f.push(("created_before", (*created_before).into()));
            f.push(("at", (*timestamp).into()));
        }
        LogEntry::DeferTask {
            task_id,
            attempt,
            worker_id,
            until,
            timestamp,
        } => {
            f.push(("task", task_id.0.into()));
            f.push(("attempt", (*attempt).into()));
            f.push(("worker", worker_id.as_str().into()));
            f.push(("until", (*until).into()));
            f.push(("at", (*timestamp).into()));
        }
    }
    f
}

fn task_fields(f: &mut Vec<(&'static str, Value)>, t: &NewTask) {
    f.push(("task", t.id.0.into()));
    f.push(("type", t.task_type.as_str().into()));
    f.push(("user", t.user_id.as_str().into()));
    f.push(("max_attempts", t.max_attempts.into()));
    if t.attempts > 0 {
        f.push(("attempts", t.attempts.into()));
    }
    if let Some(slot) = &t.slot {
        f.push(("slot", slot.as_str().into()));
    }
    if t.requested_start_time > 0 {
        f.push(("start_at", t.requested_start_time.into()));
    }
    if t.deadline > 0 {
        f.push(("deadline", t.deadline.into()));
    }
    if let Some(pool) = &t.codepool {
        f.push(("pool", pool.as_str().into()));
    }
    if let Some(mode) = &t.mode {
        f.push(("mode", mode.as_str().into()));
    }
    if let Some(key) = &t.idempotency_key {
        f.push(("idempotency_key", key.as_str().into()));
    }
    if t.priority != 0 {
        f.push(("priority", t.priority.into()));
    }
    f.push(("created", t.created.into()));
    f.push(("data", t.data.as_str().into()));
}

/// Fields that hold times, shown as RFC 3339 on text lines.
const TIME_FIELDS: [&str; 4] = ["at", "created", "start_at", "deadline"];

/// One output line: text (`<lsn>  <kind>  key=value ...`) or a JSON object.
fn render(
    lsn: Lsn,
    kind: &str,
    fields: &[(&'static str, Value)],
    origin: Origin,
    json: bool,
) -> String {
    if json {
        let mut object = Map::new();
        object.insert("lsn".to_owned(), lsn.0.into());
        if let Some((ledger, entry)) = origin.ledger {
            object.insert("ledger".to_owned(), ledger.into());
            object.insert("entry".to_owned(), entry.into());
        }
        object.insert("kind".to_owned(), kind.into());
        for (key, value) in fields {
            object.insert((*key).to_owned(), value.clone());
        }
        return Value::Object(object).to_string();
    }
    let mut line = format!("{:>8}  {kind:<20}", lsn.0);
    for (key, value) in fields {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(&text_value(key, value));
    }
    if let Some((_, entry)) = origin.ledger {
        line.push_str(&format!(" [entry {entry}]"));
    }
    line.trim_end().to_owned()
}

/// A value on a text line: times readable, plain words as they are, other text quoted and
/// clipped (control characters escaped, so nothing from the log reaches the terminal raw).
fn text_value(key: &str, value: &Value) -> String {
    match value {
        Value::Number(n) if TIME_FIELDS.contains(&key) => match n.as_i64() {
            Some(ms) => Timestamp(ms).to_string(),
            None => n.to_string(),
        },
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars().count() <= MAX_TEXT_VALUE
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:@+,".contains(c));
            if plain {
                s.clone()
            } else {
                format!("\"{}\"", clip(s, MAX_TEXT_VALUE).replace('"', "\\\""))
            }
        }
        Value::Array(items) => {
            let shown: Vec<String> = items
                .iter()
                .take(MAX_PURGED_SHOWN)
                .map(Value::to_string)
                .collect();
            let more = items.len().saturating_sub(MAX_PURGED_SHOWN);
            if more > 0 {
                format!("{}(+{more} more)", shown.join(","))
            } else {
                shown.join(",")
            }
        }
        other => escape(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordodo_core::{TaskId, TaskStatus};

    fn task() -> NewTask {
        NewTask {
            id: TaskId(3),
            task_type: "echo".into(),
            user_id: "admin".into(),
            data: "hello world".into(),
            max_attempts: 1,
            attempts: 0,
            requested_start_time: 0,
            deadline: 0,
            slot: None,
            codepool: None,
            mode: None,
            idempotency_key: None,
            created: 0,
            priority: 0,
            needs: Vec::new(),
        }
    }

    #[test]
    fn text_lines_show_position_kind_and_key_fields() {
        // Goal: one line per record: position, kind, key=value with times readable and text
        // quoted and escaped.
        let none = Origin { ledger: None };
        let add = LogEntry::AddTask(task());
        assert_eq!(
            render(Lsn(12), add.kind(), &fields(&add), none, false),
            "      12  add_task             task=3 type=echo user=admin max_attempts=1 \
             created=1970-01-01T00:00:00.000Z data=\"hello world\""
        );
        let finished = LogEntry::TaskStatusChange {
            task_id: TaskId(3),
            status: TaskStatus::Finished,
            attempt: 1,
            worker_id: Some("w1".into()),
            result: Some("a\nb".into()),
            timestamp: 1000,
        };
        let ledger = Origin {
            ledger: Some((7, 2)),
        };
        assert_eq!(
            render(Lsn(14), finished.kind(), &fields(&finished), ledger, false),
            "      14  task_status_change   task=3 status=finished attempt=1 worker=w1 \
             at=1970-01-01T00:00:01.000Z result=\"a\\nb\" [entry 2]"
        );
    }

    #[test]
    fn json_lines_carry_every_field_unclipped() {
        // Goal: --json gives one object per record with the ledger position and full values.
        let mut t = task();
        t.data = "x".repeat(500);
        let add = LogEntry::AddTask(t);
        let line = render(
            Lsn(1),
            add.kind(),
            &fields(&add),
            Origin {
                ledger: Some((7, 0)),
            },
            true,
        );
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["lsn"], 1);
        assert_eq!(value["ledger"], 7);
        assert_eq!(value["entry"], 0);
        assert_eq!(value["kind"], "add_task");
        assert_eq!(value["data"].as_str().unwrap().len(), 500);
    }

    #[test]
    fn an_undecodable_record_is_shown_and_fails_the_dump() {
        // Goal: bytes that are not a record get a line of their own, and the exit status says
        // the dump is incomplete.
        let mut printer = Printer {
            json: false,
            printed: 0,
            undecodable: 0,
            stdout: Vec::new(),
        };
        printer
            .record(Lsn(5), b"\xff\xff", Origin { ledger: None })
            .unwrap();
        let text = String::from_utf8(printer.stdout.clone()).unwrap();
        assert!(text.starts_with("       5  undecodable"), "{text}");
        assert!(printer.finish().is_err());
    }
}
