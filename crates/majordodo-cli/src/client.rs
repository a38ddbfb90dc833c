//! The client commands: `submit`, `task`, `tasks`, `status`, `workers`.

mod api;
mod submit;

use anyhow::anyhow;

use crate::error::usage;
use majordodo_client::{
    DEFAULT_LIST_MAX_REQUESTS, ListEnd, ListLimits, StatusFilter, TaskInfo, TasksQuery,
};
use majordodo_core::TaskStatus;
use tracing::debug;

pub(crate) use api::Api;
pub(crate) use api::explain;
pub(crate) use submit::submit;

use crate::cli::{SimpleViewArgs, StatusArg, TaskArgs, TasksArgs, TransactionCommand};
use crate::output;
use crate::units::format_duration;

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `majordodo cancel <id>`.
pub(crate) async fn cancel(args: TaskArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let was = api
        .client
        .cancel_task(args.id)
        .await
        .map_err(|e| explain(e, "cancel the task", &api.url()))?;
    if args.json {
        print_json(&serde_json::json!({"taskId": args.id, "previousStatus": was}))?;
    } else if was == "running" {
        println!(
            "cancelled task {} (it was running: its worker is told to stop it)",
            args.id
        );
    } else {
        println!("cancelled task {} (it was {was})", args.id);
    }
    Ok(())
}

