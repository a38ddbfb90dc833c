//! `majordodo standalone`: a broker and one local worker in one process, on 127.0.0.1 only, with
//! everything they need created in the data directory:
//!
//! ```text
//! <data-dir>/log/            the commit log (fsync on)
//! <data-dir>/snapshots/      snapshots of the state
//! <data-dir>/admin.token     bearer token of the `admin` user (0600), read by the client commands
//! <data-dir>/local-worker.credential   the local worker's own credential (0600)
//! ```
//!
//! The token is random, made on the first start and kept afterwards. The broker accepts
//! per-worker credentials only: at every start the local worker's credential is checked against
//! the state and issued anew (the old one revoked) when it is missing, revoked or for another
//! worker id. Other workers get theirs from `majordodo worker-credentials add`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use majordodo_broker::http::UserConfig;
use majordodo_broker::http::UserRole;
use majordodo_broker::http::auth::{generate_token, token_digest, write_token_file};
use majordodo_proto::worker::SharedSecret;
use tracing::{info, warn};

use crate::cli::{DEFAULT_HTTP_PORT, StandaloneArgs};
use crate::config::broker::BrokerFile;
use crate::config::worker::{Target, WorkerFile, WorkerSettings};
use crate::config::{Origin, read_small_file};
use crate::server::{InUseHints, RunningBroker};
use crate::worker::{absolute, run_agent};

use majordodo_proto::http::ADMIN_TOKEN_FILE;

/// Name of the local worker's credential file in the data directory.
pub(crate) const LOCAL_CREDENTIAL_FILE: &str = "local-worker.credential";

/// Name of the HTTP user the admin token belongs to.
pub(crate) const ADMIN_USER: &str = "admin";

/// Worker id of the local worker when the worker file names none.
const LOCAL_WORKER_ID: &str = "local";

/// Shutdown grace of the local worker when the worker file sets none: short, because a
/// standalone is stopped by hand and tasks are retried on the next start.
const LOCAL_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Extra time, beyond its own grace and acknowledgement timeout, that the local worker gets to
/// stop before it is abandoned.
const WORKER_STOP_MARGIN: Duration = Duration::from_secs(5);

/// What to do when a port is taken, most often by another standalone.
const IN_USE_HINTS: InUseHints = InUseHints {
    http: "is another majordodo running? stop it, or pass --http-port 0 to pick a free port \
           (then give the client commands the URL printed at start with --url or MAJORDODO_URL)",
    workers: "is another majordodo running? stop it, or pass --worker-port 0 to pick a free port",
};

/// Runs `majordodo standalone`.
pub(crate) async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = absolute(&args.data_dir)?;
    let stop = crate::signal::stop_token()?;

    // Check the worker file before touching anything, so a typo costs nothing.
    let worker_file = match &args.worker_config {
        Some(path) => Some((WorkerFile::load(path)?, Origin::File(absolute(path)?))),
        None => None,
    };
    let worker = if args.no_worker {
        None
    } else {
        Some(local_worker(worker_file)?)
    };

    create_private_dir(&data_dir)?;
    let token_path = data_dir.join(ADMIN_TOKEN_FILE);
    let token = read_or_create_secret(&token_path)?;

    let mut file = BrokerFile {
        data_dir: Some(data_dir.clone()),
        ..BrokerFile::default()
    };
    file.http.listen = format!("127.0.0.1:{}", args.http_port);
    file.workers.listen = format!("127.0.0.1:{}", args.worker_port);
    file.http.users = vec![admin_user(&token)];
    let settings = file.validate(&Origin::CommandLine)?;

    let mut broker = RunningBroker::serve(&settings, IN_USE_HINTS).await?;

    // Not a child of `stop`: the worker is stopped explicitly, before the broker.
    let worker_stop = tokio_util::sync::CancellationToken::new();
    let mut worker_task = None;
    let mut worker_bound = Duration::ZERO;
    let mut summary = Vec::new();
    if let Some(mut worker) = worker {
        let path = data_dir.join(LOCAL_CREDENTIAL_FILE);
        let credential = local_credential(&broker, &path, &worker.config.worker_id).await?;
        worker.config.credential = Some(credential);
        worker.config.broker_addr = broker.worker_addr.to_string();
        worker_bound =
            worker.config.shutdown_grace + worker.config.ack_timeout + WORKER_STOP_MARGIN;
        summary = worker.summary.iter().map(|e| e.task_type.clone()).collect();
        worker_task = Some(tokio::spawn(run_agent(worker, worker_stop.clone())));
    }

    print_banner(&Banner {
        url: &broker.url(),
        http_port: broker.http_addr.port(),
        worker_addr: &broker.worker_addr.to_string(),
        data_dir: &data_dir,
        token_path: &token_path,
        executors: &summary,
        elapsed: started.elapsed(),
    });
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "standalone started"
    );

    let worker_ended = async {
        match worker_task.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        biased;
        () = stop.cancelled() => Ok(()),
        error = broker.failure() => Err(error),
        ended = worker_ended => {
            worker_task = None;
            match ended {
                Ok(Ok(())) => Err(anyhow!("the local worker stopped unexpectedly")),
                Ok(Err(error)) => Err(error.context("the local worker failed")),
                Err(join) => Err(anyhow!("the local worker crashed: {join}")),
            }
        }
    };

    // The worker first, so its last reports reach the broker; then the broker.
    worker_stop.cancel();
    if let Some(task) = worker_task {
        match tokio::time::timeout(worker_bound, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                warn!(error = %format!("{error:#}"), "local worker stopped with an error")
            }
            Ok(Err(join)) => warn!(%join, "local worker crashed"),
            Err(_) => warn!("local worker did not stop in time"),
        }
    }
    let stopped = broker.stop().await;
    outcome.and(stopped)
}

