//! Retries against scripted brokers: a front on 127.0.0.1 that answers each request as a test
//! says (a refusal, a dropped connection, or the real broker's answer), so that lost answers,
//! refusals and leader redirections happen exactly when wanted. Checks that only what the
//! broker did not carry out is retried, that a retried submission keeps its idempotency keys
//! and creates its tasks once, and that retries stop in time.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ADMIN_TOKEN, Server, WAIT, quick_retries};
use majordodo_client::{Auth, Client, ClientError, RetryPolicy, Submitted, TaskSubmission};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the front received it.
#[derive(Clone, Debug)]
struct Received {
    /// Request line and headers.
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The idempotency keys of the submission's tasks, in order.
    fn keys(&self) -> Vec<Option<String>> {
        let body = self.json();
        let tasks = match body.get("tasks") {
            Some(Value::Array(tasks)) => tasks.clone(),
            _ => vec![body],
        };
        tasks
            .iter()
            .map(|t| t["idempotencyKey"].as_str().map(str::to_owned))
            .collect()
    }
}

/// What the front does with one request.
enum Reply {
    /// Answer with this status and JSON body.
    Answer(u16, String),
    /// Close the connection without answering.
    Close,
}

type Script =
    Arc<dyn Fn(usize, Received) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// A scripted HTTP front: request `n` (from 0) is answered by `script(n, request)`.
struct Front {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Front {
    async fn start(script: Script) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (script, log) = (script.clone(), log.clone());
                tokio::spawn(serve_one(socket, script, log));
            }
        });
        Front { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}/majordodo", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn client(&self, retry: RetryPolicy) -> Client {
        Client::builder(&self.url())
            .auth(Auth::bearer(ADMIN_TOKEN))
            .retry(retry)
            .build()
            .unwrap()
    }
}

/// Reads one request from `socket`, answers it per `script`, and closes the connection.
async fn serve_one(mut socket: TcpStream, script: Script, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request = Received {
        head,
        body: buf[head_end..head_end + length].to_vec(),
    };
    let n = {
        let mut log = log.lock().unwrap();
        log.push(request.clone());
        log.len() - 1
    };
    match script(n, request).await {
        Reply::Close => {}
        Reply::Answer(status, body) => {
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    }
    let _ = socket.shutdown().await;
}

/// Sends `request` to the real broker at `api` as the client sent it, and returns its answer.
async fn forward(api: &str, request: &Received) -> Reply {
    let answer = reqwest::Client::new()
        .post(api)
        .bearer_auth(ADMIN_TOKEN)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request.body.clone())
        .send()
        .await
        .expect("the broker answers");
    let status = answer.status().as_u16();
    Reply::Answer(status, answer.text().await.unwrap())
}

