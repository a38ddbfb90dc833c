//! BookKeeper's metadata in ZooKeeper: layout check, ledger id generation, ledger metadata with
//! compare-and-set by znode version, and bookie discovery from the registration znodes.
//!
//! Everything here follows the znode layout Java clients and bookies use (hierarchical ledger
//! manager), so that ledgers created here are visible to Java tools and are never garbage
//! collected by bookies for being at an unexpected path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use prost::Message;
use tracing::{debug, warn};
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, Error as ZkError, SessionState};

use crate::bookie::Resolver;
use crate::error::BkError;
use crate::metadata::{LedgerMetadata, ledger_path};
use crate::proto::BookieServiceInfoFormat;

/// Ledger manager factory of the hierarchical layout, as named in the LAYOUT znode.
const HIERARCHICAL_FACTORY: &str = "org.apache.bookkeeper.meta.HierarchicalLedgerManagerFactory";

/// Content of a LAYOUT znode this client creates: layout format 2, hierarchical manager v1.
const LAYOUT_CONTENT: &str = "2\norg.apache.bookkeeper.meta.HierarchicalLedgerManagerFactory:1";

/// Name of the read-only bookies' directory under `available`.
const READONLY: &str = "readonly";

/// Endpoint protocol bookies publish for the BookKeeper RPC port.
const BOOKIE_RPC_PROTOCOL: &str = "bookie-rpc";

/// Ids at or beyond this switch to the 63-bit generator (ZooKeeper sequences are 31-bit).
const SHORT_ID_LIMIT: i64 = i32::MAX as i64;

/// Attempts at creating a ledger znode when generated ids collide with existing ledgers.
const MAX_ID_COLLISIONS: usize = 10;

fn persistent() -> CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

/// Result of a compare-and-set write of ledger metadata.
pub(crate) enum CasOutcome {
    /// Written; the new znode version.
    Written(i32),
    /// The znode changed since the version given.
    Conflict,
}

/// Access to one cluster's metadata under its ledgers root.
pub(crate) struct MetaStore {
    zk: Client,
    root: String,
}

impl MetaStore {
    /// Connects to ZooKeeper and checks the cluster's ledger layout.
    pub(crate) async fn connect(
        connect: &str,
        root: &str,
        session_timeout: Duration,
    ) -> Result<MetaStore, BkError> {
        if !root.starts_with('/') || root.ends_with('/') || root.len() < 2 {
            return Err(BkError::InvalidArgument(format!(
                "invalid ledgers root {root:?}"
            )));
        }
        let zk = Client::connector()
            .with_session_timeout(session_timeout)
            .connect(connect)
            .await
            .map_err(BkError::zk)?;
        let store = MetaStore {
            zk,
            root: root.to_string(),
        };
        store.check_layout().await?;
        Ok(store)
    }

    /// Whether the ZooKeeper session has expired (terminal for this store).
    pub(crate) fn session_expired(&self) -> bool {
        matches!(
            self.zk.state(),
            SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
        )
    }

    async fn check_layout(&self) -> Result<(), BkError> {
        let path = format!("{}/LAYOUT", self.root);
        let data = match self.zk.get_data(&path).await {
            Ok((data, _)) => data,
            Err(ZkError::NoNode) => match self
                .zk
                .create(&path, LAYOUT_CONTENT.as_bytes(), &persistent())
                .await
            {
                Ok(_) => return Ok(()),
                Err(ZkError::NodeExists) => self.zk.get_data(&path).await.map_err(BkError::zk)?.0,
                Err(ZkError::NoNode) => {
                    return Err(BkError::UnsupportedLayout(format!(
                        "ledgers root {} does not exist",
                        self.root
                    )));
                }
                Err(e) => return Err(BkError::zk(e)),
            },
            Err(e) => return Err(BkError::zk(e)),
        };
        let text = String::from_utf8_lossy(&data);
        let manager = text.lines().nth(1).unwrap_or_default();
        let factory = manager.split(':').next().unwrap_or_default();
        if factory != HIERARCHICAL_FACTORY {
            return Err(BkError::UnsupportedLayout(format!(
                "{path} names {manager:?}"
            )));
        }
        Ok(())
    }

