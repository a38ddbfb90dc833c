//! Per-worker credentials, black-box: issued, listed and revoked over the real HTTP API, proven
//! by workers speaking raw frames to the real worker listener. A credential connects only as
//! its worker id and only with its secret; revoking it kills its live connection (the worker's
//! task is then retried on another worker) and refuses it from then on; the shared secret is
//! refused unless the legacy mode is on; credentials survive a restart through the log and
//! through a snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::{SinkExt, StreamExt};
use majordodo_broker::http::auth::token_digest;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, SystemClock};
use majordodo_core::{DefaultGroupMapper, LeaderConfig};
use majordodo_log::{CommitLog, MemoryLog, MemoryStore, SnapshotStore};
use majordodo_proto::worker::{
    Capacity, Connect, CredentialAuth, Hello, Message, SharedSecret, WorkerCodec, random_nonce,
    verify_credential_broker_proof, worker_proof,
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bound on every wait, so a bug fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);
const ADMIN_TOKEN: &str = "mdt_admin-token-for-credentials";
const USER_TOKEN: &str = "mdt_user-token-for-credentials";
const SHARED: &[u8] = b"the legacy shared secret";

fn http_config() -> HttpConfig {
    HttpConfig {
        users: vec![
            UserConfig {
                name: "admin".into(),
                role: UserRole::Admin,
                password_hash: None,
                token_sha256: Some(token_digest(ADMIN_TOKEN)),
            },
            UserConfig {
                name: "5".into(),
                role: UserRole::User,
                password_hash: None,
                token_sha256: Some(token_digest(USER_TOKEN)),
            },
        ],
        ..HttpConfig::default()
    }
}

/// A broker on a memory log (and, if given, a snapshot directory), its HTTP API and a worker
/// listener.
struct Node {
    broker: Option<Broker>,
    handle: BrokerHandle,
    app: Router,
    workers: SocketAddr,
    stop: CancellationToken,
}