/// The local worker's settings: the worker file's (if any) with the standalone's broker and
/// secret, every built-in executor unless the file lists them, and the `local` worker id.
fn local_worker(file: Option<(WorkerFile, Origin)>) -> anyhow::Result<WorkerSettings> {
    let (mut file, origin) = file.unwrap_or((
        WorkerFile {
            shutdown_grace: crate::config::HumanDuration(LOCAL_SHUTDOWN_GRACE),
            ..WorkerFile::default()
        },
        Origin::CommandLine,
    ));
    if file.shared_secret.is_some()
        || file.shared_secret_file.is_some()
        || file.credential_file.is_some()
    {
        warn!("the worker file's secret or credential is ignored: standalone issues its own");
    }
    if file.worker_id.is_none() {
        file.worker_id = Some(LOCAL_WORKER_ID.into());
    }
    Ok(file.validate(
        &origin,
        Target::Standalone {
            // Replaced by the bound address once the port is open.
            broker: "127.0.0.1:0".into(),
            // Replaced by the local worker's credential once the broker runs.
            secret: SharedSecret::new(b"unused".to_vec()),
        },
    )?)
}

/// The local worker's credential: the one in `path` if the broker still holds it, active, for
/// `worker_id`; else a new one, issued through the broker's handle and written to `path`
/// (mode 0600), the old one revoked.
async fn local_credential(
    broker: &RunningBroker,
    path: &Path,
    worker_id: &str,
) -> anyhow::Result<majordodo_proto::worker::CredentialFile> {
    use majordodo_broker::AdminChange;
    use majordodo_proto::worker::CredentialFile;
    let handle = broker.handle();
    let old = match std::fs::read_to_string(path) {
        Ok(text) => match CredentialFile::parse(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "local worker credential unreadable; issuing a new one");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("read {}", path.display()))),
    };
    if let Some(old) = old {
        let id = old.credential_id.clone();
        let wanted = worker_id.to_owned();
        let (usable, active) = handle
            .query(move |v| {
                let c = v.state.credential(&id);
                (
                    v.state.credential_for(&id, &wanted).is_ok(),
                    c.is_some_and(|c| c.is_active()),
                )
            })
            .await?;
        if usable {
            return Ok(old);
        }
        if active {
            handle
                .admin(AdminChange::RevokeWorkerCredential {
                    credential_id: old.credential_id.clone(),
                })
                .await?
                .map_err(|e| anyhow!("revoke the old local worker credential: {e}"))?;
        }
    }
    let secret = majordodo_proto::worker::random_credential_secret();
    let credential_id = format!(
        "local-{}",
        majordodo_proto::worker::random_nonce()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    handle
        .admin(AdminChange::AddWorkerCredential {
            credential_id: credential_id.clone(),
            worker_id: worker_id.to_owned(),
            verifier: majordodo_proto::worker::credential_verifier(&secret),
            comment: Some("standalone's local worker".into()),
        })
        .await?
        .map_err(|e| anyhow!("issue the local worker's credential: {e}"))?;
    let file = CredentialFile {
        credential_id,
        worker_id: worker_id.to_owned(),
        secret,
    };
    write_token_file(path, file.to_text().trim_end())
        .with_context(|| format!("write {}", path.display()))?;
    info!(file = %path.display(), credential_id = %file.credential_id, "issued the local worker's credential");
    Ok(file)
}