    /// Generates a new ledger id the way Java's `LongZkLedgerIdGenerator` does.
    pub(crate) async fn generate_ledger_id(&self) -> Result<i64, BkError> {
        let long_dir = format!("{}/idgen-long", self.root);
        if self
            .zk
            .check_stat(&long_dir)
            .await
            .map_err(BkError::zk)?
            .is_none()
        {
            let short_dir = format!("{}/idgen", self.root);
            let id = self.sequence_id(&short_dir).await?;
            if id < SHORT_ID_LIMIT {
                return Ok(id);
            }
            match self.zk.create(&long_dir, &[], &persistent()).await {
                Ok(_) | Err(ZkError::NodeExists) => {}
                Err(e) => return Err(BkError::zk(e)),
            }
        }
        self.long_ledger_id(&long_dir).await
    }

    /// Creates and deletes an ephemeral-sequential `dir/ID-` node, returning its sequence.
    async fn sequence_id(&self, dir: &str) -> Result<i64, BkError> {
        let prefix = format!("{dir}/ID-");
        let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let sequence = match self.zk.create(&prefix, &[], &options).await {
            Ok((_, sequence)) => sequence,
            Err(ZkError::NoNode) => {
                self.zk
                    .mkdir(dir, &persistent())
                    .await
                    .map_err(BkError::zk)?;
                self.zk
                    .create(&prefix, &[], &options)
                    .await
                    .map_err(BkError::zk)?
                    .1
            }
            Err(e) => return Err(BkError::zk(e)),
        };
        // The node only carried the sequence; losing the delete is harmless (it is ephemeral).
        let node = format!("{prefix}{sequence}");
        if let Err(e) = self.zk.delete(&node, None).await {
            debug!(node, error = %e, "cannot delete id node");
        }
        Ok(sequence.into_i64())
    }

    async fn long_ledger_id(&self, long_dir: &str) -> Result<i64, BkError> {
        // Bounded: each round either returns or moves to a strictly higher HOB directory.
        for _ in 0..3 {
            let children = self.zk.list_children(long_dir).await.map_err(BkError::zk)?;
            let highest = children
                .iter()
                .filter_map(|c| c.strip_prefix("HOB-").and_then(|n| n.parse::<i64>().ok()))
                .max();
            let hob = match highest {
                Some(hob) => hob,
                None => {
                    self.create_hob(long_dir, 1).await?;
                    continue;
                }
            };
            let low = self
                .sequence_id(&format!("{long_dir}/HOB-{hob:010}"))
                .await?;
            if low < SHORT_ID_LIMIT {
                return Ok((hob << 32) | low);
            }
            self.create_hob(long_dir, hob + 1).await?;
        }
        Err(BkError::ZooKeeper(ZkError::UnexpectedError(
            "ledger id generation did not converge".into(),
        )))
    }

    async fn create_hob(&self, long_dir: &str, hob: i64) -> Result<(), BkError> {
        match self
            .zk
            .create(&format!("{long_dir}/HOB-{hob:010}"), &[], &persistent())
            .await
        {
            Ok(_) | Err(ZkError::NodeExists) => Ok(()),
            Err(e) => Err(BkError::zk(e)),
        }
    }

