//! Logging to stderr, as text for people or as JSON lines for log collectors (`--log-format`),
//! filtered by `--log-level`, else `RUST_LOG`, else a default that depends on the command
//! (servers log state changes, clients only problems).

use tracing_subscriber::EnvFilter;

use crate::error::usage;

/// Default filter of servers: state changes of every crate.
const SERVER_DEFAULT: &str = "info";

/// Default filter of client commands: only what went wrong (their output is the answer).
const CLIENT_DEFAULT: &str = "warn";

/// How log lines are written.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// `<time> <LEVEL> <message> key=value ...`, colored on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and every
    /// structured field of the event at the top level (`task_id`, `worker_id`, `user`, ...).
    Json,
}

/// Installs the global subscriber.
///
/// # Errors
/// A usage error when `--log-level` (or `RUST_LOG`) is not a valid filter.
pub(crate) fn init(flag: Option<&str>, format: LogFormat, server: bool) -> anyhow::Result<()> {
    let filter = match flag {
        Some(directives) => EnvFilter::try_new(directives)
            .map_err(|e| usage(format!("invalid --log-level {directives:?}: {e}")))?,
        None => match std::env::var("RUST_LOG") {
            Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
                .map_err(|e| usage(format!("invalid RUST_LOG {directives:?}: {e}")))?,
            _ => EnvFilter::new(if server {
                SERVER_DEFAULT
            } else {
                CLIENT_DEFAULT
            }),
        },
    };
    use std::io::IsTerminal;
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(true)
            .init(),
    }
    Ok(())
}
