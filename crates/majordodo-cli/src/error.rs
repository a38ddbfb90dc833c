//! How failures end the process: the exit status and the `error:` / `caused by:` lines.

use std::fmt;
use std::process::ExitCode;

use crate::config::ConfigError;

/// Exit status of a run-time failure.
pub(crate) const EXIT_FAILURE: u8 = 1;

/// Exit status of a usage or configuration error (the same as clap's for bad flags).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Bad input from the command line found after parsing (a file that is not JSON Lines, a
/// missing `--type`). Exits with [`EXIT_USAGE`].
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error`.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The exit status for `error`: [`EXIT_USAGE`] if anything in its chain is a usage or
/// configuration error, else [`EXIT_FAILURE`].
pub(crate) fn exit_status(error: &anyhow::Error) -> u8 {
    let usage = error
        .chain()
        .any(|e| e.is::<UsageError>() || e.is::<ConfigError>());
    if usage { EXIT_USAGE } else { EXIT_FAILURE }
}

/// The lines printed for `error`: `error: ...`, then one `caused by: ...` per cause, leaving out
/// causes whose text the line before already contains (errors that quote their source).
pub(crate) fn lines(error: &anyhow::Error) -> Vec<String> {
    let mut out = vec![format!("error: {error}")];
    let mut previous = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !previous.contains(&text) {
            out.push(format!("caused by: {text}"));
        }
        previous = text;
    }
    out
}

/// Prints `error` on stderr and returns the exit status for it.
pub(crate) fn report(error: &anyhow::Error) -> ExitCode {
    for line in lines(error) {
        eprintln!("{line}");
    }
    ExitCode::from(exit_status(error))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Origin;

    #[test]
    fn causes_already_quoted_by_their_parent_are_not_repeated() {
        // Goal: one line per distinct cause, in order.
        let root = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = anyhow::Error::new(root)
            .context("connect: refused")
            .context("read the status");
        assert_eq!(
            lines(&error),
            vec!["error: read the status", "caused by: connect: refused"]
        );
    }

    #[test]
    fn usage_and_config_errors_exit_2_anywhere_in_the_chain() {
        // Goal: the exit status looks through added context; other errors exit 1.
        let config = anyhow::Error::new(ConfigError::invalid(
            &Origin::File(PathBuf::from("b.toml")),
            "x",
            "bad",
        ))
        .context("load the broker configuration");
        assert_eq!(exit_status(&config), EXIT_USAGE);
        assert_eq!(exit_status(&usage("no").context("submit")), EXIT_USAGE);
        assert_eq!(
            exit_status(&anyhow::anyhow!("connection refused").context("submit")),
            EXIT_FAILURE
        );
    }
}
