//! Human output of the client commands: aligned tables and `key: value` blocks. Text that came
//! from the broker (task data, results, names) is escaped so control characters cannot reach
//! the terminal, and clipped in tables so one long result does not ruin the layout.

use std::fmt::Write;

use majordodo_proto::http::{BrokerStatusInfo, ClusterStatus, TaskInfo, WorkerInfo};

use crate::units::Timestamp;

/// Widest cell of a free-text column (data, result) in a table, in characters.
const MAX_TEXT_CELL: usize = 40;

/// Spaces between two table columns.
const COLUMN_GAP: usize = 2;

/// A table with a header row, printed with aligned columns.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub(crate) fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells beyond the header are dropped, missing ones are empty).
    pub(crate) fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, columns separated by at least two spaces, no
    /// trailing spaces.
    pub(crate) fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = w - width(cell) + COLUMN_GAP;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` with control characters escaped (`\n`, `\t`, `\u{1b}`), safe for a terminal.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` escaped and clipped to `max` characters (the last one an ellipsis).
pub(crate) fn clip(text: &str, max: usize) -> String {
    let escaped = escape(text);
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut out: String = escaped.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A time in ms since the epoch, or `-` for 0 (unset).
pub(crate) fn time_or_dash(ms: i64) -> String {
    if ms == 0 {
        "-".into()
    } else {
        Timestamp(ms).to_string()
    }
}

/// A table of tasks.
pub(crate) fn tasks_table(tasks: &[TaskInfo]) -> String {
    let mut table = Table::new(vec![
        "ID", "STATUS", "TYPE", "USER", "ATTEMPTS", "WORKER", "SLOT", "CREATED", "RESULT",
    ]);
    for t in tasks {
        table.row(vec![
            t.task_id.to_string(),
            t.status.clone(),
            clip(&t.task_type, MAX_TEXT_CELL),
            clip(&t.user_id, MAX_TEXT_CELL),
            attempts(t),
            clip(t.worker_id.as_deref().unwrap_or("-"), MAX_TEXT_CELL),
            clip(t.slot.as_deref().unwrap_or("-"), MAX_TEXT_CELL),
            time_or_dash(t.created_timestamp),
            clip(t.result.as_deref().unwrap_or(""), MAX_TEXT_CELL),
        ]);
    }
    table.render()
}

/// `attempts/max` (`∞` for unlimited).
fn attempts(t: &TaskInfo) -> String {
    if t.maxattempts == 0 {
        format!("{}/∞", t.attempts)
    } else {
        format!("{}/{}", t.attempts, t.maxattempts)
    }
}

/// One task as `key: value` lines.
pub(crate) fn task_details(t: &TaskInfo) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<16}{value}");
    };
    line("id:", t.task_id.to_string());
    line("status:", t.status.clone());
    line("type:", escape(&t.task_type));
    line("user:", escape(&t.user_id));
    line("attempts:", attempts(t));
    line("worker:", escape(t.worker_id.as_deref().unwrap_or("-")));
    line("slot:", escape(t.slot.as_deref().unwrap_or("-")));
    line("created:", time_or_dash(t.created_timestamp));
    line("start at:", time_or_dash(t.requested_start_time));
    line("deadline:", time_or_dash(t.deadline));
    if let Some(mode) = &t.mode {
        line("mode:", escape(mode));
    }
    if let Some(pool) = &t.codepool {
        line("code pool:", escape(pool));
    }
    if let Some(resources) = &t.resources {
        line("resources:", escape(resources));
    }
    line("data:", escape(&t.data));
    line("result:", escape(t.result.as_deref().unwrap_or("")));
    out
}

/// A table of workers.
pub(crate) fn workers_table(workers: &[WorkerInfo]) -> String {
    let mut table = Table::new(vec![
        "ID",
        "STATUS",
        "LOCATION",
        "PROCESS",
        "LAST CONNECTED",
    ]);
    for w in workers {
        table.row(vec![
            clip(&w.id, MAX_TEXT_CELL),
            w.status.clone(),
            clip(&w.location, MAX_TEXT_CELL),
            clip(&w.process_id, MAX_TEXT_CELL),
            time_or_dash(w.last_connection_ts),
        ]);
    }
    table.render()
}

