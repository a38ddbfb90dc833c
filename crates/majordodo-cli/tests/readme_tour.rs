//! The five-minute tour of README.md, run as written against the real binary, so the README
//! cannot drift from what the binary does.
//!
//! The tour is everything between the `<!-- tour:begin` and `<!-- tour:end -->` markers. Its
//! `console` blocks are read in order:
//! - `$ command` is a command, continued over lines ending in `\` and over the body of a
//!   `<<'EOF'` here-document; the lines after it, up to the next command, are its output.
//! - Commands of `majordodo standalone`, `worker` and `broker` are servers: each runs as its own
//!   process, as in another terminal, and its first lines of stdout are compared as they come.
//!   A standalone gets `--http-port 0 --worker-port 0`; the ports it prints are mapped to the
//!   defaults (7364, 7363) in every output, and the defaults to them in every command, and the
//!   shell gets `MAJORDODO_URL` for it.
//! - Any other command runs in one `bash` in a fresh directory (variables carry over), with the
//!   binary under test first in `PATH`; its stdout and stderr together must match the output
//!   shown. A line `...` matches any number of lines, `...` inside a line any text. A command
//!   whose output shows an `error:` line must fail, any other must succeed. Reads (`task`,
//!   `tasks`, `status`, `workers`, `curl` without `-d`) are repeated until they match or a
//!   deadline passes, since the tour shows them once the tasks they show have run; other
//!   commands run once.
//! - `^C` sends SIGINT to the server started last and expects it to exit with status 0.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::readme::*;

/// Longest a read is repeated before its output counts as wrong: the tour's slowest wait is
/// the local worker running 100 000 tasks, which takes seconds even in a debug build.
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// Longest a server may take to print a line it is expected to print.
const LINE_DEADLINE: Duration = Duration::from_secs(30);

/// The tour's default ports, as the README shows them.
const HTTP_PORT: &str = "127.0.0.1:7364";
const WORKER_PORT: &str = "127.0.0.1:7363";

/// Whether a command is a server, run as its own process.
fn is_server(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().take(2).collect();
    matches!(
        words.as_slice(),
        ["majordodo", "standalone" | "worker" | "broker"]
    )
}

/// The actual ports of the tour's default ones.
#[derive(Default)]
struct Ports {
    http: Option<String>,
    workers: Option<String>,
}

impl Ports {
    /// `command` with the default addresses replaced by the actual ones.
    fn to_actual(&self, command: &str) -> String {
        let mut out = command.to_owned();
        if let Some(http) = &self.http {
            out = out.replace(HTTP_PORT, http);
        }
        if let Some(workers) = &self.workers {
            out = out.replace(WORKER_PORT, workers);
        }
        out
    }

    /// `line` with the actual addresses replaced by the default ones.
    fn to_default(&self, line: &str) -> String {
        let mut out = line.to_owned();
        if let Some(http) = &self.http {
            out = out.replace(http.as_str(), HTTP_PORT);
        }
        if let Some(workers) = &self.workers {
            out = out.replace(workers.as_str(), WORKER_PORT);
        }
        out
    }
}

/// The tour being run.
struct Tour {
    dir: tempfile::TempDir,
    path: String,
    shell: Shell,
    servers: Vec<TourServer>,
    ports: Ports,
}

impl Tour {
    fn new() -> Tour {
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
        Tour {
            dir,
            path,
            shell,
            servers: Vec::new(),
            ports: Ports::default(),
        }
    }

    /// What a failure says besides itself: the servers' logs.
    fn logs(&self) -> String {
        logs(&self.servers, 30)
    }

    fn step(&mut self, step: &Step) {
        match &step.command {
            None => self.interrupt(step),
            Some(command) if is_server(command) => self.start_server(step, command),
            Some(command) => self.run(step, command),
        }
    }

