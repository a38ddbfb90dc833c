//! The typed client against a real broker serving its HTTP API on 127.0.0.1: submissions one by
//! one and in batches, every read, both kinds of credentials, and each kind of error with its
//! retryability.

mod common;

use common::{ADMIN_TOKEN, ALICE_PASSWORD, Server};
use majordodo_broker::http::HttpConfig;
use majordodo_broker::http::auth::write_token_file;
use majordodo_client::{
    ADMIN_TOKEN_FILE, Auth, Client, ClientError, ListEnd, ListLimits, RetryPolicy, StatusFilter,
    Submitted, TaskSubmission, TasksOverviewQuery, TasksQuery,
};
use majordodo_core::TaskStatus;
use tokio::net::TcpListener;

#[tokio::test]
async fn submitted_tasks_are_read_back_through_every_view() {
    // Goal: one task and a batch are created (a busy slot answers NotCreated), then task, tasks
    // (filtered and paged), tasks_overview, status, workers and overview read them back.
    let server = Server::start().await;
    let c = server.admin();
    let mut one = TaskSubmission::new("build", "alice", "payload");
    one.slot = Some("s".into());
    one.max_attempts = 3;
    let Submitted::Created(id) = c.submit(&one).await.unwrap() else {
        panic!("created")
    };
    let batch = vec![
        TaskSubmission::new("build", "bob", "b1"),
        one.clone(),
        TaskSubmission::new("test", "bob", "b2"),
    ];
    let out = c.submit_many(&batch).await.unwrap();
    assert!(out[0].task_id().is_some_and(|i| i > id));
    assert_eq!(
        out[1],
        Submitted::NotCreated("slot s already assigned".into())
    );
    assert!(out[2].task_id() > out[0].task_id());

    let t = c.task(id).await.unwrap().expect("known task");
    assert_eq!(
        (t.user_id.as_str(), t.task_type.as_str(), t.data.as_str()),
        ("alice", "build", "payload")
    );
    assert_eq!(
        (t.status.as_str(), t.maxattempts, t.slot.as_deref()),
        ("waiting", 3, Some("s"))
    );
    assert_eq!(c.task(999_999).await.unwrap(), None);

    let all = c.tasks(&TasksQuery::default()).await.unwrap();
    assert_eq!(all.count, 3);
    let bob = c
        .tasks(&TasksQuery {
            user_id: Some("bob".into()),
            status: StatusFilter::Only(TaskStatus::Waiting),
            task_type: Some("test".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bob.tasks.len(), 1);
    assert_eq!(bob.tasks[0].data, "b2");
    let page = c
        .tasks(&TasksQuery {
            max: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 2);
    let rest = c
        .tasks(&TasksQuery {
            max: Some(2),
            from_task_id: page.next_task_id,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.tasks.len(), 1);
    assert_eq!(rest.next_task_id, None);

    let counts = c
        .tasks_overview(&TasksOverviewQuery::default())
        .await
        .unwrap();
    assert_eq!(counts.tasks.get("build"), Some(&2));
    assert_eq!(counts.count, 3);
    let status = c.status().await.unwrap();
    assert_eq!(
        (status.status.as_str(), status.tasks, status.waitingtasks),
        ("LEADER", 3, 3)
    );
    assert_eq!(c.workers().await.unwrap(), vec![]);
    assert_eq!(c.overview().await.unwrap().status.waiting_tasks, 3);
    server.stop().await;
}

#[tokio::test]
async fn listings_page_past_the_scan_budget_until_max_or_the_end() {
    // Goal: with more tasks than one scan budget, list_tasks follows nextTaskId to the matches
    // behind the budget, stops at max_tasks with where to continue, restarts a status listing
    // whose index was cut in id order, and reports the request and time bounds.
    let server = Server::start_with(HttpConfig {
        scan_budget: 5,
        ..HttpConfig::default()
    })
    .await;
    let c = server.admin();
    let mut batch: Vec<TaskSubmission> = (0..12)
        .map(|i| TaskSubmission::new("filler", "bob", i.to_string()))
        .collect();
    batch.push(TaskSubmission::new("rare", "bob", "13"));
    batch.push(TaskSubmission::new("rare", "bob", "14"));
    c.submit_many(&batch).await.unwrap();
    let rare = TasksQuery {
        task_type: Some("rare".into()),
        ..Default::default()
    };
    let one = c.tasks(&rare).await.unwrap();
    assert!(
        one.tasks.is_empty() && one.truncated,
        "one answer stops at the budget"
    );

    let ids = |tasks: &[majordodo_client::TaskInfo]| -> Vec<u64> {
        tasks.iter().map(|t| t.task_id).collect()
    };
    let all = c.list_tasks(&rare, ListLimits::default()).await.unwrap();
    assert_eq!(ids(&all.tasks), vec![13, 14]);
    assert_eq!(
        (all.end, all.requests, all.scanned),
        (ListEnd::Complete, 3, 14)
    );
    assert!(all.in_id_order);

    let filler = TasksQuery {
        task_type: Some("filler".into()),
        ..Default::default()
    };
    let first = ListLimits {
        max_tasks: 4,
        ..ListLimits::default()
    };
    let page = c.list_tasks(&filler, first).await.unwrap();
    assert_eq!(ids(&page.tasks), vec![1, 2, 3, 4]);
    assert_eq!(
        page.end,
        ListEnd::MaxTasks {
            next_task_id: Some(5)
        }
    );
    let rest = c
        .list_tasks(
            &TasksQuery {
                from_task_id: Some(11),
                ..filler.clone()
            },
            ListLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(ids(&rest.tasks), vec![11, 12]);
    assert_eq!(rest.end, ListEnd::Complete);

    // The waiting index holds 14 tasks: more than the budget, so it is cut and the listing goes
    // over the tasks in id order instead.
    let waiting = TasksQuery {
        status: StatusFilter::Only(TaskStatus::Waiting),
        ..rare.clone()
    };
    let found = c.list_tasks(&waiting, ListLimits::default()).await.unwrap();
    assert_eq!(ids(&found.tasks), vec![13, 14]);
    assert_eq!(found.end, ListEnd::Complete);
    assert!(found.in_id_order);
    let few = c
        .list_tasks(
            &TasksQuery {
                status: StatusFilter::Only(TaskStatus::Waiting),
                ..Default::default()
            },
            first,
        )
        .await
        .unwrap();
    assert_eq!(few.tasks.len(), 4);
    assert_eq!(few.end, ListEnd::MaxTasks { next_task_id: None });
    assert!(!few.in_id_order);

    let one_request = ListLimits {
        max_requests: 1,
        ..ListLimits::default()
    };
    let cut = c.list_tasks(&rare, one_request).await.unwrap();
    assert!(cut.tasks.is_empty());
    assert_eq!(cut.end, ListEnd::MaxRequests { next_task_id: 6 });
    assert!(cut.end.stopped_early());
    let no_time = ListLimits {
        max_time: std::time::Duration::ZERO,
        ..ListLimits::default()
    };
    let cut = c.list_tasks(&rare, no_time).await.unwrap();
    assert_eq!(
        (cut.end, cut.requests),
        (ListEnd::MaxTime { next_task_id: 6 }, 1)
    );
    server.stop().await;
}

#[tokio::test]
async fn credentials_are_checked_and_refusals_are_typed() {
    // Goal: wrong credentials are Unauthorized, another user's userid is Forbidden naming the
    // field, a bad field is BadRequest naming it; none is retryable.
    let server = Server::start().await;
    let alice = server.client(Auth::basic("alice", ALICE_PASSWORD));
    assert!(
        alice
            .submit(&TaskSubmission::new("t", "alice", ""))
            .await
            .unwrap()
            .task_id()
            .is_some()
    );

    for auth in [
        Auth::None,
        Auth::basic("alice", "nope"),
        Auth::bearer("mdt_wrong"),
    ] {
        let e = server.client(auth.clone()).status().await.unwrap_err();
        assert!(matches!(e, ClientError::Unauthorized(_)), "{auth:?}: {e}");
        assert!(!e.is_retryable());
    }
    let e = alice
        .submit(&TaskSubmission::new("t", "bob", ""))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Forbidden { .. }), "{e}");
    assert_eq!(e.field(), Some("userid"));
    let mut bad = TaskSubmission::new("t", "alice", "");
    bad.max_attempts = 5_000;
    let e = alice
        .submit_many(&[TaskSubmission::new("t", "alice", ""), bad])
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("tasks[1].maxattempts"), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(
        server.admin().status().await.unwrap().tasks,
        1,
        "refused batches create nothing"
    );
    server.stop().await;
}

#[tokio::test]
async fn token_file_authenticates_like_the_standalone_admin() {
    // Goal: a token written by write_token_file (as standalone does) is read back by
    // Auth::from_token_file and accepted; an empty file is refused with a clear error.
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ADMIN_TOKEN_FILE);
    write_token_file(&path, ADMIN_TOKEN).unwrap();
    let c = server.client(Auth::from_token_file(&path).unwrap());
    assert_eq!(c.status().await.unwrap().status, "LEADER");
    std::fs::write(&path, "\n").unwrap();
    assert!(matches!(
        Auth::from_token_file(&path),
        Err(ClientError::TokenFile { .. })
    ));
    assert!(matches!(
        Auth::from_token_file(&dir.path().join("missing")),
        Err(ClientError::TokenFile { .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn unavailable_broker_errors_are_retryable() {
    // Goal: a stopped broker answers Unavailable (retryable); a closed port is a retryable
    // transport error. (Retries are off, to see the errors themselves.)
    let mut server = Server::start().await;
    let c = Client::builder(&server.api_url())
        .auth(Auth::bearer(ADMIN_TOKEN))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    // Stop the dispatcher only: the HTTP server keeps answering, without a broker behind it.
    let broker = server.broker.take().unwrap();
    server.stop.cancel();
    broker.wait().await.unwrap();
    let e = c.status().await.unwrap_err();
    assert!(
        matches!(e, ClientError::Unavailable(ref m) if m.contains("broker_not_started")),
        "{e}"
    );
    assert!(e.is_retryable());
    let e = c
        .submit(&TaskSubmission::new("t", "u", ""))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");

    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let e = Client::builder(&format!("http://{closed}"))
        .retry(RetryPolicy::none())
        .build()
        .unwrap()
        .status()
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Transport(_)) && e.is_retryable(),
        "{e}"
    );
    server.stop().await;
}
