//! A real broker (memory log) serving its HTTP API on 127.0.0.1, for the client's tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use majordodo_broker::http::auth::{hash_password_with, token_digest};
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::{Broker, BrokerConfig, SystemClock};
use majordodo_client::{Auth, Client, RetryPolicy};
use majordodo_core::DefaultGroupMapper;
use majordodo_log::{MemoryLog, MemoryStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound on every wait of these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Quick retries for tests: a few milliseconds apart, for at most a few seconds.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_elapsed: Duration::from_secs(5),
    }
}

pub const ADMIN_TOKEN: &str = "mdt_client-test-admin";
pub const ALICE_PASSWORD: &str = "alice pw";

/// A broker and its HTTP API.
pub struct Server {
    /// Address of the HTTP API.
    pub addr: SocketAddr,
    pub broker: Option<Broker>,
    /// Stops the broker's dispatcher.
    pub stop: CancellationToken,
    /// Stops the HTTP server.
    pub http_stop: CancellationToken,
    /// The HTTP server.
    pub serving: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(HttpConfig::default()).await
    }

    /// A broker whose HTTP API has `http`'s limits (its users are replaced by the test users).
    pub async fn start_with(http: HttpConfig) -> Server {
        let stop = CancellationToken::new();
        let broker = Broker::start(
            BrokerConfig::default(),
            Arc::new(MemoryLog::open(&MemoryStore::new())),
            None,
            Arc::new(DefaultGroupMapper),
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
        .await
        .unwrap();
        let settings = HttpConfig {
            users: vec![
                UserConfig {
                    name: "admin".into(),
                    role: UserRole::Admin,
                    password_hash: None,
                    token_sha256: Some(token_digest(ADMIN_TOKEN)),
                },
                UserConfig {
                    name: "alice".into(),
                    role: UserRole::User,
                    password_hash: Some(hash_password_with(
                        ALICE_PASSWORD,
                        1_000,
                        &mut StdRng::seed_from_u64(3),
                    )),
                    token_sha256: None,
                },
            ],
            ..http
        }
        .validate()
        .unwrap();
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let http_stop = CancellationToken::new();
        let serving = tokio::spawn(http::serve(
            socket,
            broker.handle(),
            settings,
            http_stop.clone().cancelled_owned(),
        ));
        Server {
            addr,
            broker: Some(broker),
            stop,
            http_stop,
            serving: Some(serving),
        }
    }

    /// The API URL, as a leader publishes it.
    pub fn api_url(&self) -> String {
        format!("http://{}/majordodo", self.addr)
    }

    pub fn client(&self, auth: Auth) -> Client {
        Client::new(&format!("http://{}", self.addr), auth).unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client(Auth::bearer(ADMIN_TOKEN))
    }

    /// Tasks in the broker's state, with their data, in id order.
    pub async fn tasks(&self) -> Vec<(u64, String)> {
        let broker = self.broker.as_ref().expect("running");
        broker
            .handle()
            .query(|v| {
                v.state
                    .tasks()
                    .map(|t| (t.id.0, t.data.to_string()))
                    .collect()
            })
            .await
            .expect("the broker answers")
    }

    /// Stops the HTTP API (the broker goes on): its port refuses connections once this returns.
    pub async fn stop_http(&mut self) {
        self.http_stop.cancel();
        if let Some(serving) = self.serving.take() {
            tokio::time::timeout(WAIT, serving)
                .await
                .expect("the HTTP server stops in time")
                .expect("the HTTP server task does not panic")
                .expect("the HTTP server stops cleanly");
        }
    }

    pub async fn stop(mut self) {
        self.http_stop.cancel();
        self.stop.cancel();
        if let Some(b) = self.broker.take() {
            let _ = b.wait().await;
        }
    }
}
