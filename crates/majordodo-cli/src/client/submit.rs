//! `majordodo submit`: one task from flags, or many from JSON Lines.
//!
//! Every task, from flags or from a line, is checked locally by the same parser the broker uses
//! (`majordodo_proto::http::parse_action`), so a bad field is reported with its name (and line)
//! before anything is sent. With `--jsonl`, the whole input is checked first: one bad line and
//! nothing is submitted.
//!
//! Every task carries an idempotency key (`--idempotency-key`, a line's `idempotencyKey`, else a
//! fresh one from the client), and the client retries what the broker did not carry out for
//! `--retry-for` with the same keys, so a retry never creates a task twice.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use majordodo_client::{Submitted, TaskSubmission};
use majordodo_proto::http::{ActionRequest, parse_action};
use serde_json::{Map, Value, json};

use super::api::explain;
use super::{Api, waiting_note};
use crate::cli::SubmitArgs;
use crate::error::usage;
use crate::output::escape;
use crate::units::{format_rate, now_ms};

/// Owner of tasks submitted without `--user` by a token (the standalone's admin user).
const DEFAULT_USER: &str = "admin";

/// Largest input read for `--jsonl` or `--data-file`: the whole input is held in memory to be
/// checked before anything is sent, and 1 GiB is millions of tasks.
const MAX_INPUT_BYTES: u64 = 1 << 30;

/// Most bad lines listed before the rest are only counted.
const MAX_LINE_ERRORS_SHOWN: usize = 10;

/// Consecutive failed batches after which the rest is not sent: the broker is down or refuses
/// everything, and going on would only repeat the error.
const MAX_CONSECUTIVE_FAILED_BATCHES: usize = 3;

/// `majordodo submit`.
pub(crate) async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    match &args.jsonl {
        Some(path) => submit_many(&api, &args, path).await,
        None => submit_one(&api, &args).await,
    }
}

/// The fields given by flags, as JSON values of the API's field names.
fn flag_fields(args: &SubmitArgs, api: &Api) -> Map<String, Value> {
    let now = now_ms();
    let mut m = Map::new();
    if let Some(t) = &args.task_type {
        m.insert("tasktype".into(), t.clone().into());
    }
    let user = args
        .user
        .clone()
        .or_else(|| api.username().map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_USER.to_owned());
    m.insert("userid".into(), user.into());
    if let Some(n) = args.max_attempts {
        m.insert("maxattempts".into(), n.into());
    }
    if let Some(when) = args.deadline {
        m.insert("deadline".into(), when.resolve(now).into());
    }
    if let Some(when) = args.start_at {
        m.insert("requestedStartTime".into(), when.resolve(now).into());
    }
    if let Some(delay) = args.delay {
        let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        m.insert("requestedStartTime".into(), now.saturating_add(ms).into());
    }
    if let Some(slot) = &args.slot {
        m.insert("slot".into(), slot.clone().into());
    }
    if let Some(key) = &args.idempotency_key {
        m.insert("idempotencyKey".into(), key.clone().into());
    }
    if let Some(tx) = args.transaction {
        m.insert("transaction".into(), tx.into());
    }
    if let Some(cpu) = args.cpu {
        m.insert("cpu".into(), cpu.into());
    }
    if let Some(memory) = args.memory {
        m.insert("memory".into(), memory.into());
    }
    if !args.needs.is_empty() {
        let needs: Map<String, Value> = args
            .needs
            .iter()
            .map(|(d, n)| (d.clone(), (*n).into()))
            .collect();
        m.insert("needs".into(), needs.into());
    }
    m
}

