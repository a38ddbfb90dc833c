//! How the worker finds the broker to connect to: asked again before every connection attempt,
//! so a worker whose connection dropped, or that a broker refused as not the leader, goes to
//! whichever broker leads now. The default is the fixed address of
//! [`WorkerConfig::broker_addr`](crate::WorkerConfig::broker_addr); `majordodo worker --zk`
//! plugs in one that reads the leader znode in ZooKeeper.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// What [`BrokerLocator::locate`] returns: the broker's worker port as `host:port`, or why none
/// can be named now (the worker waits its backoff and asks again).
pub type LocateFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Names the broker a worker connects to. Called before every connection attempt, within the
/// attempt's `connect_timeout`; an error counts as a failed attempt (retried after the
/// reconnect backoff), never as a reason to stop.
pub trait BrokerLocator: Send + Sync + fmt::Debug {
    /// The worker port (`host:port`) of the broker to connect to now.
    fn locate(&self) -> LocateFuture<'_>;

    /// Where the broker is looked up, for operators (`zookeeper zk1:2181 /majordodo/leader`).
    fn describe(&self) -> String;
}

/// A fixed address: the default locator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticBroker(pub String);

impl BrokerLocator for StaticBroker {
    fn locate(&self) -> LocateFuture<'_> {
        let addr = self.0.clone();
        Box::pin(async move { Ok(addr) })
    }

    fn describe(&self) -> String {
        self.0.clone()
    }
}
