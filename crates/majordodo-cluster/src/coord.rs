//! ZooKeeper coordination: leader election, discovery of live brokers, and the ledger list.
//!
//! ZooKeeper stays out of the per-task path: it is touched at election, when a ledger is
//! created or dropped, and when a broker publishes its position (about once a second). The
//! layout is in [`majordodo_proto::cluster`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use majordodo_proto::cluster::{BrokerInfo, LedgersInfo};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client::{
    Acl, Acls, Client, CreateMode, CreateOptions, Error as ZkError, EventType, Permission,
    SessionState,
};

use crate::error::CoordError;

/// Name of the leader's znode under the base path (the original's).
pub const LEADER_NODE: &str = "leader";
/// Name of the directory of live brokers under the base path (the original's).
pub const DISCOVERY_DIR: &str = "discoverypath";
/// Prefix of each live broker's sequential znode (the original's).
pub const DISCOVERY_PREFIX: &str = "brokers";
/// Name of the ledger list's znode under the base path (the original's).
pub const LEDGERS_NODE: &str = "ledgers";

/// Pause before retrying a failed ZooKeeper read inside a watch loop, so a flapping connection
/// does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Where the cluster lives in ZooKeeper.
#[derive(Clone, Debug)]
pub struct CoordConfig {
    /// ZooKeeper connect string (`host:port,host:port`).
    pub zk_connect: String,
    /// Base path of this cluster's znodes (the original's default is `/majordodo`).
    pub base_path: String,
    /// ZooKeeper session timeout: how long a dead leader keeps its leadership.
    pub session_timeout: Duration,
    /// Digest credentials of the brokers: set, the session authenticates with them and every
    /// znode of the cluster is created readable by anyone and changeable only by sessions
    /// authenticated as the same identity ([`PROTECTED_ACL`]).
    pub digest: Option<ZkDigest>,
}

/// ZooKeeper `digest` credentials, `user:password`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkDigest {
    user: String,
    password: String,
}

impl std::fmt::Debug for ZkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkDigest")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl ZkDigest {
    /// Parses `user:password` (as a credentials file holds it, trailing newline removed).
    ///
    /// # Errors
    /// [`CoordError::Config`] when there is no `:`, or the user or the password is empty.
    pub fn parse(text: &str) -> Result<ZkDigest, CoordError> {
        match text.trim_end_matches(['\n', '\r']).split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(ZkDigest {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err(CoordError::Config(
                "ZooKeeper digest credentials must read user:password, both non-empty".into(),
            )),
        }
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// What the `digest` scheme's `addauth` takes.
    fn auth(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }
}

/// The ACL of a protected cluster's znodes: every permission for the identities the creating
/// session authenticated as (ZooKeeper's `auth` scheme expands to its digest identity), and
/// read for anyone, so that clients and workers find the leader without credentials.
pub static PROTECTED_ACL: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

impl CoordConfig {
    /// Settings for `zk_connect` under `/majordodo`, with a 10 s session timeout.
    pub fn new(zk_connect: impl Into<String>) -> CoordConfig {
        CoordConfig {
            zk_connect: zk_connect.into(),
            base_path: "/majordodo".into(),
            session_timeout: Duration::from_secs(10),
            digest: None,
        }
    }
}

/// The ACL of new znodes: [`PROTECTED_ACL`] when the session authenticated, else open.
fn acls(protected: bool) -> Acls<'static> {
    if protected {
        Acls::new(&PROTECTED_ACL)
    } else {
        Acls::anyone_all()
    }
}

fn persistent(protected: bool) -> CreateOptions<'static> {
    CreateMode::Persistent.with_acls(acls(protected))
}

fn ephemeral(protected: bool) -> CreateOptions<'static> {
    CreateMode::Ephemeral.with_acls(acls(protected))
}

fn ephemeral_sequential(protected: bool) -> CreateOptions<'static> {
    CreateMode::EphemeralSequential.with_acls(acls(protected))
}