/// Checks one task object with the broker's own parser.
fn check_task(mut fields: Map<String, Value>) -> Result<TaskSubmission, String> {
    if fields.contains_key("action") {
        return Err("action: is not a field of a task (write one task object per line)".into());
    }
    fields.insert("action".into(), "submitTask".into());
    let body = serde_json::to_vec(&Value::Object(fields)).map_err(|e| e.to_string())?;
    match parse_action(&body) {
        Ok(ActionRequest::SubmitTask(task)) => Ok(task),
        Ok(_) => Err("not a single task".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads a whole file, or stdin for `-`, bounded by [`MAX_INPUT_BYTES`].
fn read_input(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_string(&mut text)
            .context("read stdin")
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_INPUT_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("read {}", path.display()))
    };
    read.map_err(|e| usage(format!("{e:#}")))?;
    if text.len() as u64 > MAX_INPUT_BYTES {
        return Err(usage(format!(
            "{} is larger than {} bytes; split it",
            path.display(),
            MAX_INPUT_BYTES
        )));
    }
    Ok(text)
}

async fn submit_one(api: &Api, args: &SubmitArgs) -> anyhow::Result<()> {
    if args.task_type.is_none() {
        return Err(usage(
            "--type is required (or give many tasks with --jsonl FILE)",
        ));
    }
    let mut fields = flag_fields(args, api);
    let data = match (&args.data, &args.data_file) {
        (Some(data), _) => data.clone(),
        (None, Some(path)) => read_input(path)?,
        (None, None) => String::new(),
    };
    fields.insert("data".into(), data.into());
    let task = check_task(fields).map_err(|e| usage(format!("invalid task: {e}")))?;
    let answer = api
        .client
        .submit(&task)
        .await
        .map_err(|e| explain(e, "submit the task", &api.url()))?;
    match answer {
        Submitted::Created(id) => {
            if args.json {
                println!("{}", json!({ "taskId": id }));
            } else if let Some(tx) = args.transaction {
                println!(
                    "submitted task {id} in transaction {tx} (invisible until it is committed)"
                );
                return Ok(());
            } else {
                println!("submitted task {id}");
            }
            // Read back at once: a task that a connected worker can run is already assigned.
            if let Ok(Some(task)) = api.client.task(id).await
                && let Some(note) = waiting_note(api, &task).await
            {
                eprintln!("note: {note}");
            }
            Ok(())
        }
        Submitted::NotCreated(reason) => {
            if args.json {
                println!("{}", json!({ "taskId": 0, "notCreated": reason }));
            }
            Err(anyhow!("task not created: {}", escape(&reason)))
        }
    }
}

/// The progress bar of `--jsonl`: tasks sent, the rate rounded by [`format_rate`] (indicatif's
/// own `{per_sec}` prints four decimals), and the time left.
fn progress_style() -> ProgressStyle {
    ProgressStyle::with_template("{bar:40} {pos}/{len} tasks ({rate}, {eta} left) {msg}")
        .expect("the progress template is valid")
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = out.write_str(&format_rate(state.per_sec()));
            },
        )
}

/// One task of the input and where it came from.
#[derive(Debug)]
struct Line {
    number: usize,
    task: TaskSubmission,
}

