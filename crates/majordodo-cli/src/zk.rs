//! The worker's ZooKeeper locator: the broker a worker connects to is the leader published in
//! `<zk_path>/leader`, read again before every connection attempt with the same lookup the HTTP
//! client uses ([`majordodo_client::ZkDiscovery`]).

use majordodo_client::ZkDiscovery;
use majordodo_worker::{BrokerLocator, LocateFuture};

/// Names the leader's worker port (`host:port` of its `BrokerInfo`).
#[derive(Debug)]
pub(crate) struct ZkBrokerLocator(pub(crate) ZkDiscovery);

impl BrokerLocator for ZkBrokerLocator {
    fn locate(&self) -> LocateFuture<'_> {
        Box::pin(async move {
            let leader = self.0.leader().await.map_err(|e| e.to_string())?;
            Ok(leader.worker_address())
        })
    }

    fn describe(&self) -> String {
        format!(
            "the leader in zookeeper {} {}",
            self.0.connect_string(),
            self.0.leader_path()
        )
    }
}