    /// Creates the metadata znode of a new ledger, generating ids until one is free. Returns
    /// the ledger id.
    pub(crate) async fn create_ledger(&self, metadata: &LedgerMetadata) -> Result<i64, BkError> {
        let data = metadata.serialize();
        for _ in 0..MAX_ID_COLLISIONS {
            let ledger_id = self.generate_ledger_id().await?;
            let path = ledger_path(&self.root, ledger_id)?;
            let created = match self.zk.create(&path, &data, &persistent()).await {
                Err(ZkError::NoNode) => {
                    let parent = &path[..path.rfind('/').expect("ledger paths have parents")];
                    self.zk
                        .mkdir(parent, &persistent())
                        .await
                        .map_err(BkError::zk)?;
                    self.zk.create(&path, &data, &persistent()).await
                }
                other => other,
            };
            match created {
                Ok(_) => return Ok(ledger_id),
                Err(ZkError::NodeExists) => {
                    // Ours if a lost reply hid our own create: the creator token tells.
                    let (existing, _) = self.read_ledger(ledger_id).await?;
                    if existing.creator_token.is_some()
                        && existing.creator_token == metadata.creator_token
                    {
                        return Ok(ledger_id);
                    }
                    warn!(ledger_id, "generated ledger id already in use");
                }
                Err(e) => return Err(BkError::zk(e)),
            }
        }
        Err(BkError::MetadataVersion {
            ledger_id: -1,
            detail: "every generated ledger id was taken".into(),
        })
    }

    /// Reads a ledger's metadata and znode version.
    pub(crate) async fn read_ledger(
        &self,
        ledger_id: i64,
    ) -> Result<(LedgerMetadata, i32), BkError> {
        let path = ledger_path(&self.root, ledger_id)?;
        match self.zk.get_data(&path).await {
            Ok((data, stat)) => Ok((LedgerMetadata::deserialize(&path, &data)?, stat.version)),
            Err(ZkError::NoNode) => Err(BkError::NoSuchLedger { ledger_id }),
            Err(e) => Err(BkError::zk(e)),
        }
    }

