//! The client commands: `submit`, `task`, `tasks`, `status`, `workers`.

mod api;
mod submit;

use anyhow::anyhow;
use majordodo_client::{StatusFilter, TasksQuery};

pub(crate) use api::Api;
use api::explain;
pub(crate) use submit::submit;

use crate::cli::{SimpleViewArgs, StatusArg, TaskArgs, TasksArgs};
use crate::output;

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `majordodo task <id>`.
pub(crate) async fn task(args: TaskArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let task = api
        .client
        .task(args.id)
        .await
        .map_err(|e| explain(e, "read the task", api.url()))?;
    let Some(task) = task else {
        return Err(anyhow!("task {} not found (or already purged)", args.id));
    };
    if args.json {
        print_json(&task)
    } else {
        print!("{}", output::task_details(&task));
        Ok(())
    }
}

/// `majordodo tasks`.
pub(crate) async fn tasks(args: TasksArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let status = match args.status {
        StatusArg::All => StatusFilter::All,
        other => StatusFilter::Only(
            majordodo_core::TaskStatus::parse(status_name(other))
                .expect("every StatusArg but All names a task status"),
        ),
    };
    let query = TasksQuery {
        max: Some(args.max),
        status,
        worker_id: args.worker,
        task_type: args.task_type,
        slot: args.slot,
        user_id: args.user,
        from_task_id: None,
    };
    let view = api
        .client
        .tasks(&query)
        .await
        .map_err(|e| explain(e, "list the tasks", api.url()))?;
    if args.json {
        return print_json(&view.tasks);
    }
    if view.tasks.is_empty() {
        eprintln!("no tasks match");
        return Ok(());
    }
    print!("{}", output::tasks_table(&view.tasks));
    if view.truncated
        || view.next_task_id.is_some()
        || view.tasks.len() as u64 >= u64::from(args.max)
    {
        eprintln!(
            "showing {} tasks; there may be more (raise --max or narrow the filters)",
            view.tasks.len()
        );
    }
    Ok(())
}

/// The name of a status in the API.
fn status_name(status: StatusArg) -> &'static str {
    match status {
        StatusArg::All => "all",
        StatusArg::Waiting => "waiting",
        StatusArg::Delayed => "delayed",
        StatusArg::Running => "running",
        StatusArg::Finished => "finished",
        StatusArg::Error => "error",
    }
}

/// `majordodo status`.
pub(crate) async fn status(args: SimpleViewArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let view = api
        .client
        .overview()
        .await
        .map_err(|e| explain(e, "read the status", api.url()))?;
    if args.json {
        return print_json(&view.status);
    }
    let connected = view
        .workers
        .iter()
        .filter(|w| w.status == "CONNECTED")
        .count();
    print!(
        "{}",
        output::status_details(api.url(), &view.status, Some(connected))
    );
    Ok(())
}

/// `majordodo workers`.
pub(crate) async fn workers(args: SimpleViewArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let workers = api
        .client
        .workers()
        .await
        .map_err(|e| explain(e, "list the workers", api.url()))?;
    if args.json {
        return print_json(&workers);
    }
    if workers.is_empty() {
        eprintln!("no workers known");
        return Ok(());
    }
    print!("{}", output::workers_table(&workers));
    Ok(())
}
