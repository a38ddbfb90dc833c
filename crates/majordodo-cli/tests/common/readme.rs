//! What the tests that run README.md sections share: reading a section's steps, matching
//! outputs with `...` wildcards, the shell the client commands run in, and the server
//! processes. See `readme_tour.rs` for the rules.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::signal;

/// Longest any one command (the submission of 100 000 tasks included) may run.
pub(crate) const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Longest a server may take to stop after SIGINT: the local worker gives running tasks 10 s.
pub(crate) const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// Marks the end of one command's output in the shell's stdout.
const DONE: &str = "__TOUR_COMMAND_DONE__";

/// One step of the tour.
#[derive(Debug)]
pub(crate) struct Step {
    /// Line in README.md where it starts.
    pub(crate) line: usize,
    /// `None` for `^C`.
    pub(crate) command: Option<String>,
    /// The output shown after it.
    pub(crate) expected: Vec<String>,
}

/// The steps of the section of `readme` between `<!-- <name>:begin` and `<!-- <name>:end -->`.
pub(crate) fn tour_steps(readme: &str, name: &str) -> Vec<Step> {
    let (begin_marker, end_marker) = (format!("<!-- {name}:begin"), format!("<!-- {name}:end -->"));
    let begin = readme
        .find(&begin_marker)
        .unwrap_or_else(|| panic!("README.md has a {begin_marker} marker"));
    let end = readme
        .find(&end_marker)
        .unwrap_or_else(|| panic!("README.md has a {end_marker} marker"));
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
pub(crate) fn heredoc_tag(command: &str) -> Option<String> {
    let rest = &command[command.find("<<")? + 2..];
    let tag: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!tag.is_empty()).then_some(tag)
}

/// Whether `line` matches `pattern`, where each `...` stands for any text.
pub(crate) fn line_matches(pattern: &str, line: &str) -> bool {
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
pub(crate) fn lines_match(pattern: &[String], lines: &[String]) -> bool {
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
pub(crate) fn is_read(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["majordodo", sub, ..] => ["task", "tasks", "status", "workers"].contains(sub),
        ["curl", ..] => !words.contains(&"-d"),
        _ => false,
    }
}

/// A server of the tour.
pub(crate) struct TourServer {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
    pub(crate) log: std::path::PathBuf,
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
pub(crate) struct Shell {
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) lines: mpsc::Receiver<String>,
}

impl Shell {
    pub(crate) fn start(dir: &Path, path: &str) -> Shell {
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
    pub(crate) fn run(&mut self, command: &str) -> (Vec<String>, i32) {
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
pub(crate) fn tour_command(program: &str, dir: &Path, path: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).env("PATH", path);
    for var in [
        "MAJORDODO_URL",
        "MAJORDODO_TOKEN",
        "MAJORDODO_USERNAME",
        "MAJORDODO_PASSWORD",
        "MAJORDODO_ZK",
        "MAJORDODO_ZK_PATH",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

impl TourServer {
    /// Starts `command` in `dir` as `sh -c "exec <command>"` with `env` added, its stdout read
    /// line by line and its stderr written to `log`.
    pub(crate) fn spawn(
        dir: &Path,
        path: &str,
        command: &str,
        log: PathBuf,
        env: &[(String, String)],
    ) -> TourServer {
        let mut child = tour_command("sh", dir, path)
            .arg("-c")
            .arg(format!("exec {command}"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
        TourServer { child, lines, log }
    }
}

/// The last `count` lines of every server's log, for a failure message.
pub(crate) fn logs(servers: &[TourServer], count: usize) -> String {
    let mut out = String::new();
    for server in servers {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(count).collect();
        out.push_str(&format!("--- end of {}:\n", server.log.display()));
        for line in tail.iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Sends SIGINT to `server` and waits (bounded) for its exit status.
pub(crate) fn stop(server: &mut TourServer) -> Option<i32> {
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
