//! The client commands: `submit`, `task`, `tasks`, `status`, `workers`.

mod api;
mod submit;

use anyhow::anyhow;
use majordodo_client::{
    DEFAULT_LIST_MAX_REQUESTS, ListEnd, ListLimits, StatusFilter, TaskInfo, TasksQuery,
};
use majordodo_core::TaskStatus;
use tracing::debug;

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
        .map_err(|e| explain(e, "read the task", &api.url()))?;
    let Some(task) = task else {
        return Err(anyhow!("task {} not found (or already purged)", args.id));
    };
    if args.json {
        print_json(&task)?;
    } else {
        print!("{}", output::task_details(&task));
    }
    if let Some(note) = waiting_note(&api, &task).await {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// Why `task`, if it is waiting, may wait for long: no worker is connected, or no connected
/// worker serves its type. Best effort: `None` when the task is not waiting, when a worker runs
/// tasks of its type (it waits its turn), or when the broker's views do not tell.
///
/// The `workers` view does not list the types a worker serves, so this reads what follows from
/// assignment: a task is assigned as soon as it is created when a connected worker serving its
/// type has room, so a waiting task with no task of its type running means that no connected
/// worker serves the type (or those that do are full with other types).
pub(crate) async fn waiting_note(api: &Api, task: &TaskInfo) -> Option<String> {
    if task.status != TaskStatus::Waiting.as_str() {
        return None;
    }
    let (id, task_type) = (task.task_id, output::escape(&task.task_type));
    let overview = api
        .client
        .overview()
        .await
        .inspect_err(|error| debug!(%error, "read the workers for a note"))
        .ok()?;
    let connected = overview
        .workers
        .iter()
        .filter(|w| w.status == "CONNECTED")
        .count();
    if connected == 0 {
        return Some(format!(
            "no worker is connected: task {id} waits until a worker serving type {task_type} \
             connects (see `majordodo workers`)"
        ));
    }
    let running = api
        .client
        .tasks(&TasksQuery {
            max: Some(1),
            status: StatusFilter::Only(TaskStatus::Running),
            task_type: Some(task.task_type.clone()),
            ..TasksQuery::default()
        })
        .await
        .inspect_err(|error| debug!(%error, "read the running tasks for a note"))
        .ok()?;
    if !running.tasks.is_empty() || running.truncated {
        return None;
    }
    let workers = match connected {
        1 => "1 worker connected".to_owned(),
        n => format!("{n} workers connected"),
    };
    Some(if overview.status.running_tasks == 0 {
        format!(
            "no connected worker serves type {task_type} ({workers}, running nothing): task {id} \
             waits until one that does connects (see `majordodo workers`)"
        )
    } else {
        format!(
            "no connected worker is running type {task_type} ({workers}): none serves it, or \
             those that do are full; task {id} waits (see `majordodo workers`)"
        )
    })
}

/// `majordodo tasks`: pages through the broker's answers until `--max` tasks are found or every
/// task was examined; says on stderr when more may match and how to continue.
pub(crate) async fn tasks(args: TasksArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let status = match args.status {
        StatusArg::All => StatusFilter::All,
        other => StatusFilter::Only(
            TaskStatus::parse(status_name(other))
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
        .map_err(|e| explain(e, "list the tasks", &api.url()))?;
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

/// `majordodo status`: the broker's counts and, for a broker of a replicated cluster, the
/// leader and every live broker with its position and lag.
pub(crate) async fn status(args: SimpleViewArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let view = api
        .client
        .overview()
        .await
        .map_err(|e| explain(e, "read the status", &api.url()))?;
    let cluster = api
        .client
        .status()
        .await
        .map_err(|e| explain(e, "read the status", &api.url()))?
        .cluster;
    if args.json {
        let mut value = serde_json::to_value(&view.status)?;
        if let (Some(cluster), Some(object)) = (&cluster, value.as_object_mut()) {
            object.insert("cluster".to_owned(), serde_json::to_value(cluster)?);
        }
        return print_json(&value);
    }
    let connected = view
        .workers
        .iter()
        .filter(|w| w.status == "CONNECTED")
        .count();
    print!(
        "{}",
        output::status_details(&api.url(), &view.status, Some(connected))
    );
    if let Some(cluster) = &cluster {
        print!("{}", output::cluster_details(cluster));
    }
    Ok(())
}

/// `majordodo workers`.
pub(crate) async fn workers(args: SimpleViewArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let workers = api
        .client
        .workers()
        .await
        .map_err(|e| explain(e, "list the workers", &api.url()))?;
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

pub(crate) async fn service_level(args: crate::cli::ServiceLevelArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let level = args.group.map(|g| (g, args.resources.clone()));
    api.client
        .set_service_level(&args.user, level.clone())
        .await
        .map_err(|e| explain(e, "set the service level", &api.url()))?;
    match level {
        Some((group, resources)) if resources.is_empty() => {
            println!("user {} is now in group {group}", args.user)
        }
        Some((group, resources)) => println!(
            "user {} is now in group {group}, using {}",
            args.user,
            resources.join(", ")
        ),
        None => println!("user {} is back to the default service level", args.user),
    }
    Ok(())
}

pub(crate) async fn priority(args: crate::cli::PriorityArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    api.client
        .set_task_priority(args.id, args.priority)
        .await
        .map_err(|e| explain(e, "change the priority", &api.url()))?;
    println!("task {} now has priority {}", args.id, args.priority);
    Ok(())
}