/// Parses every non-empty line; all errors are collected.
fn parse_lines(text: &str, defaults: &Map<String, Value>) -> Result<Vec<Line>, Vec<String>> {
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => {
                errors.push(format!("line {number}: not a JSON object"));
                continue;
            }
            Err(e) => {
                errors.push(format!("line {number}: not valid JSON: {e}"));
                continue;
            }
        };
        let mut merged = defaults.clone();
        merged.extend(fields);
        match check_task(merged) {
            Ok(task) => tasks.push(Line { number, task }),
            Err(e) => errors.push(format!("line {number}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(tasks)
    } else {
        Err(errors)
    }
}

/// How one line ended.
enum Outcome {
    Submitted(u64),
    NotCreated(String),
    Failed(String),
}

async fn submit_many(api: &Api, args: &SubmitArgs, path: &Path) -> anyhow::Result<()> {
    let text = read_input(path)?;
    let defaults = flag_fields(args, api);
    let lines = match parse_lines(&text, &defaults) {
        Ok(lines) => lines,
        Err(errors) => {
            let shown: Vec<&str> = errors
                .iter()
                .take(MAX_LINE_ERRORS_SHOWN)
                .map(String::as_str)
                .collect();
            let more = errors.len().saturating_sub(MAX_LINE_ERRORS_SHOWN);
            let mut message = format!(
                "{} has {} invalid line(s); nothing was submitted:\n  {}",
                path.display(),
                errors.len(),
                shown.join("\n  ")
            );
            if more > 0 {
                message.push_str(&format!("\n  ... and {more} more"));
            }
            return Err(usage(message));
        }
    };
    if lines.is_empty() {
        return Err(usage(format!("{} holds no task", path.display())));
    }

    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(lines.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(progress_style());

    let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(lines.len());
    let mut consecutive_failures = 0;
    for batch in lines.chunks(args.batch_size as usize) {
        let numbers = batch.iter().map(|l| l.number);
        if consecutive_failures >= MAX_CONSECUTIVE_FAILED_BATCHES {
            outcomes.extend(numbers.map(|n| (n, Outcome::Failed("not sent".into()))));
            continue;
        }
        let tasks: Vec<TaskSubmission> = batch.iter().map(|l| l.task.clone()).collect();
        match api.client.submit_many(&tasks).await {
            Ok(answers) => {
                consecutive_failures = 0;
                for (n, answer) in numbers.zip(answers) {
                    let outcome = match answer {
                        Submitted::Created(id) => Outcome::Submitted(id),
                        Submitted::NotCreated(reason) => Outcome::NotCreated(reason),
                    };
                    outcomes.push((n, outcome));
                }
            }
            Err(error) => {
                consecutive_failures += 1;
                let why = error.to_string();
                progress.suspend(|| eprintln!("error: batch failed: {why}"));
                outcomes.extend(numbers.map(|n| (n, Outcome::Failed(why.clone()))));
            }
        }
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    report(path, &outcomes, args.json)
}

/// Prints the summary (or the JSON of every line's outcome) and fails if any task failed.
fn report(path: &Path, outcomes: &[(usize, Outcome)], json_out: bool) -> anyhow::Result<()> {
    let submitted = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Submitted(_)))
        .count();
    let mut not_created: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut failed: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, o) in outcomes {
        match o {
            Outcome::Submitted(_) => {}
            Outcome::NotCreated(why) => *not_created.entry(why).or_default() += 1,
            Outcome::Failed(why) => *failed.entry(why).or_default() += 1,
        }
    }
    let not_created_total: usize = not_created.values().sum();
    let failed_total: usize = failed.values().sum();
    if json_out {
        let lines: Vec<Value> = outcomes
            .iter()
            .map(|(n, o)| match o {
                Outcome::Submitted(id) => json!({"line": n, "taskId": id}),
                Outcome::NotCreated(why) => json!({"line": n, "notCreated": why}),
                Outcome::Failed(why) => json!({"line": n, "error": why}),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "submitted": submitted,
                "notCreated": not_created_total,
                "failed": failed_total,
                "results": lines,
            }))?
        );
    } else {
        let ids: Vec<u64> = outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Submitted(id) => Some(*id),
                _ => None,
            })
            .collect();
        let range = match (ids.iter().min(), ids.iter().max()) {
            (Some(lo), Some(hi)) if lo != hi => format!(" (ids {lo}..{hi})"),
            (Some(id), _) => format!(" (id {id})"),
            _ => String::new(),
        };
        println!(
            "{}: {} tasks, submitted {submitted}{range}, not created {not_created_total}, failed {failed_total}",
            path.display(),
            outcomes.len()
        );
        for (why, count) in &not_created {
            println!("  not created ({count}): {}", escape(why));
        }
        for (why, count) in &failed {
            println!("  failed ({count}): {}", escape(why));
        }
    }
    if failed_total > 0 {
        return Err(anyhow!(
            "{failed_total} of {} tasks were not submitted",
            outcomes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A terminal that keeps what the progress bar draws.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().expect("not poisoned").push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_progress_bar_shows_a_rounded_rate() {
        // Goal: the drawn bar shows the rate as format_rate writes it, not with four decimals.
        let screen = Screen::default();
        let bar = ProgressBar::with_draw_target(
            Some(1_000),
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(progress_style());
        bar.inc(500);
        bar.finish();
        let drawn = screen.0.lock().unwrap().clone();
        let rate = drawn
            .split("500/1000 tasks (")
            .nth(1)
            .and_then(|rest| rest.split("/s,").next())
            .unwrap_or_else(|| panic!("no rate in {drawn:?}"));
        let decimals = rate.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 1, "{rate:?} in {drawn:?}");
        assert!(
            !rate.is_empty()
                && rate
                    .chars()
                    .all(|c| c.is_ascii_digit() || ",.-".contains(c))
        );
    }

    fn defaults() -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("userid".into(), "admin".into());
        m
    }

    #[test]
    fn lines_take_defaults_and_keep_their_own_fields() {
        // Goal: a line's fields win over the flags' defaults; blank lines are skipped; numbers
        // may be JSON numbers or strings, as the API accepts.
        let text = "{\"tasktype\":\"a\",\"data\":\"x\"}\n\n{\"tasktype\":\"b\",\"userid\":\"bob\",\"maxattempts\":\"3\"}\n";
        let lines = parse_lines(text, &defaults()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0].number, lines[0].task.user_id.as_str()),
            (1, "admin")
        );
        assert_eq!(
            (lines[1].number, lines[1].task.user_id.as_str()),
            (3, "bob")
        );
        assert_eq!(lines[1].task.max_attempts, 3);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number_and_field() {
        // Goal: malformed JSON, non-objects and invalid fields are all reported, each with its
        // line number, and no task is returned.
        let text = "{\"tasktype\":\"a\"}\nnot json\n[1]\n{\"tasktype\":\"a\",\"maxattempts\":-1}\n{\"data\":\"no type\"}\n{\"action\":\"submitTask\",\"tasktype\":\"a\"}\n";
        let errors = parse_lines(text, &defaults()).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("line 2: not valid JSON"));
        assert!(errors[1].starts_with("line 3: not a JSON object"));
        assert!(
            errors[2].starts_with("line 4: maxattempts"),
            "{}",
            errors[2]
        );
        assert!(errors[3].starts_with("line 5: tasktype"), "{}", errors[3]);
        assert!(errors[4].starts_with("line 6: action"), "{}", errors[4]);
    }
}
