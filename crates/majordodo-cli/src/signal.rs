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
        tracing::info!("stopping (send the signal again to stop at once)");
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

/// Reloads the certificates of `tls` on SIGHUP, and when their files change (checked every
/// [`majordodo_tls::RELOAD_CHECK_INTERVAL`]), until `stop`. New handshakes use the new
/// certificates; established connections keep theirs. A reload that fails is logged and the
/// certificates in use are kept.
///
/// # Errors
/// When the SIGHUP handler cannot be installed.
pub(crate) fn reload_tls_on_change(
    tls: &[majordodo_tls::ServerTls],
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if tls.is_empty() {
        return Ok(());
    }
    for port in tls {
        tokio::spawn(
            port.clone()
                .watch(majordodo_tls::RELOAD_CHECK_INTERVAL, stop.clone()),
        );
    }
    let mut hangup = signal(SignalKind::hangup())?;
    let tls = tls.to_vec();
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = hangup.recv() => if received.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading the tls certificates");
            for port in &tls {
                let port = port.clone();
                let result = tokio::task::spawn_blocking(move || port.reload()).await;
                if let Ok(Err(error)) = result {
                    warn!(%error, "tls certificates cannot be reloaded; keeping the previous ones");
                }
            }
        }
    });
    Ok(())
}
