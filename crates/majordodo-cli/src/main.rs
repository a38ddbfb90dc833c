//! `majordodo`: the command line of Majordodo.
//!
//! - `standalone`, `broker`, `worker`: the servers ([`standalone`], [`server`], [`worker`]).
//! - `submit`, `task`, `tasks`, `status`, `workers`: clients of the HTTP API ([`client`]).
//! - `auth`: credentials for the broker's configuration ([`auth`]).
//! - `log repair`: the way out when a damaged commit log refuses to open ([`log_repair`]).
//! - `ledgers`, `dump-log`: what a cluster's ledgers and a commit log hold, read without
//!   changing anything ([`ledgers`], [`dump_log`]).
//! - `local-cluster`: a replicated cluster on 127.0.0.1 to try failover ([`local_cluster`]).
//!
//! Exit status: 0 when the command did what was asked, 1 when it failed at run time, 2 for a
//! usage or configuration error (errors print as `error: ...` plus `caused by: ...` lines).

mod auth;
mod backup;
mod builtin;
mod cli;
mod client;
mod config;
mod discovery;
mod dump_log;
mod error;
mod http_config;
mod ledgers;
mod local_cluster;
mod log_repair;
mod logging;
mod output;
mod server;
mod signal;
mod standalone;
mod units;
mod worker;
mod zk;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::report;

/// jemalloc instead of the C library's allocator: a broker allocates and frees small objects for
/// every task it moves, and with jemalloc the burn-down takes about a third less CPU per task
/// (`majordodo-bench rules-cost`, column CPU us/task) for the same resident memory
/// (`majordodo-bench scale`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Standalone(_) | Command::Broker(_) | Command::Worker(_)
    );
    if let Err(error) = logging::init(cli.log_level.as_deref(), cli.log_format, server) {
        return report(&error);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("majordodo")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&anyhow::Error::new(e).context("start the async runtime")),
    };
    let result = runtime.block_on(run(cli.command));
    // Tasks still running (a stuck connection) must not delay the exit past the bounded
    // shutdown each command already performed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Standalone(args) => standalone::run(args).await,
        Command::Broker(args) => server::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Submit(args) => client::submit(args).await,
        Command::Task(args) => client::task(args).await,
        Command::Tasks(args) => client::tasks(args).await,
        Command::Status(args) => client::status(args).await,
        Command::Workers(args) => client::workers(args).await,
        Command::Codepool(command) => client::codepool(command).await,
        Command::Cancel(args) => client::cancel(args).await,
        Command::Transaction(command) => client::transaction(command).await,
        Command::ServiceLevel(args) => client::service_level(args).await,
        Command::Quota(args) => client::quota(args).await,
        Command::WorkerCredentials(command) => client::worker_credentials(command).await,
        Command::Priority(args) => client::priority(args).await,
        Command::Auth(command) => auth::run(command),
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args),
        Command::Log(command) => log_repair::run(command),
        Command::Ledgers(args) => ledgers::run(args).await,
        Command::DumpLog(args) => dump_log::run(args).await,
        Command::LocalCluster(args) => local_cluster::run(args).await,
    }
}