/// One ZooKeeper session of a broker, with the cluster's paths.
#[derive(Clone)]
pub struct Coordinator {
    zk: Client,
    base: Arc<str>,
    /// Whether znodes are created with [`PROTECTED_ACL`] (the session has digest credentials).
    protected: bool,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The ledger list with the znode version it was read at (for compare-and-set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedLedgers {
    /// The list.
    pub info: LedgersInfo,
    /// Its znode version.
    pub version: i32,
}

impl Coordinator {
    /// Connects, and creates the base path, the discovery directory and an empty ledger list
    /// when missing.
    ///
    /// # Errors
    /// [`CoordError`] when ZooKeeper cannot be reached or the path is invalid.
    pub async fn connect(config: &CoordConfig) -> Result<Coordinator, CoordError> {
        let base = config.base_path.trim_end_matches('/');
        if !base.starts_with('/') || base.len() < 2 {
            return Err(CoordError::Config(format!(
                "base path {:?} must be an absolute znode path such as /majordodo",
                config.base_path
            )));
        }
        let mut connector = Client::connector();
        connector = connector.with_session_timeout(config.session_timeout);
        if let Some(digest) = &config.digest {
            connector = connector.with_auth("digest", &digest.auth());
        }
        let zk = connector.connect(&config.zk_connect).await.map_err(|e| {
            CoordError::zk(format!("connect to ZooKeeper at {}", config.zk_connect), e)
        })?;
        Coordinator::open(zk, base, config.digest.is_some()).await
    }

    /// Like [`Coordinator::connect`] on an existing session (several clusters, or tests,
    /// sharing one ZooKeeper session).
    ///
    /// # Errors
    /// [`CoordError`] when the paths cannot be created.
    pub async fn with_client(zk: Client, base_path: &str) -> Result<Coordinator, CoordError> {
        Coordinator::open(zk, base_path, false).await
    }

    /// Creates the cluster's persistent znodes when missing; `protected`, with
    /// [`PROTECTED_ACL`], which is also set on those that exist (made before credentials were
    /// configured).
    async fn open(zk: Client, base_path: &str, protected: bool) -> Result<Coordinator, CoordError> {
        let base = base_path.trim_end_matches('/');
        if !base.starts_with('/') || base.len() < 2 {
            return Err(CoordError::Config(format!(
                "base path {base_path:?} must be an absolute znode path such as /majordodo"
            )));
        }
        let coord = Coordinator {
            zk,
            base: Arc::from(base),
            protected,
        };
        coord.ensure(&coord.base, b"").await?;
        coord.ensure(&coord.path(DISCOVERY_DIR), b"").await?;
        coord
            .ensure(&coord.path(LEDGERS_NODE), &LedgersInfo::empty().to_json())
            .await?;
        if protected {
            for path in [
                coord.base.to_string(),
                coord.path(DISCOVERY_DIR),
                coord.path(LEDGERS_NODE),
            ] {
                coord
                    .zk
                    .set_acl(&path, &PROTECTED_ACL, None)
                    .await
                    .map_err(|e| {
                        CoordError::zk(
                            format!(
                                "protect {path} with the brokers' digest credentials (a znode made \
                                 with other credentials must be fixed by an operator)"
                            ),
                            e,
                        )
                    })?;
            }
        }
        Ok(coord)
    }

    /// The cluster's base path.
    pub fn base_path(&self) -> &str {
        &self.base
    }

    /// The ZooKeeper client (shared with whoever needs another znode).
    pub fn client(&self) -> &Client {
        &self.zk
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// Creates `path` (and its parents) with `data` unless it exists.
    async fn ensure(&self, path: &str, data: &[u8]) -> Result<(), CoordError> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            prefix.push('/');
            prefix.push_str(part);
            let content: &[u8] = if i + 1 == parts.len() { data } else { b"" };
            match self
                .zk
                .create(&prefix, content, &persistent(self.protected))
                .await
            {
                Ok(_) | Err(ZkError::NodeExists) => {}
                // ZooKeeper checks the parent's ACL before the name: an existing znode under a
                // parent this session may not change answers NoAuth.
                Err(ZkError::NoAuth)
                    if matches!(self.zk.check_stat(&prefix).await, Ok(Some(_))) => {}
                Err(ZkError::NoAuth) => {
                    return Err(CoordError::zk(
                        format!(
                            "create {prefix}: not allowed by its parent's ACL (other ZooKeeper \
                             digest credentials protect it; check cluster.zk_digest_file)"
                        ),
                        ZkError::NoAuth,
                    ));
                }
                Err(e) => return Err(CoordError::zk(format!("create {prefix}"), e)),
            }
        }
        Ok(())
    }

    /// Whether the session is over for good (expired, closed or refused).
    pub fn session_lost(&self) -> bool {
        matches!(
            self.zk.state(),
            SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
        )
    }

    /// Resolves once the session is over for good.
    pub async fn wait_session_lost(&self) {
        let mut watcher = self.zk.state_watcher();
        loop {
            if matches!(
                watcher.state(),
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
            ) {
                return;
            }
            let state = watcher.changed().await;
            if matches!(
                state,
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
            ) {
                return;
            }
        }
    }

    // ----- leader -----

    /// The current leader, if any.
    ///
    /// # Errors
    /// [`CoordError`] on ZooKeeper failures or a malformed leader znode.
    pub async fn leader(&self) -> Result<Option<BrokerInfo>, CoordError> {
        let path = self.path(LEADER_NODE);
        match self.zk.get_data(&path).await {
            Ok((data, _)) => BrokerInfo::from_json(&data)
                .map(Some)
                .map_err(|e| CoordError::Format(format!("{path}: {e}"))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(CoordError::zk(format!("read {path}"), e)),
        }
    }

    /// Waits until this broker holds the leader znode (an ephemeral node with `me`), then
    /// returns the [`Leadership`], which tells when it is lost.
    ///
    /// # Errors
    /// [`CoordError::SessionExpired`] when the session ends first; other ZooKeeper failures.
    pub async fn elect(&self, me: &BrokerInfo) -> Result<Leadership, CoordError> {
        let path = self.path(LEADER_NODE);
        let data = me.to_json();
        loop {
            if self.session_lost() {
                return Err(CoordError::SessionExpired);
            }
            match self
                .zk
                .create(&path, &data, &ephemeral(self.protected))
                .await
            {
                Ok(_) => {
                    info!(path, broker_id = me.broker_id(), "elected leader");
                    return Ok(Leadership::watch(self.clone(), path, data));
                }
                Err(ZkError::NodeExists) => {
                    let (stat, watcher) = match self.zk.check_and_watch_stat(&path).await {
                        Ok(found) => found,
                        Err(e) => {
                            warn!(error = %e, "cannot watch the leader znode; retrying");
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    };
                    if stat.is_some() {
                        debug!(path, "another broker leads; waiting for its znode to go");
                        let event = watcher.changed().await;
                        if event.event_type == EventType::Session
                            && matches!(
                                event.session_state,
                                SessionState::Expired | SessionState::Closed
                            )
                        {
                            return Err(CoordError::SessionExpired);
                        }
                    }
                }
                Err(ZkError::SessionExpired | ZkError::ClientClosed) => {
                    return Err(CoordError::SessionExpired);
                }
                Err(e) => {
                    warn!(error = %e, "cannot create the leader znode; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    // ----- discovery -----

    /// Publishes this broker among the live ones (an ephemeral sequential znode) and returns
    /// the handle that updates it.
    ///
    /// # Errors
    /// [`CoordError`] on ZooKeeper failures.
    pub async fn register(&self, me: &BrokerInfo) -> Result<Registration, CoordError> {
        let prefix = format!("{}/{DISCOVERY_PREFIX}", self.path(DISCOVERY_DIR));
        let (_, sequence) = self
            .zk
            .create(
                &prefix,
                &me.to_json(),
                &ephemeral_sequential(self.protected),
            )
            .await
            .map_err(|e| CoordError::zk(format!("register under {prefix}"), e))?;
        let path = format!("{prefix}{sequence}");
        Ok(Registration {
            zk: self.zk.clone(),
            path,
        })
    }

    /// Every live broker as it last published itself.
    ///
    /// # Errors
    /// [`CoordError`] on ZooKeeper failures.
    pub async fn brokers(&self) -> Result<Vec<BrokerInfo>, CoordError> {
        let dir = self.path(DISCOVERY_DIR);
        let mut names = self
            .zk
            .list_children(&dir)
            .await
            .map_err(|e| CoordError::zk(format!("list {dir}"), e))?;
        names.sort();
        let mut out = Vec::new();
        for name in names {
            match self.zk.get_data(&format!("{dir}/{name}")).await {
                Ok((data, _)) => match BrokerInfo::from_json(&data) {
                    Ok(info) => out.push(info),
                    Err(e) => warn!(znode = %name, error = %e, "ignoring a malformed broker znode"),
                },
                Err(ZkError::NoNode) => {} // gone meanwhile
                Err(e) => return Err(CoordError::zk(format!("read {dir}/{name}"), e)),
            }
        }
        Ok(out)
    }

    // ----- ledgers -----

    /// The ledger list and its version.
    ///
    /// # Errors
    /// [`CoordError`] on ZooKeeper failures or a malformed list.
    pub async fn ledgers(&self) -> Result<VersionedLedgers, CoordError> {
        let path = self.path(LEDGERS_NODE);
        let (data, stat) = self
            .zk
            .get_data(&path)
            .await
            .map_err(|e| CoordError::zk(format!("read {path}"), e))?;
        let info = LedgersInfo::from_json(&data)
            .map_err(|e| CoordError::Format(format!("{path}: {e}")))?;
        Ok(VersionedLedgers {
            info,
            version: stat.version,
        })
    }

    /// The ledger list and its version, and a future that completes when it next changes.
    ///
    /// # Errors
    /// [`CoordError`] on ZooKeeper failures or a malformed list.
    pub async fn watch_ledgers(
        &self,
    ) -> Result<(VersionedLedgers, impl Future<Output = ()> + Send + use<>), CoordError> {
        let path = self.path(LEDGERS_NODE);
        let (data, stat, watcher) = self
            .zk
            .get_and_watch_data(&path)
            .await
            .map_err(|e| CoordError::zk(format!("watch {path}"), e))?;
        let info = LedgersInfo::from_json(&data)
            .map_err(|e| CoordError::Format(format!("{path}: {e}")))?;
        Ok((
            VersionedLedgers {
                info,
                version: stat.version,
            },
            async move {
                watcher.changed().await;
            },
        ))
    }

    /// Replaces the ledger list if its version is still `expected`; returns the new version.
    ///
    /// # Errors
    /// [`CoordError::Superseded`] when the list changed since `expected` (another broker took
    /// over: step down); other ZooKeeper failures.
    pub async fn set_ledgers(&self, info: &LedgersInfo, expected: i32) -> Result<i32, CoordError> {
        let path = self.path(LEDGERS_NODE);
        match self
            .zk
            .set_data(&path, &info.to_json(), Some(expected))
            .await
        {
            Ok(stat) => Ok(stat.version),
            Err(ZkError::BadVersion) => Err(CoordError::Superseded(format!(
                "the ledger list changed since version {expected}"
            ))),
            Err(e) => Err(CoordError::zk(format!("write {path}"), e)),
        }
    }
}

/// This broker's leadership, watched in the background: [`Leadership::lost`] resolves as soon
/// as the session ends or the leader znode stops being ours (deleted and taken by another
/// broker, or overwritten).
#[derive(Clone, Debug)]
pub struct Leadership {
    held: Arc<AtomicBool>,
    lost: watch::Receiver<Option<String>>,
    coord: Coordinator,
    path: Arc<str>,
    watcher: Arc<tokio::task::AbortHandle>,
}

impl Leadership {
    fn watch(coord: Coordinator, path: String, data: Vec<u8>) -> Leadership {
        let held = Arc::new(AtomicBool::new(true));
        let (tx, lost) = watch::channel(None);
        let flag = held.clone();
        let watched = coord.clone();
        let node: Arc<str> = Arc::from(path.as_str());
        let task = tokio::spawn(async move {
            let reason = watch_leader_node(&watched, &path, &data).await;
            warn!(%reason, "leadership lost");
            flag.store(false, Ordering::SeqCst);
            let _ = tx.send(Some(reason));
        });
        Leadership {
            held,
            lost,
            coord,
            path: node,
            watcher: Arc::new(task.abort_handle()),
        }
    }

    /// Gives the leadership up: stops watching and deletes the leader znode if it is still
    /// this session's, so another broker (or this one, standing again) is elected.
    pub async fn resign(&self) {
        self.watcher.abort();
        self.held.store(false, Ordering::SeqCst);
        let zk = self.coord.client();
        if let Ok((_, stat)) = zk.get_data(&self.path).await
            && stat.ephemeral_owner == zk.session_id().0
        {
            match zk.delete(&self.path, Some(stat.version)).await {
                Ok(()) => info!(path = %self.path, "resigned the leadership"),
                Err(e) => debug!(error = %e, "could not delete the leader znode"),
            }
        }
    }

    /// Whether this broker still leads, as far as it knows.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Resolves with the reason once leadership is lost.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the leadership watch ended".to_owned(),
        }
    }
}

/// Watches the leader znode while we hold it; returns why we no longer do.
async fn watch_leader_node(coord: &Coordinator, path: &str, ours: &[u8]) -> String {
    let session = coord.zk.session_id();
    loop {
        let (found, watcher) = match coord.zk.get_and_watch_data(path).await {
            Ok((data, stat, watcher)) => (Some((data, stat)), Some(watcher)),
            Err(ZkError::NoNode) => (None, None),
            Err(ZkError::SessionExpired | ZkError::ClientClosed) => {
                return "the ZooKeeper session expired".to_owned();
            }
            Err(e) => {
                if coord.session_lost() {
                    return "the ZooKeeper session expired".to_owned();
                }
                debug!(error = %e, "cannot read the leader znode; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        match found {
            Some((data, stat)) => {
                if stat.ephemeral_owner != session.0 {
                    return "another broker holds the leader znode".to_owned();
                }
                if data != ours {
                    return "the leader znode was overwritten".to_owned();
                }
            }
            None => {
                // Deleted by hand: take it again unless another broker was faster.
                match coord
                    .zk
                    .create(path, ours, &ephemeral(coord.protected))
                    .await
                {
                    Ok(_) => {
                        info!(path, "leader znode was deleted; recreated it");
                        continue;
                    }
                    Err(ZkError::NodeExists) => continue, // the read tells whose it is
                    Err(_) if coord.session_lost() => {
                        return "the ZooKeeper session expired".to_owned();
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot recreate the leader znode; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                }
            }
        }
        let Some(watcher) = watcher else { continue };
        let event = watcher.changed().await;
        if event.event_type == EventType::Session
            && matches!(
                event.session_state,
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
            )
        {
            return "the ZooKeeper session expired".to_owned();
        }
    }
}

/// This broker's discovery znode.
#[derive(Clone, Debug)]
pub struct Registration {
    zk: Client,
    path: String,
}

impl Registration {
    /// The znode's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Replaces what this broker publishes.
    ///
    /// # Errors
    /// [`CoordError`] on ZooKeeper failures (the znode is gone with an expired session).
    pub async fn update(&self, me: &BrokerInfo) -> Result<(), CoordError> {
        self.zk
            .set_data(&self.path, &me.to_json(), None)
            .await
            .map(|_| ())
            .map_err(|e| CoordError::zk(format!("write {}", self.path), e))
    }
}
