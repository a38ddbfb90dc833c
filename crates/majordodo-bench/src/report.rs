//! Plain-text tables and process measurements.

use std::fs;

/// A table printed with aligned columns.
pub(crate) struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.len());
            }
        }
        println!("\n{}", self.title);
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
                .collect();
            println!("| {} |", parts.join(" | "));
        };
        line(&self.header);
        println!(
            "|{}|",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("|")
        );
        for row in &self.rows {
            line(row);
        }
    }
}

/// Resident set size of a process in bytes, from `/proc/<pid>/status`.
pub(crate) fn rss_bytes(pid: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) this process has used so far, in seconds, from `/proc/self/stat`
/// (clock ticks of 10 ms, the Linux default). Unlike wall time it does not grow when other
/// processes share the machine.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds(&fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms, the Linux default).
pub(crate) fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Tells a profiler that the measured phase starts (`true`) or ends (`false`), when the variable
/// `MAJORDODO_BENCH_PERF_CTL` names the control FIFO of `perf record --control fifo:<path>`
/// (started with `-D -1`, so that only the measured phases are sampled). Without the variable it
/// does nothing.
pub(crate) fn profile_phase(measured: bool) {
    let Some(path) = std::env::var_os("MAJORDODO_BENCH_PERF_CTL") else {
        return;
    };
    let command: &[u8] = if measured { b"enable\n" } else { b"disable\n" };
    let written = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut fifo| std::io::Write::write_all(&mut fifo, command));
    if let Err(e) = written {
        eprintln!(
            "MAJORDODO_BENCH_PERF_CTL: cannot write to {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

/// Formats a rate with thousands separators.
pub(crate) fn per_sec(n: f64) -> String {
    group(n.round() as u64)
}

/// Formats an integer with thousands separators.
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Bytes as MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