/// The HTTP user of the admin token.
fn admin_user(token: &str) -> UserConfig {
    UserConfig {
        name: ADMIN_USER.into(),
        role: UserRole::Admin,
        password_hash: None,
        token_sha256: Some(token_digest(token)),
    }
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create the data directory {}", dir.display()))
}

/// Reads the secret in `path`, or makes a random one and writes it there with mode 0600.
fn read_or_create_secret(path: &Path) -> anyhow::Result<String> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                warn!(
                    file = %path.display(),
                    "secret file is readable by other users; run chmod 600 on it"
                );
            }
            let text = read_small_file(path).with_context(|| format!("read {}", path.display()))?;
            let secret = text.trim().to_owned();
            if secret.is_empty() {
                return Err(anyhow!(
                    "{} is empty; delete it to have a new secret made",
                    path.display()
                ));
            }
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = generate_token();
            write_token_file(path, &secret).with_context(|| format!("write {}", path.display()))?;
            info!(file = %path.display(), "created a new secret");
            Ok(secret)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("read {}", path.display()))),
    }
}

/// What the start-up message shows.
struct Banner<'a> {
    url: &'a str,
    http_port: u16,
    worker_addr: &'a str,
    data_dir: &'a Path,
    token_path: &'a Path,
    executors: &'a [String],
    elapsed: Duration,
}

/// Prints where everything is and commands that work as printed.
fn print_banner(b: &Banner<'_>) {
    let program = std::env::args()
        .next()
        .unwrap_or_else(|| "majordodo".into());
    let mut client_flags = String::new();
    if b.http_port != DEFAULT_HTTP_PORT {
        client_flags.push_str(&format!(" --url {}", shell_quote(b.url)));
    }
    let default_dir = std::env::current_dir()
        .map(|cwd| cwd.join("majordodo-data"))
        .unwrap_or_else(|_| PathBuf::from("majordodo-data"));
    if b.data_dir != default_dir {
        client_flags.push_str(&format!(
            " --data-dir {}",
            shell_quote(&b.data_dir.display().to_string())
        ));
    }
    let program = shell_quote(&program);
    println!(
        "majordodo standalone is running (started in {} ms)",
        b.elapsed.as_millis()
    );
    println!("  HTTP API:     {}", b.url);
    println!("  worker port:  {}", b.worker_addr);
    println!("  data dir:     {}", b.data_dir.display());
    println!("  admin token:  {}", b.token_path.display());
    // A task type some worker will run: the local worker's echo (or its first type), else the
    // echo of the worker the banner asks to start.
    let sample = if b.executors.is_empty() {
        println!("  local worker: none (--no-worker)");
        println!("Tasks wait until a worker that runs their type connects. Issue it a credential");
        println!("and start it, in another terminal (it runs the built-in echo):");
        println!("  {program} worker-credentials add w1 --output w1.credential{client_flags}");
        println!(
            "  {program} worker --broker {} --credential-file w1.credential --builtin echo",
            b.worker_addr
        );
        println!("Then try, in a third terminal:");
        "echo"
    } else {
        println!("  local worker: runs task types {}", b.executors.join(", "));
        println!(
            "                (built-in: echo returns the data, noop does nothing, sleep waits for"
        );
        println!(
            "                the duration in the data, fail fails with the data as the error)"
        );
        println!("Try, in another terminal:");
        b.executors
            .iter()
            .find(|t| *t == "echo")
            .unwrap_or(&b.executors[0])
    };
    let sample = shell_quote(sample);
    println!("  {program} submit --type {sample} --data 'hello world'{client_flags}");
    println!("  {program} tasks{client_flags}");
    println!("Stop with Ctrl-C.");
}

/// `s` quoted for a POSIX shell when it needs to be.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        // Goal: printed commands survive paths with spaces and quotes.
        assert_eq!(shell_quote("/tmp/a-b_c.d"), "/tmp/a-b_c.d");
        assert_eq!(shell_quote("/tmp/my dir"), "'/tmp/my dir'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn secrets_are_made_once_with_mode_0600_and_then_reused() {
        // Goal: the first call creates a private random secret; the next one reads it back.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = read_or_create_secret(&path).unwrap();
        assert!(first.len() >= 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_or_create_secret(&path).unwrap(), first);
        std::fs::write(&path, "\n").unwrap();
        assert!(read_or_create_secret(&path).is_err());
    }
}