    fn start_server(&mut self, step: &Step, command: &str) {
        let standalone = command.split_whitespace().nth(1) == Some("standalone");
        let mut actual = self.ports.to_actual(command);
        if standalone {
            actual.push_str(" --http-port 0 --worker-port 0");
        }
        let log = self
            .dir
            .path()
            .join(format!("server-{}.log", self.servers.len()));
        self.servers.push(TourServer::spawn(
            self.dir.path(),
            &self.path,
            &actual,
            log,
            &[],
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
                let line = self.next_server_line(step, &seen);
                if standalone {
                    self.learn_ports(&line);
                }
                let line = self.ports.to_default(&line);
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
        if standalone {
            let url = format!(
                "http://{}/majordodo",
                self.ports
                    .http
                    .as_deref()
                    .expect("the standalone printed its URL")
            );
            let (_, status) = self.shell.run(&format!("export MAJORDODO_URL={url}"));
            assert_eq!(status, 0);
        }
    }

    fn next_server_line(&self, step: &Step, seen: &[String]) -> String {
        let server = self.servers.last().expect("a server runs");
        server
            .lines
            .recv_timeout(LINE_DEADLINE)
            .unwrap_or_else(|_| {
                panic!(
                    "README.md:{}: the server printed only:\n{}\n{}",
                    step.line,
                    seen.join("\n"),
                    self.logs()
                )
            })
    }

    /// Takes the standalone's actual ports from its banner.
    fn learn_ports(&mut self, line: &str) {
        let value = |label: &str| line.split_once(label).map(|(_, v)| v.trim().to_owned());
        if let Some(url) = value("HTTP API:") {
            let addr = url
                .trim_start_matches("http://")
                .trim_end_matches("/majordodo");
            self.ports.http = Some(addr.to_owned());
        }
        if let Some(addr) = value("worker port:") {
            self.ports.workers = Some(addr);
        }
    }

    fn run(&mut self, step: &Step, command: &str) {
        let actual = self.ports.to_actual(command);
        let must_fail = step.expected.iter().any(|l| l.starts_with("error: "));
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let (lines, status) = self.shell.run(&actual);
            let lines: Vec<String> = lines.iter().map(|l| self.ports.to_default(l)).collect();
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
            // A read shown once what it shows has happened: ask again shortly.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn interrupt(&mut self, step: &Step) {
        let mut server = self
            .servers
            .pop()
            .unwrap_or_else(|| panic!("README.md:{}: ^C with no server running", step.line));
        let status = stop(&mut server);
        assert_eq!(
            status,
            Some(0),
            "README.md:{}: the server did not stop cleanly on ^C\n{}",
            step.line,
            self.logs()
        );
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    // Goal: every command of the README's tour, run in order in a fresh directory, prints what
    // the README shows, and the servers it starts stop cleanly.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("read README.md");
    let mut tour = Tour::new();
    for step in tour_steps(&readme, "tour") {
        tour.step(&step);
    }
    while let Some(mut server) = tour.servers.pop() {
        assert_eq!(stop(&mut server), Some(0), "a server did not stop cleanly");
    }
}

#[test]
fn tour_outputs_match_with_wildcards() {
    // Goal: the matching rules of the module doc: `...` lines skip lines, `...` in a line skips
    // text, trailing spaces do not count, anything else must be equal.
    let p = |lines: &[&str]| lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    assert!(lines_match(
        &p(&["a", "...", "d"]),
        &p(&["a", "b", "c", "d"])
    ));
    assert!(lines_match(&p(&["a", "...", "b"]), &p(&["a", "b"])));
    assert!(!lines_match(&p(&["a", "b"]), &p(&["a", "b", "c"])));
    assert!(line_matches("started in ... ms", "started in 25 ms"));
    assert!(line_matches("x ... y ... z", "x 1 y 2 z  "));
    assert!(!line_matches("x ... y", "x 1 z"));
    assert!(!line_matches("ab...ba", "aba"));
    assert_eq!(heredoc_tag("cat > f <<'EOF'"), Some("EOF".to_owned()));
    assert!(is_read("majordodo tasks --type wc") && !is_read("majordodo submit --type x"));
    assert!(is_read("curl -s 'http://x?view=task'") && !is_read("curl -s -d '{}' http://x"));
    assert!(is_server("majordodo worker --broker x") && !is_server("majordodo workers"));
    let steps = tour_steps(
        "<!-- tour:begin -->\n```console\n$ a \\\n  b\nout\n^C\n$ cat <<'EOF'\nx\nEOF\n```\n<!-- tour:end -->\n",
        "tour",
    );
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].command.as_deref(), Some("a \\\n  b"));
    assert_eq!(steps[0].expected, vec!["out"]);
    assert!(steps[1].command.is_none());
    assert_eq!(steps[2].command.as_deref(), Some("cat <<'EOF'\nx\nEOF"));
}