/// `majordodo transaction begin|commit|rollback`.
pub(crate) async fn transaction(command: TransactionCommand) -> anyhow::Result<()> {
    match command {
        TransactionCommand::Begin(args) => {
            let api = Api::new(&args.client)?;
            let id = api
                .client
                .begin_transaction()
                .await
                .map_err(|e| explain(e, "begin a transaction", &api.url()))?;
            if args.json {
                print_json(&serde_json::json!({ "transaction": id }))?;
            } else {
                println!("transaction {id}");
            }
        }
        TransactionCommand::Commit(args) => {
            let api = Api::new(&args.client)?;
            api.client
                .commit_transaction(args.id)
                .await
                .map_err(|e| explain(e, "commit the transaction", &api.url()))?;
            println!("committed transaction {}", args.id);
        }
        TransactionCommand::Rollback(args) => {
            let api = Api::new(&args.client)?;
            api.client
                .rollback_transaction(args.id)
                .await
                .map_err(|e| explain(e, "roll back the transaction", &api.url()))?;
            println!("rolled back transaction {}", args.id);
        }
    }
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

/// How many times, and how far apart, [`waiting_note`] reads a waiting task again before
/// concluding that no connected worker serves its type (bounded: at most about half a second).
const ASSIGNMENT_RECHECKS: u32 = 10;
const ASSIGNMENT_RECHECK_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Why `task`, if it is waiting, may wait for long: no worker is connected, or no connected
/// worker serves its type. Best effort: `None` when the task is not waiting, when a worker runs
/// tasks of its type (it waits its turn), or when the broker's views do not tell.
///
/// The `workers` view does not list the types a worker serves, so this reads what follows from
/// assignment: a task is assigned when it is created (or, queued behind others, by the broker's
/// next write) when a connected worker serving its type has room, so a task still waiting a
/// moment later with no task of its type running means that no connected worker serves the
/// type (or those that do are full with other types).
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
    // A task created while others wait is queued behind them and assigned by the broker's next
    // write, which the read-back may precede: look again before saying nobody serves it.
    for _ in 0..ASSIGNMENT_RECHECKS {
        tokio::time::sleep(ASSIGNMENT_RECHECK_PAUSE).await;
        let again = api.client.task(task.task_id).await.ok()??;
        if again.status != TaskStatus::Waiting.as_str() {
            return None;
        }
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

/// Most bytes of an archive `codepool create` reads: above any broker's default limit, so the
/// broker's own limit (and its error naming it) decides.
const MAX_ARCHIVE_FILE_BYTES: u64 = 1 << 30;

/// `majordodo codepool ...`.
pub(crate) async fn codepool(command: crate::cli::CodepoolCommand) -> anyhow::Result<()> {
    use crate::cli::CodepoolCommand as C;
    match command {
        C::Create {
            client,
            id,
            archive,
            ttl,
        } => {
            let len = std::fs::metadata(&archive)
                .map_err(|e| usage(format!("read {}: {e}", archive.display())))?
                .len();
            if len > MAX_ARCHIVE_FILE_BYTES {
                return Err(usage(format!(
                    "{} is {len} bytes: too large for a code pool",
                    archive.display()
                )));
            }
            let data = std::fs::read(&archive)
                .map_err(|e| usage(format!("read {}: {e}", archive.display())))?;
            if majordodo_proto::archive::detect(&data).is_none() {
                return Err(usage(format!(
                    "{} is not a zip or tar.gz archive",
                    archive.display()
                )));
            }
            let ttl_ms = ttl.map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
            let api = Api::new(&client)?;
            api.client
                .create_code_pool(&id, ttl_ms, data)
                .await
                .map_err(|e| explain(e, "create the code pool", &api.url()))?;
            println!("code pool {id} created ({len} bytes)");
            Ok(())
        }
        C::Delete { client, id } => {
            let api = Api::new(&client)?;
            api.client
                .delete_code_pool(&id)
                .await
                .map_err(|e| explain(e, "delete the code pool", &api.url()))?;
            println!("code pool {id} deleted");
            Ok(())
        }
        C::Show { client, id, json } => {
            let api = Api::new(&client)?;
            let pool = api
                .client
                .code_pool(&id)
                .await
                .map_err(|e| explain(e, "show the code pool", &api.url()))?;
            let Some(pool) = pool else {
                anyhow::bail!("code pool {id} does not exist");
            };
            if json {
                return print_json(&pool);
            }
            println!("{}", code_pool_line(&pool));
            Ok(())
        }
        C::List { client, max, json } => {
            let api = Api::new(&client)?;
            let view = api
                .client
                .code_pools(Some(max), None)
                .await
                .map_err(|e| explain(e, "list the code pools", &api.url()))?;
            if json {
                return print_json(&view.code_pools);
            }
            if view.code_pools.is_empty() {
                eprintln!("no code pools");
            }
            for pool in &view.code_pools {
                println!("{}", code_pool_line(pool));
            }
            if view.truncated {
                eprintln!("(more pools follow; raise --max)");
            }
            Ok(())
        }
    }
}

fn code_pool_line(p: &majordodo_proto::http::codepool::CodePoolInfo) -> String {
    let ttl = if p.ttl == 0 {
        "forever".to_owned()
    } else {
        format!("{} ms", p.ttl)
    };
    format!(
        "{}  {} bytes in {} chunk(s)  ttl {ttl}  created {}  used by {} task(s)  sha256 {}",
        output::escape(&p.code_pool_id),
        p.size,
        p.chunks,
        p.creation_timestamp,
        p.tasks,
        p.sha256
    )
}

pub(crate) async fn service_level(args: crate::cli::ServiceLevelArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let level = args.group.map(|g| (g, args.resources.clone()));
    api.client
        .set_service_level(&args.user, level.clone(), args.weight.unwrap_or(0))
        .await
        .map_err(|e| explain(e, "set the service level", &api.url()))?;
    if let Some(w) = args.weight {
        println!("user {} now has weight {w}", args.user);
    }
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

pub(crate) async fn quota(args: crate::cli::QuotaArgs) -> anyhow::Result<()> {
    use majordodo_proto::http::request::QuotaTenant;
    let api = Api::new(&args.client)?;
    let tenant = match (&args.user, args.group) {
        (Some(u), _) => QuotaTenant::User(u.clone()),
        (None, Some(g)) => QuotaTenant::Group(g),
        (None, None) => return Err(usage("give --user or --group".to_string())),
    };
    let quota = (!args.reset).then(|| args.amounts.clone());
    api.client
        .set_quota(tenant.clone(), quota.clone())
        .await
        .map_err(|e| explain(e, "set the quota", &api.url()))?;
    match quota {
        Some(q) => {
            let text: Vec<String> = q
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(d, n)| format!("{d}={n}"))
                .collect();
            println!("{tenant} now has quota {}", text.join(", "));
        }
        None => println!("{tenant} has no quota now"),
    }
    Ok(())
}

pub(crate) async fn worker_credentials(
    command: crate::cli::WorkerCredentialsCommand,
) -> anyhow::Result<()> {
    use crate::cli::WorkerCredentialsCommand as C;
    match command {
        C::Add {
            client,
            worker_id,
            output,
            force,
            comment,
        } => {
            let path = output.unwrap_or_else(|| format!("{worker_id}.credential").into());
            // Refused before anything is issued, so a typo costs no credential.
            if !force && std::fs::symlink_metadata(&path).is_ok() {
                return Err(usage(format!(
                    "{} exists; give another --output, or --force to overwrite it",
                    path.display()
                )));
            }
            let api = Api::new(&client)?;
            let answer = api
                .client
                .add_worker_credential(&worker_id, comment)
                .await
                .map_err(|e| explain(e, "issue the worker credential", &api.url()))?;
            let field = |name: &str| {
                answer[name]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow::anyhow!("the broker's answer has no {name}"))
            };
            let secret = field("secret")?;
            let file = majordodo_proto::worker::CredentialFile::parse(&format!(
                "{}\ncredential_id = {}\nworker_id = {}\nsecret = {secret}\n",
                majordodo_proto::worker::CREDENTIAL_FILE_HEADER,
                field("credentialId")?,
                field("workerId")?,
            ))
            .map_err(|e| anyhow::anyhow!("the broker answered an unusable credential: {e}"))?;
            write_private_file(&path, &file.to_text(), force).map_err(|e| {
                anyhow::anyhow!(
                    "credential {} was issued but could not be written to {}: {e}; revoke it \
                     (majordodo worker-credentials revoke {}) and issue another",
                    file.credential_id,
                    path.display(),
                    file.credential_id
                )
            })?;
            println!(
                "issued credential {} for worker {}, written to {} (mode 0600)",
                file.credential_id,
                file.worker_id,
                path.display()
            );
            println!(
                "start the worker with: majordodo worker --credential-file {} ...",
                path.display()
            );
            Ok(())
        }
        C::List {
            client,
            worker_id,
            json,
        } => {
            let api = Api::new(&client)?;
            let answer = api
                .client
                .worker_credentials(worker_id)
                .await
                .map_err(|e| explain(e, "list the worker credentials", &api.url()))?;
            let list = answer["credentials"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if json {
                println!("{}", serde_json::Value::Array(list));
                return Ok(());
            }
            println!(
                "{:<20} {:<20} {:<24} {:<8} COMMENT",
                "CREDENTIAL", "WORKER", "CREATED", "STATE"
            );
            for c in &list {
                println!(
                    "{:<20} {:<20} {:<24} {:<8} {}",
                    c["credentialId"].as_str().unwrap_or(""),
                    c["workerId"].as_str().unwrap_or(""),
                    crate::output::time_or_dash(c["created"].as_i64().unwrap_or(0)),
                    if c["revoked"].as_bool() == Some(true) {
                        "revoked"
                    } else {
                        "active"
                    },
                    c["comment"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        C::Revoke {
            client,
            credential_id,
        } => {
            let api = Api::new(&client)?;
            api.client
                .revoke_worker_credential(&credential_id)
                .await
                .map_err(|e| explain(e, "revoke the worker credential", &api.url()))?;
            println!("credential {credential_id} revoked; its worker's connection is closed");
            Ok(())
        }
    }
}

/// Writes `text` to a new file of mode 0600 (replacing an existing one only with `force`).
fn write_private_file(path: &std::path::Path, text: &str, force: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    // An existing file keeps its mode when overwritten: make it private too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
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
