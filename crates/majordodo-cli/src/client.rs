//! The client commands: `submit`, `task`, `tasks`, `status`, `workers`.

mod api;
mod submit;

use anyhow::anyhow;
use majordodo_client::{DEFAULT_LIST_MAX_REQUESTS, ListEnd, ListLimits, StatusFilter, TasksQuery};

pub(crate) use api::Api;
use api::explain;
pub(crate) use submit::submit;

use crate::cli::{SimpleViewArgs, StatusArg, TaskArgs, TasksArgs};
use crate::output;
use crate::units::format_duration;

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

/// `majordodo tasks`: pages through the broker's answers until `--max` tasks are found or every
/// task was examined; says on stderr when more may match and how to continue.
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
        max: None,
        status,
        worker_id: args.worker,
        task_type: args.task_type,
        slot: args.slot,
        user_id: args.user,
        from_task_id: args.from_task_id,
    };
    let limits = ListLimits {
        max_tasks: args.max,
        max_requests: DEFAULT_LIST_MAX_REQUESTS,
        max_time: args.max_time,
    };
    let list = api
        .client
        .list_tasks(&query, limits)
        .await
        .map_err(|e| explain(e, "list the tasks", api.url()))?;
    if args.json {
        print_json(&list.tasks)?;
    } else if !list.tasks.is_empty() {
        print!("{}", output::tasks_table(&list.tasks));
    }
    let shown = list.tasks.len();
    match list.end {
        ListEnd::Complete if shown == 0 => eprintln!("no tasks match"),
        ListEnd::Complete => {}
        ListEnd::MaxTasks { next_task_id } => {
            let go_on = match next_task_id {
                Some(id) => format!("raise --max, or continue with --from-task-id {id}"),
                None => "raise --max or narrow the filters".to_owned(),
            };
            eprintln!("showing the first {shown} matching tasks (--max); more may match: {go_on}");
        }
        ListEnd::MaxRequests { next_task_id } | ListEnd::MaxTime { next_task_id } => {
            let bound = match list.end {
                ListEnd::MaxTime { .. } => format!(
                    "{} (--max-time; raise it or narrow the filters)",
                    format_duration(args.max_time)
                ),
                _ => format!("{} requests (the most one listing sends)", list.requests),
            };
            return Err(anyhow!(
                "the listing is incomplete: it stopped after {bound}, with {shown} matching \
                 tasks among the {} examined in {} requests; more may match: continue with \
                 --from-task-id {next_task_id}",
                list.scanned,
                list.requests
            ));
        }
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
