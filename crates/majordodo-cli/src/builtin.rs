//! Executors built into the binary, for trying Majordodo out without writing a program. None of
//! them runs anything from the task's data: `echo` returns it, `noop` ignores it, `sleep` reads
//! a duration from it, `fail` uses it as the error text.

use std::sync::Arc;
use std::time::Duration;

use majordodo_worker::{TaskExecutor, TaskFailure, executor_fn};

use crate::units::{format_duration, parse_duration};

/// Names of the built-in executors, which are also the task types they run in `standalone`.
pub(crate) const NAMES: [&str; 4] = ["echo", "noop", "sleep", "fail"];

/// Longest `sleep` accepted: long enough to watch a running task, short enough that a typo does
/// not hold a slot for days.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(3_600);

/// A built-in executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Builtin {
    /// Finishes with the task's data as the result.
    Echo,
    /// Finishes with an empty result.
    Noop,
    /// Sleeps for the duration in the data (`2s`, `500ms`), then finishes.
    Sleep,
    /// Fails the attempt, with the data (or a fixed text) as the error.
    Fail,
}

impl Builtin {
    /// The executor called `name`.
    pub(crate) fn parse(name: &str) -> Option<Builtin> {
        match name {
            "echo" => Some(Builtin::Echo),
            "noop" => Some(Builtin::Noop),
            "sleep" => Some(Builtin::Sleep),
            "fail" => Some(Builtin::Fail),
            _ => None,
        }
    }

    /// One line saying what it does.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Builtin::Echo => "result = data",
            Builtin::Noop => "empty result",
            Builtin::Sleep => "sleeps for the duration in data, e.g. 2s",
            Builtin::Fail => "fails with data as the error",
        }
    }

    /// The executor.
    pub(crate) fn executor(self) -> Arc<dyn TaskExecutor> {
        match self {
            Builtin::Echo => executor_fn(|task| async move { Ok(task.data) }),
            Builtin::Noop => executor_fn(|_| async { Ok(String::new()) }),
            Builtin::Sleep => executor_fn(|task| async move {
                let d = parse_duration(&task.data)
                    .map_err(|e| TaskFailure::new(format!("sleep: {e}")))?;
                if d > MAX_SLEEP {
                    return Err(TaskFailure::new(format!(
                        "sleep: {} is longer than the limit of {}",
                        format_duration(d),
                        format_duration(MAX_SLEEP)
                    )));
                }
                tokio::time::sleep(d).await;
                Ok(format!("slept {}", format_duration(d)))
            }),
            Builtin::Fail => executor_fn(|task| async move {
                Err(TaskFailure::new(if task.data.is_empty() {
                    "failed on purpose".to_owned()
                } else {
                    task.data
                }))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use majordodo_worker::Task;

    use super::*;

    fn task(data: &str) -> Task {
        Task {
            task_id: 1,
            attempt: 1,
            task_type: "t".into(),
            user_id: "u".into(),
            data: data.into(),
            codepool: None,
            mode: None,
            resources: Vec::new().into(),
            needs: Default::default(),
            codepool_dir: None,
            cancel: Default::default(),
        }
    }

    #[tokio::test]
    async fn builtins_do_what_their_names_say() {
        // Goal: echo returns the data, noop nothing, fail fails with the data, sleep refuses bad
        // or too long durations and finishes a short one.
        assert_eq!(
            Builtin::Echo.executor().execute(task("hi")).await,
            Ok("hi".into())
        );
        assert_eq!(
            Builtin::Noop.executor().execute(task("hi")).await,
            Ok(String::new())
        );
        assert_eq!(
            Builtin::Fail.executor().execute(task("boom")).await,
            Err(TaskFailure::new("boom"))
        );
        assert_eq!(
            Builtin::Sleep.executor().execute(task("1ms")).await,
            Ok("slept 1ms".into())
        );
        assert!(
            Builtin::Sleep
                .executor()
                .execute(task("forever"))
                .await
                .is_err()
        );
        assert!(Builtin::Sleep.executor().execute(task("2h")).await.is_err());
        for name in NAMES {
            assert!(Builtin::parse(name).is_some(), "{name}");
        }
    }
}