/// The broker status as `key: value` lines.
pub(crate) fn status_details(url: &str, s: &BrokerStatusInfo, workers: Option<usize>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "broker:         {url}");
    let _ = writeln!(out, "mode:           {}", escape(&s.cluster_mode));
    let _ = writeln!(out, "log position:   {}", s.current_sequence_number);
    if let Some(workers) = workers {
        let _ = writeln!(out, "workers:        {workers} connected");
    }
    let _ = writeln!(
        out,
        "tasks:          {} (waiting {}, delayed {}, running {}, finished {}, error {})",
        s.tasks, s.waiting_tasks, s.delayed_tasks, s.running_tasks, s.finished_tasks, s.error_tasks
    );
    out
}

/// The cluster as a broker of it knows it: the leader, then a table of the live brokers with
/// the position each applied and how far it is behind the leader (as published, about once a
/// second).
pub(crate) fn cluster_details(c: &ClusterStatus) -> String {
    let brokers = match c.brokers.len() {
        1 => "1 broker".to_owned(),
        n => format!("{n} brokers"),
    };
    let leader = match &c.leader_id {
        Some(id) => format!("leader {}", escape(id)),
        None => "no leader (an election is under way)".to_owned(),
    };
    let mut out = format!("cluster:        {leader}, {brokers}\n");
    if let (Some(first), Some(last)) = (c.ledgers.first(), c.ledgers.last()) {
        let _ = writeln!(
            out,
            "ledgers:        {} (oldest {} from position {}, current {} from position {})",
            c.ledgers.len(),
            first.ledger_id,
            first.first_lsn,
            last.ledger_id,
            last.first_lsn
        );
    }
    let mut table = Table::new(vec!["BROKER", "ROLE", "APPLIED", "LAG", "API"]);
    let or_dash = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for b in &c.brokers {
        table.row(vec![
            clip(&b.broker_id, MAX_TEXT_CELL),
            if b.leader { "leader" } else { "follower" }.to_owned(),
            or_dash(b.applied_lsn),
            or_dash(b.lag),
            clip(&b.api_url, 2 * MAX_TEXT_CELL),
        ]);
    }
    out.push_str(&table.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        // Goal: every column starts at the same offset on every line; lines are trimmed.
        let mut t = Table::new(vec!["ID", "NAME", "X"]);
        t.row(vec!["1".into(), "a-long-name".into(), "x".into()]);
        t.row(vec!["100".into(), "b".into(), String::new()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID   NAME         X");
        assert_eq!(lines[1], "1    a-long-name  x");
        assert_eq!(lines[2], "100  b");
    }

    #[test]
    fn broker_text_cannot_reach_the_terminal_raw() {
        // Goal: control characters are escaped and long cells clipped to the limit.
        assert_eq!(escape("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let clipped = clip(&"x".repeat(100), 10);
        assert_eq!(clipped.chars().count(), 10);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("short", 10), "short");
    }

    #[test]
    fn the_cluster_shows_the_leader_and_each_brokers_lag() {
        // Goal: one line naming the leader, then one row per live broker with its role,
        // position and lag, `-` where a broker has not published one.
        use majordodo_proto::http::{ClusterBroker, ClusterLedger};
        let broker = |id: &str, leader, applied, lag| ClusterBroker {
            broker_id: id.into(),
            api_url: format!("http://h/{id}"),
            leader,
            applied_lsn: applied,
            lag,
        };
        let text = cluster_details(&ClusterStatus {
            leader_id: Some("b1".into()),
            brokers: vec![
                broker("b1", true, Some(57), Some(0)),
                broker("b2", false, Some(50), Some(7)),
                broker("b3", false, None, None),
            ],
            ledgers: vec![
                ClusterLedger {
                    ledger_id: 4,
                    created_at: 1,
                    first_lsn: 1,
                },
                ClusterLedger {
                    ledger_id: 9,
                    created_at: 2,
                    first_lsn: 41,
                },
            ],
        });
        assert_eq!(
            text,
            "cluster:        leader b1, 3 brokers\n\
             ledgers:        2 (oldest 4 from position 1, current 9 from position 41)\n\
             BROKER  ROLE      APPLIED  LAG  API\n\
             b1      leader    57       0    http://h/b1\n\
             b2      follower  50       7    http://h/b2\n\
             b3      follower  -        -    http://h/b3\n"
        );
        let none = cluster_details(&ClusterStatus::default());
        assert!(
            none.starts_with("cluster:        no leader (an election is under way), 0 brokers")
        );
    }
}
