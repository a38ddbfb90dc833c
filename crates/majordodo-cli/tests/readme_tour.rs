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

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Longest a read is repeated before its output counts as wrong: the tour's slowest wait is
/// the local worker running 100 000 tasks, which takes seconds even in a debug build.
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// Longest any one command (the submission of 100 000 tasks included) may run.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Longest a server may take to print a line it is expected to print.
const LINE_DEADLINE: Duration = Duration::from_secs(30);

/// Longest a server may take to stop after SIGINT: the local worker gives running tasks 10 s.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// The tour's default ports, as the README shows them.
const HTTP_PORT: &str = "127.0.0.1:7364";
const WORKER_PORT: &str = "127.0.0.1:7363";

/// Marks the end of one command's output in the shell's stdout.
const DONE: &str = "__TOUR_COMMAND_DONE__";

/// One step of the tour.
#[derive(Debug)]
struct Step {
    /// Line in README.md where it starts.
    line: usize,
    /// `None` for `^C`.
    command: Option<String>,
    /// The output shown after it.
    expected: Vec<String>,
}

/// The steps of the tour in `readme`.
fn tour_steps(readme: &str) -> Vec<Step> {
    let begin = readme
        .find("<!-- tour:begin")
        .expect("README.md has a <!-- tour:begin marker");
    let end = readme
        .find("<!-- tour:end -->")
        .expect("README.md has a <!-- tour:end --> marker");
    let first_line = readme[..begin].lines().count() + 1;
    let lines: Vec<&str> = readme[begin..end].lines().collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let number = first_line + i;
        i += 1;
        if !in_console {
            in_console = line.trim() == "```console";
            continue;
        }
        if line.trim() == "```" {
            in_console = false;
            continue;
        }
        if line == "^C" {
            steps.push(Step {
                line: number,
                command: None,
                expected: Vec::new(),
            });
        } else if let Some(first) = line.strip_prefix("$ ") {
            let mut command = first.to_owned();
            while command.ends_with('\\') && i < lines.len() {
                command.push('\n');
                command.push_str(lines[i]);
                i += 1;
            }
            if let Some(tag) = heredoc_tag(&command) {
                loop {
                    let body = lines.get(i).unwrap_or_else(|| {
                        panic!("README.md:{number}: here-document without its {tag} line")
                    });
                    i += 1;
                    command.push('\n');
                    command.push_str(body);
                    if *body == tag {
                        break;
                    }
                }
            }
            steps.push(Step {
                line: number,
                command: Some(command),
                expected: Vec::new(),
            });
        } else {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("README.md:{number}: output before any command"));
            step.expected.push(line.to_owned());
        }
    }
    assert!(!steps.is_empty(), "the tour has no commands");
    steps
}

/// The delimiter of a `<<'EOF'` (or `<<EOF`) here-document in `command`.
fn heredoc_tag(command: &str) -> Option<String> {
    let rest = &command[command.find("<<")? + 2..];
    let tag: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!tag.is_empty()).then_some(tag)
}

/// Whether `line` matches `pattern`, where each `...` stands for any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let (pattern, line) = (pattern.trim_end(), line.trim_end());
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || line.len() < first.len() + last.len() || !line.ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `lines` match `pattern` as a whole, a pattern line `...` standing for any lines.
fn lines_match(pattern: &[String], lines: &[String]) -> bool {
    match pattern.split_first() {
        None => lines.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=lines.len()).any(|skip| lines_match(rest, &lines[skip..]))
        }
        Some((first, rest)) => lines
            .split_first()
            .is_some_and(|(line, more)| line_matches(first, line) && lines_match(rest, more)),
    }
}

/// Whether a command only reads, so that running it again changes nothing.
fn is_read(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["majordodo", sub, ..] => ["task", "tasks", "status", "workers"].contains(sub),
        ["curl", ..] => !words.contains(&"-d"),
        _ => false,
    }
}

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

/// A server of the tour.
struct TourServer {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl Drop for TourServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The shell the client commands run in.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    fn start(dir: &Path, path: &str) -> Shell {
        let mut child = tour_command("bash", dir, path)
            .args(["--noprofile", "--norc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start bash");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // The shell's own complaints (a syntax error) go where the commands' output goes.
        writeln!(stdin, "exec 2>&1").expect("write to bash");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Shell {
            child,
            stdin,
            lines,
        }
    }

    /// Runs `command`; returns its output lines (stdout and stderr together) and exit status.
    fn run(&mut self, command: &str) -> (Vec<String>, i32) {
        writeln!(
            self.stdin,
            "{{\n{command}\n}} 2>&1\nprintf '\\n{DONE} %s\\n' \"$?\""
        )
        .expect("write to bash");
        self.stdin.flush().expect("flush bash's stdin");
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("`{command}` did not finish within {COMMAND_DEADLINE:?}; output: {out:#?}")
            });
            if let Some(status) = line.strip_prefix(&format!("{DONE} ")) {
                // The line break printed before the marker ends a last line without one.
                if out.last().is_some_and(|l: &String| l.is_empty()) {
                    out.pop();
                }
                return (out, status.trim().parse().expect("an exit status"));
            }
            out.push(line);
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` in `dir`, with the binary under test first in `PATH` and none of the developer's
/// majordodo settings.
fn tour_command(program: &str, dir: &Path, path: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).env("PATH", path);
    for var in [
        "MAJORDODO_URL",
        "MAJORDODO_TOKEN",
        "MAJORDODO_USERNAME",
        "MAJORDODO_PASSWORD",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
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
        let mut out = String::new();
        for server in &self.servers {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("--- end of {}:\n", server.log.display()));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
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
        let mut child = tour_command("sh", self.dir.path(), &self.path)
            .arg("-c")
            .arg(format!("exec {actual}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create a server log"))
            .spawn()
            .expect("start a server");
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.servers.push(TourServer { child, lines, log });
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

/// Sends SIGINT to `server` and waits (bounded) for its exit status.
fn stop(server: &mut TourServer) -> Option<i32> {
    signal(server.child.id(), "INT");
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        if let Some(status) = server.child.try_wait().expect("poll a server") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "a server did not stop within {STOP_DEADLINE:?} of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
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
    for step in tour_steps(&readme) {
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
    );
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].command.as_deref(), Some("a \\\n  b"));
    assert_eq!(steps[0].expected, vec!["out"]);
    assert!(steps[1].command.is_none());
    assert_eq!(steps[2].command.as_deref(), Some("cat <<'EOF'\nx\nEOF"));
}