    /// Reads a ledger's metadata and znode version and leaves a watch on it: the returned
    /// future completes at the next change of the znode (or a session event).
    pub(crate) async fn watch_ledger(
        &self,
        ledger_id: i64,
    ) -> Result<(LedgerMetadata, i32, BoxFuture<'static, ()>), BkError> {
        let path = ledger_path(&self.root, ledger_id)?;
        match self.zk.get_and_watch_data(&path).await {
            Ok((data, stat, watcher)) => {
                let metadata = LedgerMetadata::deserialize(&path, &data)?;
                let changed: BoxFuture<'static, ()> = Box::pin(async move {
                    watcher.changed().await;
                });
                Ok((metadata, stat.version, changed))
            }
            Err(ZkError::NoNode) => Err(BkError::NoSuchLedger { ledger_id }),
            Err(e) => Err(BkError::zk(e)),
        }
    }

    /// Writes a ledger's metadata if its znode is still at `expected_version`.
    pub(crate) async fn write_ledger(
        &self,
        ledger_id: i64,
        metadata: &LedgerMetadata,
        expected_version: i32,
    ) -> Result<CasOutcome, BkError> {
        let path = ledger_path(&self.root, ledger_id)?;
        match self
            .zk
            .set_data(&path, &metadata.serialize(), Some(expected_version))
            .await
        {
            Ok(stat) => Ok(CasOutcome::Written(stat.version)),
            Err(ZkError::BadVersion) => Ok(CasOutcome::Conflict),
            Err(ZkError::NoNode) => Err(BkError::NoSuchLedger { ledger_id }),
            Err(e) => Err(BkError::zk(e)),
        }
    }

    /// Deletes a ledger's metadata, then its parent znodes that became empty.
    pub(crate) async fn delete_ledger(&self, ledger_id: i64) -> Result<(), BkError> {
        let path = ledger_path(&self.root, ledger_id)?;
        match self.zk.delete(&path, None).await {
            Ok(()) => {}
            Err(ZkError::NoNode) => return Err(BkError::NoSuchLedger { ledger_id }),
            Err(e) => return Err(BkError::zk(e)),
        }
        let mut parent = path.as_str();
        while let Some(cut) = parent.rfind('/') {
            parent = &parent[..cut];
            if parent.len() <= self.root.len() {
                break;
            }
            match self.zk.delete(parent, None).await {
                Ok(()) | Err(ZkError::NoNode) => {}
                // Another ledger lives there (or is being created): stop climbing.
                Err(ZkError::NotEmpty) => break,
                Err(e) => {
                    debug!(parent, error = %e, "cannot delete empty ledger parent");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Ids of the bookies registered as writable.
    pub(crate) async fn writable_bookies(&self) -> Result<Vec<String>, BkError> {
        let path = format!("{}/available", self.root);
        let mut bookies = self.zk.list_children(&path).await.map_err(BkError::zk)?;
        bookies.retain(|b| b != READONLY);
        bookies.sort();
        Ok(bookies)
    }

    /// The network address of `bookie_id`: its published `bookie-rpc` endpoint, or the id itself
    /// read as `host:port` when it publishes none (or is not registered).
    pub(crate) async fn resolve_bookie(&self, bookie_id: &str) -> Result<SocketAddr, BkError> {
        let writable = format!("{}/available/{bookie_id}", self.root);
        let readonly = format!("{}/available/{READONLY}/{bookie_id}", self.root);
        let mut data = None;
        for path in [writable, readonly] {
            match self.zk.get_data(&path).await {
                Ok((bytes, _)) => {
                    data = Some(bytes);
                    break;
                }
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(BkError::zk(e)),
            }
        }
        let endpoint = data.as_deref().and_then(published_endpoint);
        let target = endpoint.unwrap_or_else(|| bookie_id.to_string());
        let mut addrs = tokio::net::lookup_host(target.as_str())
            .await
            .map_err(|e| BkError::BookieUnavailable {
                bookie: bookie_id.to_string(),
                reason: format!("cannot resolve {target}: {e}"),
            })?;
        addrs.next().ok_or_else(|| BkError::BookieUnavailable {
            bookie: bookie_id.to_string(),
            reason: format!("{target} resolves to no address"),
        })
    }
}

/// The `host:port` of the `bookie-rpc` endpoint in registration data, if it publishes one.
pub(crate) fn published_endpoint(data: &[u8]) -> Option<String> {
    if data.is_empty() {
        return None;
    }
    let info = BookieServiceInfoFormat::decode(data).ok()?;
    info.endpoints
        .into_iter()
        .find(|e| {
            e.protocol == BOOKIE_RPC_PROTOCOL && !e.host.is_empty() && (1..=65535).contains(&e.port)
        })
        .map(|e| format!("{}:{}", e.host, e.port))
}

/// Resolves bookie addresses through the metadata store.
pub(crate) struct MetaResolver(pub(crate) Arc<MetaStore>);

impl Resolver for MetaResolver {
    fn resolve(&self, bookie_id: String) -> BoxFuture<'static, Result<SocketAddr, BkError>> {
        let store = self.0.clone();
        Box::pin(async move { store.resolve_bookie(&bookie_id).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Endpoint;
    use proptest::prelude::*;

    #[test]
    fn registration_endpoint_is_taken_from_bookie_rpc() {
        // Goal: the bookie-rpc endpoint wins; empty or endpoint-less data falls back to the id.
        let info = BookieServiceInfoFormat {
            endpoints: vec![
                Endpoint {
                    id: "http".into(),
                    port: 8080,
                    host: "10.0.0.1".into(),
                    protocol: "http".into(),
                },
                Endpoint {
                    id: "bookie".into(),
                    port: 3181,
                    host: "127.0.0.1".into(),
                    protocol: "bookie-rpc".into(),
                },
            ],
        };
        assert_eq!(
            published_endpoint(&info.encode_to_vec()).as_deref(),
            Some("127.0.0.1:3181")
        );
        assert_eq!(published_endpoint(&[]), None);
        assert_eq!(
            published_endpoint(&BookieServiceInfoFormat { endpoints: vec![] }.encode_to_vec()),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_registration_data_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            // Goal: whatever a registration znode holds, decoding returns, never panics.
            let _ = published_endpoint(&bytes);
        }
    }
}