fn refusal(code: &str) -> Reply {
    Reply::Answer(
        503,
        format!(r#"{{"ok":false,"error":"{code}: refused for the test","retryable":true}}"#),
    )
}

#[tokio::test]
async fn a_submission_whose_answer_was_lost_is_sent_again_with_its_keys_and_created_once() {
    // Goal: the broker creates the tasks but the answer is lost (the connection drops); the
    // client sends the same request again with the same idempotency keys, and the broker
    // answers the tasks it created: one task per submission, the ids of the first creation.
    let server = Server::start().await;
    let api = server.api_url();
    let script: Script = Arc::new(move |n, request| {
        let api = api.clone();
        Box::pin(async move {
            let answer = forward(&api, &request).await;
            // Every first sending of a request loses its answer.
            if n % 2 == 0 { Reply::Close } else { answer }
        })
    });
    let front = Front::start(script).await;
    let client = front.client(quick_retries());
    let one = client
        .submit(&TaskSubmission::new("t", "admin", "one"))
        .await
        .unwrap();
    let batch = client
        .submit_many(&[
            TaskSubmission::new("t", "admin", "two"),
            TaskSubmission::new("t", "admin", "three").with_idempotency_key("mine"),
        ])
        .await
        .unwrap();
    let received = front.received();
    assert_eq!(received.len(), 4, "each request sent twice");
    assert_eq!(received[0].keys(), received[1].keys(), "same key again");
    assert_eq!(received[2].keys(), received[3].keys(), "same keys again");
    assert!(received[0].keys()[0].is_some(), "a fresh key was given");
    assert_eq!(
        received[3].keys()[1].as_deref(),
        Some("mine"),
        "the caller's key is kept"
    );
    let tasks = server.tasks().await;
    assert_eq!(
        tasks.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        vec!["one", "two", "three"],
        "each task created once"
    );
    assert_eq!(one, Submitted::Created(tasks[0].0));
    assert_eq!(
        batch,
        vec![
            Submitted::Created(tasks[1].0),
            Submitted::Created(tasks[2].0)
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn without_keys_a_submission_whose_answer_was_lost_is_not_sent_again() {
    // Goal: with idempotency keys off, a connection that fails after the request was sent is
    // returned to the caller (the task may exist), not retried.
    let script: Script = Arc::new(|_, _| Box::pin(async { Reply::Close }));
    let front = Front::start(script).await;
    let client = Client::builder(&front.url())
        .auth(Auth::bearer(ADMIN_TOKEN))
        .retry(quick_retries())
        .idempotency_keys(false)
        .build()
        .unwrap();
    let error = client
        .submit(&TaskSubmission::new("t", "admin", "x"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Transport(_)), "{error}");
    assert_eq!(front.received().len(), 1);
    assert_eq!(front.received()[0].keys(), vec![None]);
}

#[tokio::test]
async fn every_refusal_in_which_nothing_happened_is_retried_until_the_broker_serves() {
    // Goal: recovery_in_progress, broker_not_started, broker_overloaded and broker_not_leader
    // (without a leader named) are retried against the same URL, with the same key, until
    // the broker serves the request.
    let server = Server::start().await;
    let api = server.api_url();
    let script: Script = Arc::new(move |n, request| {
        let api = api.clone();
        Box::pin(async move {
            match n {
                0 => refusal("recovery_in_progress"),
                1 => refusal("broker_not_started"),
                2 => refusal("broker_overloaded"),
                3 => refusal("broker_not_leader"),
                _ => forward(&api, &request).await,
            }
        })
    });
    let front = Front::start(script).await;
    let created = front
        .client(quick_retries())
        .submit(&TaskSubmission::new("t", "admin", "x"))
        .await
        .unwrap();
    let received = front.received();
    assert_eq!(received.len(), 5);
    assert!(received.windows(2).all(|w| w[0].keys() == w[1].keys()));
    assert_eq!(created, Submitted::Created(server.tasks().await[0].0));
    server.stop().await;
}

#[tokio::test]
async fn a_broker_that_is_not_the_leader_sends_the_client_to_the_leader_it_names() {
    // Goal: broker_not_leader with a `leader` URL makes the client send the request there, and
    // the following requests too, without asking the follower again.
    let server = Server::start().await;
    let leader = server.api_url();
    let script: Script = Arc::new(move |_, _| {
        let leader = leader.clone();
        Box::pin(async move {
            Reply::Answer(
                503,
                format!(
                    r#"{{"ok":false,"error":"broker_not_leader: this broker is not the leader","retryable":true,"leader":"{leader}"}}"#
                ),
            )
        })
    });
    let follower = Front::start(script).await;
    let client = follower.client(quick_retries());
    let first = client
        .submit(&TaskSubmission::new("t", "admin", "a"))
        .await
        .unwrap();
    assert_eq!(client.url(), server.api_url());
    client
        .submit(&TaskSubmission::new("t", "admin", "b"))
        .await
        .unwrap();
    assert_eq!(follower.received().len(), 1, "asked once, then the leader");
    let tasks = server.tasks().await;
    assert_eq!(tasks.len(), 2);
    assert_eq!(first, Submitted::Created(tasks[0].0));
    server.stop().await;
}

#[tokio::test]
async fn outcome_unknown_and_client_errors_are_never_retried() {
    // Goal: a 500 outcome_unknown (the tasks may exist) and a 400 are returned at once.
    for (status, body) in [
        (
            500,
            r#"{"ok":false,"error":"outcome_unknown: the log failed during the write"}"#,
        ),
        (
            400,
            r#"{"ok":false,"error":"must not be negative","field":"maxattempts"}"#,
        ),
    ] {
        let script: Script =
            Arc::new(move |_, _| Box::pin(async move { Reply::Answer(status, body.to_owned()) }));
        let front = Front::start(script).await;
        let error = front
            .client(quick_retries())
            .submit(&TaskSubmission::new("t", "admin", "x"))
            .await
            .unwrap_err();
        assert!(!error.is_retryable(), "{error}");
        assert_eq!(front.received().len(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn retries_stop_once_the_time_limit_is_reached() {
    // Goal: a broker that is never available is retried with growing delays and given up
    // within max_elapsed (plus one attempt), with the last refusal returned.
    let script: Script = Arc::new(|_, _| Box::pin(async { refusal("broker_overloaded") }));
    let front = Front::start(script).await;
    let policy = RetryPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(80),
        max_elapsed: Duration::from_millis(500),
    };
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(WAIT, front.client(policy).status())
        .await
        .expect("gives up in time")
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&error, ClientError::Unavailable(m) if m.contains("broker_overloaded")),
        "{error}"
    );
    let attempts = front.received().len();
    assert!(attempts >= 4, "{attempts} attempts");
    // Delays are at least 10 ms (half of the first step): at most 500 / 10 + 1 attempts.
    assert!(attempts <= 51, "{attempts} attempts");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(front.received()[0].head.starts_with("GET "));
}
