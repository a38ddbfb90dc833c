//! The "Try a replicated cluster" section of README.md, run as written against the real binary
//! and a real ZooKeeper and bookies (it needs `scripts/test-deps`, like every cluster test).
//!
//! The section is everything between `<!-- cluster-tour:begin` and `<!-- cluster-tour:end -->`,
//! read with the rules of `readme_tour.rs`, except that:
//! - `majordodo local-cluster` is a server too, and nothing is mapped: the cluster runs on free
//!   ports and the commands find it through the file it writes (`. majordodo-cluster/env`);
//! - servers get the shell's `MAJORDODO_*` variables, as a terminal where that file was
//!   sourced;
//! - stopping the local cluster must end every process it started (its descendants, read from
//!   `/proc`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::readme::*;
use common::{alive, descendants};

/// Longest a read is repeated before its output counts as wrong: a failover takes the
/// brokers' session timeout (5 s) plus the election and the worker's reconnection.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// Longest a server may take to print a line it is expected to print: the local cluster starts
/// four JVMs and three brokers first.
const LINE_DEADLINE: Duration = Duration::from_secs(90);

/// Longest the processes of a stopped server may take to be gone.
const GONE_DEADLINE: Duration = Duration::from_secs(20);

fn is_server(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().take(2).collect();
    matches!(
        words.as_slice(),
        [
            "majordodo",
            "local-cluster" | "standalone" | "worker" | "broker"
        ]
    )
}

struct ClusterTour {
    dir: tempfile::TempDir,
    path: String,
    shell: Shell,
    servers: Vec<TourServer>,
}

impl ClusterTour {
    fn new() -> ClusterTour {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_majordodo"))
            .parent()
            .expect("the binary is in a directory")
            .to_owned();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let shell = Shell::start(dir.path(), &path);
        ClusterTour {
            dir,
            path,
            shell,
            servers: Vec::new(),
        }
    }

    fn logs(&self) -> String {
        logs(&self.servers, 40)
    }

    fn step(&mut self, step: &Step) {
        match &step.command {
            None => self.interrupt(step),
            Some(command) if is_server(command) => self.start_server(step, command),
            Some(command) => self.run(step, command),
        }
    }

    /// The shell's `MAJORDODO_*` variables.
    fn shell_env(&mut self) -> Vec<(String, String)> {
        let (lines, _) = self.shell.run("env | grep '^MAJORDODO_' || true");
        lines
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn start_server(&mut self, step: &Step, command: &str) {
        let env = self.shell_env();
        let log = self
            .dir
            .path()
            .join(format!("server-{}.log", self.servers.len()));
        self.servers.push(TourServer::spawn(
            self.dir.path(),
            &self.path,
            command,
            log,
            &env,
        ));
        let mut seen = Vec::new();
        let mut expected = step.expected.iter().peekable();
        while let Some(pattern) = expected.next() {
            if pattern == "..." && expected.peek().is_none() {
                break;
            }
            let skipping = pattern == "...";
            let pattern = if skipping {
                expected.next().expect("peeked")
            } else {
                pattern
            };
            loop {
                let server = self.servers.last().expect("a server runs");
                let line = server
                    .lines
                    .recv_timeout(LINE_DEADLINE)
                    .unwrap_or_else(|_| {
                        panic!(
                            "README.md:{}: `{command}` printed only:\n{}\n{}",
                            step.line,
                            seen.join("\n"),
                            self.logs()
                        )
                    });
                seen.push(line.clone());
                if line_matches(pattern, &line) {
                    break;
                }
                if !skipping {
                    panic!(
                        "README.md:{}: `{command}` printed {line:?} where the README shows \
                         {pattern:?}; it printed:\n{}\n{}",
                        step.line,
                        seen.join("\n"),
                        self.logs()
                    );
                }
            }
        }
    }

    fn run(&mut self, step: &Step, command: &str) {
        let must_fail = step.expected.iter().any(|l| l.starts_with("error: "));
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let (lines, status) = self.shell.run(command);
            let status_ok = (status != 0) == must_fail;
            if status_ok && lines_match(&step.expected, &lines) {
                return;
            }
            if !is_read(command) || Instant::now() >= deadline {
                panic!(
                    "README.md:{}: `{command}` exited {status} and printed:\n{}\n\
                     where the README shows (and expects {}):\n{}\n{}",
                    step.line,
                    lines.join("\n"),
                    if must_fail { "a failure" } else { "success" },
                    step.expected.join("\n"),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// SIGINT to the server started last: it must exit 0, and every process it started must
    /// be gone soon after.
    fn interrupt(&mut self, step: &Step) {
        let mut server = self
            .servers
            .pop()
            .unwrap_or_else(|| panic!("README.md:{}: ^C with no server running", step.line));
        let started = descendants(server.child.id());
        let status = stop(&mut server);
        assert_eq!(
            status,
            Some(0),
            "README.md:{}: the server did not stop cleanly on ^C\n{}",
            step.line,
            logs(std::slice::from_ref(&server), 40)
        );
        let deadline = Instant::now() + GONE_DEADLINE;
        loop {
            let left: Vec<u32> = started.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "README.md:{}: processes {left:?} outlived the server",
                step.line
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn the_readme_cluster_tour_runs_as_written() {
    // Goal: every command of the README's replicated-cluster section, run in order in a fresh
    // directory, prints what the README shows: a failover keeps every acknowledged task, the
    // worker follows the new leader, and stopping the cluster ends every process it started.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("read README.md");
    let started = Instant::now();
    let mut tour = ClusterTour::new();
    for step in tour_steps(&readme, "cluster-tour") {
        tour.step(&step);
    }
    assert!(
        tour.servers.is_empty(),
        "the section stops every server it starts"
    );
    eprintln!("the cluster tour took {:?}", started.elapsed());
}
