//! Stop signals: the first SIGINT (Ctrl-C) or SIGTERM asks for a graceful stop; a second one
//! ends the process at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::EXIT_FAILURE;

/// Starts watching SIGINT and SIGTERM. The returned token is cancelled on the first signal; on
/// the second, the process exits with status 1 without waiting for the graceful stop.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub(crate) fn stop_token() -> anyhow::Result<CancellationToken> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let first = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("stopping (send the signal again to stop at once)");
        first.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        warn!("second stop signal: exiting without a graceful stop");
        std::process::exit(i32::from(EXIT_FAILURE));
    });
    Ok(token)
}