impl Node {
    async fn start(
        store: &MemoryStore,
        snapshots: Option<&std::path::Path>,
        listener: ListenerConfig,
    ) -> Node {
        let stop = CancellationToken::new();
        let snapshots = snapshots.map(|dir| Arc::new(SnapshotStore::open(dir).unwrap()));
        let broker = Broker::start(
            BrokerConfig {
                broker_id: "b1".into(),
                // A worker gone this long is dead: its running task is retried elsewhere.
                leader: LeaderConfig {
                    max_worker_idle: 300,
                    ..LeaderConfig::default()
                },
                ..BrokerConfig::default()
            },
            Arc::new(MemoryLog::open(store)) as Arc<dyn CommitLog>,
            snapshots,
            Arc::new(DefaultGroupMapper),
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
        .await
        .expect("broker starts");
        let handle = broker.handle();
        let app = http::router(handle.clone(), http_config().validate().unwrap());
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let workers = socket.local_addr().unwrap();
        tokio::spawn(worker_listener::run(
            socket,
            listener,
            broker.worker_events(),
            stop.clone().cancelled_owned(),
        ));
        Node {
            broker: Some(broker),
            handle,
            app,
            workers,
            stop,
        }
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = tokio::time::timeout(WAIT, self.app.clone().oneshot(req))
            .await
            .expect("answered in time")
            .expect("infallible");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn post(&self, body: Value, token: &str) -> (StatusCode, Value) {
        let req = Request::post("/majordodo")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.call(req).await
    }

    async fn get(&self, query: &str, token: &str) -> (StatusCode, Value) {
        let req = Request::get(format!("/majordodo?{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        self.call(req).await
    }

    /// Issues a credential for `worker_id`: (credential id, secret).
    async fn issue(&self, worker_id: &str) -> (String, Vec<u8>) {
        let (s, b) = self
            .post(
                json!({"action": "addWorkerCredential", "workerId": worker_id, "comment": "test"}),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let hex = b["secret"].as_str().unwrap();
        let secret = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        (b["credentialId"].as_str().unwrap().to_owned(), secret)
    }

    async fn revoke(&self, id: &str) {
        let (s, b) = self
            .post(
                json!({"action": "revokeWorkerCredential", "credentialId": id}),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }

    async fn submit(&self) -> u64 {
        let (s, b) = self
            .post(
                json!({"action": "submitTask", "userid": "5", "tasktype": "run", "data": "x", "maxattempts": 3}),
                USER_TOKEN,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["taskId"].as_u64().unwrap()
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(b) = self.broker.take() {
            let _ = b.wait().await;
        }
    }
}

/// How a worker proves itself.
enum Proof<'a> {
    Credential { id: &'a str, secret: &'a [u8] },
    Shared(&'a [u8]),
}

/// What the broker answered a handshake.
enum Answer {
    Welcome(Framed<TcpStream, WorkerCodec>),
    Reject { reason: String, retryable: bool },
}

async fn recv(framed: &mut Framed<TcpStream, WorkerCodec>) -> Option<Message> {
    tokio::time::timeout(WAIT, framed.next())
        .await
        .expect("a frame in time")
        .map(|frame| frame.expect("a valid frame"))
}

/// Connects as `worker_id` and proves `proof`; a welcome's broker proof is checked.
async fn handshake(addr: SocketAddr, worker_id: &str, proof: Proof<'_>) -> Answer {
    let socket = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(socket, WorkerCodec::default());
    let nonce = random_nonce();
    let process_id = format!("{worker_id}-pid");
    let credential_id = match &proof {
        Proof::Credential { id, .. } => id.to_string(),
        Proof::Shared(_) => String::new(),
    };
    framed
        .send(Message::Hello(Hello {
            worker_id: worker_id.into(),
            process_id: process_id.clone(),
            location: "test".into(),
            client_nonce: nonce.to_vec(),
            credential_id: credential_id.clone(),
        }))
        .await
        .unwrap();
    let challenge = match recv(&mut framed).await {
        Some(Message::Challenge(c)) => c,
        Some(Message::Reject(r)) => {
            return Answer::Reject {
                reason: r.reason,
                retryable: r.retryable,
            };
        }
        other => panic!("challenge expected, got {other:?}"),
    };
    let auth = CredentialAuth {
        broker_nonce: &challenge.broker_nonce,
        client_nonce: &nonce,
        worker_id,
        process_id: &process_id,
        credential_id: &credential_id,
    };
    let proof_bytes = match &proof {
        Proof::Credential { secret, .. } => {
            majordodo_proto::worker::credential_worker_proof(secret, &auth)
        }
        Proof::Shared(secret) => worker_proof(
            secret,
            &challenge.broker_nonce,
            &nonce,
            worker_id,
            &process_id,
        ),
    };
    framed
        .send(Message::Connect(Connect {
            proof: proof_bytes.to_vec(),
            capacity: Capacity {
                max_threads: 4,
                groups: vec![0],
                ..Default::default()
            },
            running: vec![],
            task_shapes: false,
        }))
        .await
        .unwrap();
    match recv(&mut framed).await {
        Some(Message::Welcome(w)) => {
            if let Proof::Credential { secret, .. } = proof {
                assert!(
                    verify_credential_broker_proof(secret, &auth, &w.broker_proof),
                    "the broker's proof does not verify"
                );
            }
            Answer::Welcome(framed)
        }
        Some(Message::Reject(r)) => Answer::Reject {
            reason: r.reason,
            retryable: r.retryable,
        },
        other => panic!("welcome or reject expected, got {other:?}"),
    }
}

fn welcomed(answer: Answer) -> Framed<TcpStream, WorkerCodec> {
    match answer {
        Answer::Welcome(f) => f,
        Answer::Reject { reason, .. } => panic!("refused: {reason}"),
    }
}

fn refused(answer: Answer) -> String {
    match answer {
        Answer::Welcome(_) => panic!("welcomed, refusal expected"),
        Answer::Reject { reason, retryable } => {
            assert!(!retryable, "a credential refusal is final: {reason}");
            reason
        }
    }
}

/// Reads frames until an assignment arrives: (task, attempt).
async fn assigned(framed: &mut Framed<TcpStream, WorkerCodec>) -> (u64, u32) {
    loop {
        match recv(framed).await {
            Some(Message::Assign(a)) => {
                let a = &a.assignments[0];
                return (a.task_id, a.attempt);
            }
            Some(_) => {}
            None => panic!("connection closed before an assignment"),
        }
    }
}

#[tokio::test]
async fn revoking_kills_the_live_connection_and_refuses_it_afterwards() {
    // Goal: a worker connected with a credential is killed (told why) once the credential is
    // revoked, its running task is retried on another worker, and the credential is refused at
    // the next handshake with a reason naming the revocation.
    let store = MemoryStore::new();
    let node = Node::start(&store, None, ListenerConfig::credentials_only("b1")).await;
    let (id1, secret1) = node.issue("w1").await;
    let (id2, secret2) = node.issue("w2").await;
    let mut w1 = welcomed(
        handshake(
            node.workers,
            "w1",
            Proof::Credential {
                id: &id1,
                secret: &secret1,
            },
        )
        .await,
    );
    let task = node.submit().await;
    assert_eq!(assigned(&mut w1).await, (task, 1));
    let mut w2 = welcomed(
        handshake(
            node.workers,
            "w2",
            Proof::Credential {
                id: &id2,
                secret: &secret2,
            },
        )
        .await,
    );
    node.revoke(&id1).await;
    let mut killed = None;
    while let Some(frame) = recv(&mut w1).await {
        if let Message::Kill(k) = frame {
            killed = Some(k.reason);
        }
    }
    let reason = killed.expect("the revoked worker is told why before its connection closes");
    assert!(
        reason.contains(&id1) && reason.contains("revoked"),
        "{reason}"
    );
    // The task's attempt on w1 is lost; it is retried on w2.
    assert_eq!(assigned(&mut w2).await, (task, 2));
    let reason = refused(
        handshake(
            node.workers,
            "w1",
            Proof::Credential {
                id: &id1,
                secret: &secret1,
            },
        )
        .await,
    );
    assert!(reason.contains("revoked"), "{reason}");
    // The list shows it revoked, the other active, and never a secret.
    let (s, list) = node.get("view=workerCredentials", ADMIN_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    let text = list.to_string();
    for secret in [&secret1, &secret2] {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex), "the list shows a secret: {text}");
    }
    let state = |id: &str| {
        list["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["credentialId"] == id)
            .map(|c| {
                (
                    c["workerId"].clone(),
                    c["revoked"].clone(),
                    c["comment"].clone(),
                )
            })
            .unwrap()
    };
    assert_eq!(state(&id1), (json!("w1"), json!(true), json!("test")));
    assert_eq!(state(&id2), (json!("w2"), json!(false), json!("test")));
    let (_, only) = node
        .get("view=workerCredentials&workerId=w2", ADMIN_TOKEN)
        .await;
    assert_eq!(only["count"], json!(1));
    node.stop().await;
}

#[tokio::test]
async fn a_credential_connects_only_as_its_worker_and_with_its_secret() {
    // Goal: A's credential presented as B, a wrong secret and an unknown credential id are all
    // refused, finally; the right one is welcomed with a broker proof that verifies.
    let store = MemoryStore::new();
    let node = Node::start(&store, None, ListenerConfig::credentials_only("b1")).await;
    let (id, secret) = node.issue("wa").await;
    let (other_id, _) = node.issue("wb").await;
    let as_b = refused(
        handshake(
            node.workers,
            "wb",
            Proof::Credential {
                id: &id,
                secret: &secret,
            },
        )
        .await,
    );
    assert!(as_b.contains("not valid for worker id wb"), "{as_b}");
    let mut wrong = secret.clone();
    wrong[0] ^= 1;
    for (cred, key, worker) in [
        (id.as_str(), wrong.as_slice(), "wa"),
        ("wc-unknown", secret.as_slice(), "wa"),
        // B's credential id with A's secret.
        (other_id.as_str(), secret.as_slice(), "wb"),
    ] {
        let reason = refused(
            handshake(
                node.workers,
                worker,
                Proof::Credential {
                    id: cred,
                    secret: key,
                },
            )
            .await,
        );
        assert!(reason.contains("authentication failed"), "{reason}");
    }
    welcomed(
        handshake(
            node.workers,
            "wa",
            Proof::Credential {
                id: &id,
                secret: &secret,
            },
        )
        .await,
    );
    node.stop().await;
}

#[tokio::test]
async fn the_shared_secret_is_accepted_only_in_legacy_mode() {
    // Goal: with credentials only (the default), a worker proving the shared secret is
    // refused naming the mode; in the legacy mode it is welcomed, and credentials work too.
    let store = MemoryStore::new();
    let node = Node::start(&store, None, ListenerConfig::credentials_only("b1")).await;
    let reason = refused(handshake(node.workers, "w1", Proof::Shared(SHARED)).await);
    assert!(reason.contains("only per-worker credentials"), "{reason}");
    node.stop().await;

    let store = MemoryStore::new();
    let node = Node::start(
        &store,
        None,
        ListenerConfig::new("b1", SharedSecret::new(SHARED)),
    )
    .await;
    welcomed(handshake(node.workers, "w1", Proof::Shared(SHARED)).await);
    let reason = refused(handshake(node.workers, "w2", Proof::Shared(b"not it")).await);
    assert!(reason.contains("authentication failed"), "{reason}");
    let (id, secret) = node.issue("w3").await;
    welcomed(
        handshake(
            node.workers,
            "w3",
            Proof::Credential {
                id: &id,
                secret: &secret,
            },
        )
        .await,
    );
    node.stop().await;
}

#[tokio::test]
async fn credentials_survive_a_restart_from_the_log_and_from_a_snapshot() {
    // Goal: after a restart that replays the log, and after one that starts from a snapshot
    // (with entries after it), an active credential still connects and a revoked one is still
    // refused.
    let store = MemoryStore::new();
    let snapshots = tempfile::tempdir().unwrap();
    let node = Node::start(
        &store,
        Some(snapshots.path()),
        ListenerConfig::credentials_only("b1"),
    )
    .await;
    let (kept, kept_secret) = node.issue("w1").await;
    let (gone, gone_secret) = node.issue("w1").await;
    node.revoke(&gone).await;
    node.stop().await;

    let check = |node: &Node, revoked: Vec<(String, Vec<u8>)>| {
        let addr = node.workers;
        let kept = kept.clone();
        let kept_secret = kept_secret.clone();
        async move {
            welcomed(
                handshake(
                    addr,
                    "w1",
                    Proof::Credential {
                        id: &kept,
                        secret: &kept_secret,
                    },
                )
                .await,
            );
            for (id, secret) in revoked {
                let reason = refused(
                    handshake(
                        addr,
                        "w1",
                        Proof::Credential {
                            id: &id,
                            secret: &secret,
                        },
                    )
                    .await,
                );
                assert!(reason.contains("revoked"), "{reason}");
            }
        }
    };
    // Replay of the log.
    let node = Node::start(
        &store,
        Some(snapshots.path()),
        ListenerConfig::credentials_only("b1"),
    )
    .await;
    check(&node, vec![(gone.clone(), gone_secret.clone())]).await;
    // A snapshot, then one more revocation in the log after it.
    node.handle.checkpoint().await.unwrap();
    let (late, late_secret) = node.issue("w1").await;
    node.revoke(&late).await;
    node.stop().await;
    let node = Node::start(
        &store,
        Some(snapshots.path()),
        ListenerConfig::credentials_only("b1"),
    )
    .await;
    check(&node, vec![(gone, gone_secret), (late, late_secret)]).await;
    let (_, list) = node.get("view=workerCredentials", ADMIN_TOKEN).await;
    assert_eq!(list["count"], json!(3), "{list}");
    node.stop().await;
}
