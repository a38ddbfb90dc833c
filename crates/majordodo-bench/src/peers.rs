//! The peers of `compare`: their installer and drivers (shipped inside this binary and written
//! to the peers' folder), a Redis durable on acknowledgement started for the run, and one
//! driver run per measurement, whose last output line is JSON.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The files of `peers/`, written next to what they install.
const FILES: &[(&str, &str)] = &[
    ("install.sh", include_str!("../peers/install.sh")),
    (
        "requirements.txt",
        include_str!("../peers/requirements.txt"),
    ),
    (
        "node/package.json",
        include_str!("../peers/node/package.json"),
    ),
    (
        "node/package-lock.json",
        include_str!("../peers/node/package-lock.json"),
    ),
    ("bullmq.mjs", include_str!("../peers/bullmq.mjs")),
    ("celery_app.py", include_str!("../peers/celery_app.py")),
    (
        "celery_driver.py",
        include_str!("../peers/celery_driver.py"),
    ),
];

/// A peer system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Peer {
    BullMq,
    Celery,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::BullMq => "bullmq",
            Peer::Celery => "celery",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Peer, String> {
        match s {
            "bullmq" => Ok(Peer::BullMq),
            "celery" => Ok(Peer::Celery),
            _ => Err(format!("unknown peer {s:?} (bullmq, celery)")),
        }
    }
}

/// The peers of a run, from a comma-separated list (empty for none).
#[derive(Clone, Debug)]
pub(crate) struct PeerList(pub(crate) Vec<Peer>);

impl PeerList {
    pub(crate) fn parse(s: &str) -> Result<PeerList, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Peer::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(PeerList)
    }
}

/// Writes the scripts under `dir` and runs the installer for Redis and `peers` (it installs
/// only what is missing, printing a line per step).
pub(crate) fn install(dir: &Path, peers: &[Peer]) -> anyhow::Result<()> {
    let scripts = dir.join("scripts");
    for (name, text) in FILES {
        let path = scripts.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    let mut cmd = Command::new("bash");
    cmd.arg(scripts.join("install.sh")).arg(dir).arg("redis");
    for p in peers {
        cmd.arg(p.name());
    }
    let status = cmd
        .status()
        .context("run the peers' installer (is bash installed?)")?;
    if !status.success() {
        bail!("the peers' installer failed ({status}); see the lines above");
    }
    // The drivers run from where their packages are.
    for (name, _) in FILES {
        let from = scripts.join(name);
        let to = match *name {
            "bullmq.mjs" => dir.join("node").join(name),
            "celery_app.py" | "celery_driver.py" => dir.join(name),
            _ => continue,
        };
        std::fs::copy(&from, &to).with_context(|| format!("copy {}", from.display()))?;
    }
    Ok(())
}

/// Versions of what the peers run, as `name version` pairs.
pub(crate) fn versions(dir: &Path) -> Vec<(String, String)> {
    let out = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let redis = out(Command::new("redis-server").arg("--version"));
    let redis = redis
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or(&redis)
        .to_string();
    let node_pkg = |p: &str| {
        out(Command::new("node").arg("-p").arg(format!(
            "require('{}/node/node_modules/{p}/package.json').version",
            dir.display()
        )))
    };
    vec![
        ("redis".into(), redis),
        ("node".into(), out(Command::new("node").arg("--version"))),
        ("bullmq".into(), node_pkg("bullmq")),
        ("ioredis".into(), node_pkg("ioredis")),
        (
            "python".into(),
            out(Command::new(dir.join("venv/bin/python")).arg("-I").arg("-c").arg(
                "import sys, celery, kombu, redis; print(sys.version.split()[0], 'celery', celery.__version__, 'kombu', kombu.__version__, 'redis-py', redis.__version__)",
            )),
        ),
    ]
}

/// A `redis-server` of this run on 127.0.0.1, durable on acknowledgement (append-only file,
/// fsync before every reply), no RDB snapshots; killed when dropped.
pub(crate) struct Redis {
    child: Child,
    pub(crate) port: u16,
}

impl Redis {
    /// Starts it with its data in `dir` (created) and waits until it answers PING.
    pub(crate) fn start(dir: &Path) -> anyhow::Result<Redis> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--maxmemory-policy", "noeviction"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start redis-server")?;
        let mut redis = Redis { child, port };
        let started = Instant::now();
        loop {
            if redis.command("PING").map(|r| r == "+PONG").unwrap_or(false) {
                break;
            }
            if let Ok(Some(status)) = redis.child.try_wait() {
                bail!(
                    "redis-server exited with {status}; see {}",
                    dir.join("redis.log").display()
                );
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("redis-server did not answer within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (key, want) in [("appendonly", "yes"), ("appendfsync", "always")] {
            let got = redis.command(&format!("CONFIG GET {key}"))?;
            if !got.contains(want) {
                bail!("redis {key} is not {want}: {got:?}");
            }
        }
        Ok(redis)
    }

    /// Sends one inline command and returns the raw reply (first chunk).
    pub(crate) fn command(&self, line: &str) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one workload of `peer`'s driver against `redis` and returns its JSON result.
pub(crate) fn run_driver(
    dir: &Path,
    peer: Peer,
    redis: &Redis,
    args: &[String],
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    let (program, script, cwd): (PathBuf, PathBuf, PathBuf) = match peer {
        Peer::BullMq => ("node".into(), dir.join("node/bullmq.mjs"), dir.join("node")),
        Peer::Celery => (
            dir.join("venv/bin/python"),
            dir.join("celery_driver.py"),
            dir.to_path_buf(),
        ),
    };
    let mut child = Command::new(&program)
        .arg(&script)
        .args(args)
        .current_dir(&cwd)
        .env("REDIS_PORT", redis.port.to_string())
        .env("DRIVER_TIMEOUT_MS", limit.as_millis().to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {} {}", program.display(), script.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    // The driver bounds itself by `limit`; this wait ends with it.
    let status = child.wait()?;
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{} driver {args:?} failed ({status}): {}",
            peer.name(),
            err.trim()
        );
    }
    let last = lines.last().context("the driver printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("parse the driver's result {last:?}"))
}
