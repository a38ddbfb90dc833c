//! `majordodo worker`: a worker agent configured by a TOML file and flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use majordodo_worker::{StatusHandle, Worker, WorkerError};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::WorkerArgs;
use crate::config::Origin;
use crate::config::worker::{Target, WorkerFile, WorkerSettings, default_file};
use crate::error::usage;

/// Runs `majordodo worker`.
pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{}", default_file());
        return Ok(());
    }
    let settings = load(&args)?;
    let stop = crate::signal::stop_token()?;
    print_start(&settings);
    run_agent(settings, stop).await
}

/// Reads the file (if any), applies the flags and validates.
fn load(args: &WorkerArgs) -> anyhow::Result<WorkerSettings> {
    let (mut file, origin) = match &args.config {
        Some(path) => (WorkerFile::load(path)?, Origin::File(absolute(path)?)),
        None => (WorkerFile::default(), Origin::CommandLine),
    };
    if let Some(broker) = &args.broker {
        file.broker = broker.clone();
        file.zk = None;
    }
    if let Some(zk) = &args.zk {
        file.zk = Some(zk.clone());
    }
    if let Some(path) = &args.zk_path {
        file.zk_path = path.clone();
    }
    if let Some(id) = &args.worker_id {
        file.worker_id = Some(id.clone());
    }
    if let Some(path) = &args.shared_secret_file {
        file.shared_secret = None;
        file.shared_secret_file = Some(absolute(path)?);
        file.credential_file = None;
    }
    if let Some(path) = &args.credential_file {
        file.shared_secret = None;
        file.shared_secret_file = None;
        file.credential_file = Some(absolute(path)?);
    }
    if args.tls {
        file.tls = true;
    }
    if let Some(path) = &args.ca_file {
        file.tls_ca_file = Some(absolute(path)?);
    }
    if let Some(path) = &args.tls_cert_file {
        file.tls_cert_file = Some(absolute(path)?);
    }
    if let Some(path) = &args.tls_key_file {
        file.tls_key_file = Some(absolute(path)?);
    }
    if let Some(n) = args.max_threads {
        file.max_threads = n;
    }
    if let Some(groups) = &args.groups {
        file.groups = groups.clone();
    }
    if !args.builtins.is_empty() {
        let list = file.builtin_executors.get_or_insert_with(Vec::new);
        for name in &args.builtins {
            if !list.contains(name) {
                list.push(name.clone());
            }
        }
    }
    Ok(file.validate(&origin, Target::FromFile)?)
}

/// `path` made absolute against the working directory, so that it is not later resolved
/// against a configuration file's directory.
pub(crate) fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().context("read the working directory")?;
    Ok(cwd.join(path))
}

fn print_start(settings: &WorkerSettings) {
    let c = &settings.config;
    println!(
        "majordodo worker {} connecting to {}",
        c.worker_id,
        match &c.broker_locator {
            Some(_) => c.broker_description(),
            None => format!("broker at {}", c.broker_addr),
        }
    );
    let limits: Vec<String> = c
        .capacity
        .max_threads_by_task_type
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect();
    println!(
        "  capacity: {} tasks at once; per type: {}; groups {:?}{}",
        c.capacity.max_threads,
        limits.join(", "),
        c.capacity.groups,
        if c.capacity.excluded_groups.is_empty() {
            String::new()
        } else {
            format!(", excluding {:?}", c.capacity.excluded_groups)
        }
    );
    let amounts: Vec<String> = c
        .capacity
        .amounts
        .iter()
        .map(|(key, value)| {
            let unit = match key.as_str() {
                majordodo_proto::worker::CPU_MILLIS => " millicores",
                majordodo_proto::worker::MEMORY_MIB => " MiB",
                _ => "",
            };
            match settings
                .detected
                .iter()
                .find(|(detected, _)| detected == key)
            {
                Some((_, from)) => format!("{key}={value}{unit} (detected: {from})"),
                None => format!("{key}={value}{unit}"),
            }
        })
        .collect();
    println!("  amounts: {}", amounts.join(", "));
    println!(
        "  enforcement of cpu and memory: {}",
        c.capacity.enforcement
    );
    for (key, from) in &settings.detected {
        info!(
            amount = %key,
            value = c.capacity.amounts.get(key).copied().unwrap_or(0),
            from = %from,
            "capacity amount detected"
        );
    }
    for e in &settings.summary {
        println!("  executor {}: {}", e.task_type, e.runs);
    }
}

/// Runs the agent until `stop` is cancelled (graceful: running tasks get the shutdown grace,
/// reports are delivered), or until the broker refuses or kills it.
///
/// # Errors
/// Why the agent stopped, when it was not a clean stop.
pub(crate) async fn run_agent(
    settings: WorkerSettings,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let worker_id = settings.config.worker_id.clone();
    let worker = Worker::new(settings.config, settings.executors).map_err(|e| match e {
        WorkerError::InvalidConfig(problem) => usage(format!("invalid worker settings: {problem}")),
        other => anyhow::Error::new(other),
    })?;
    let status = worker.status();
    let watcher = tokio::spawn(announce_connections(status));
    let result = worker.run(stop.cancelled_owned()).await;
    watcher.abort();
    match result {
        Ok(()) => {
            info!("worker stopped");
            Ok(())
        }
        Err(error @ WorkerError::StillRefused { .. }) => {
            Err(anyhow::Error::new(error).context(format!(
                "worker {worker_id} stopped: the broker kept refusing it; each worker process \
                 needs its own worker id (set --worker-id, or worker_id in its file)"
            )))
        }
        Err(error) => Err(anyhow::Error::new(error).context("worker stopped")),
    }
}

/// Logs each successful connection to a broker (the agent logs losses and retries itself).
async fn announce_connections(mut status: StatusHandle) {
    let mut seen = 0;
    loop {
        let now = status.wait_for(|s| s.stopped || s.connections > seen).await;
        if now.stopped || now.connections <= seen {
            return;
        }
        seen = now.connections;
        info!(
            broker_id = now.broker_id.as_deref().unwrap_or("?"),
            connections = seen,
            "connected to broker"
        );
    }
}
