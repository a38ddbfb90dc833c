//! Brokers replicated through ZooKeeper and BookKeeper: one engine, two roles.
//!
//! A broker of a cluster boots its state (see [`boot`]), then follows: it tails the ledgers
//! the leader writes ([`LogFollower`]) and applies every entry with the same `apply` the leader
//! uses, answers reads from its copy, refuses writes with `broker_not_leader` and the leader's
//! URL, and refuses workers. Meanwhile it stands for election. Once elected it takes the log
//! over ([`BookKeeperLog::open`] fences the previous leader's ledger), replays what it has not
//! applied yet, and becomes the leader of the same state: nothing is rebuilt. A leader that
//! loses its ZooKeeper session, sees the leader znode taken, or finds its log fenced, stops
//! acting as leader at once (the dispatcher answers nothing more as leader) and follows again.
//!
//! Every broker publishes itself in the discovery directory with the position it has applied
//! (about once a second), which is how followers' lag is seen.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bookkeeper_client::BookKeeper;
use bytes::Bytes;
use futures_util::StreamExt;
use majordodo_cluster::{
    BkLogConfig, BookKeeperLog, CoordConfig, CoordError, Coordinator, Leadership, LogFollower,
};
use majordodo_core::{BrokerState, GroupMapper, Leader};
use majordodo_log::{CommitLog, LogError, Lsn, SnapshotStore};
use majordodo_proto::cluster::{APPLIED_LSN, BrokerInfo, UPDATED_AT};
use majordodo_proto::http::ClusterLedger;
use majordodo_proto::record::decode_entry;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::Parts;
use crate::boot::{BootError, BootReport};
use crate::checkpoint::Checkpointer;
use crate::dispatcher::{self, Dispatcher, DispatcherError, Ended, Stop};
use crate::handle::{BrokerError, ClusterView, Command, Role, View};
use crate::worker_listener::{Rejection, WorkerEvent};

/// Pause between attempts at reaching ZooKeeper or BookKeeper while they are down.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Attempts at taking the log over while this broker holds the leadership but another broker
/// changed the ledger list (a previous leader rolling a ledger as it was being replaced).
const TAKE_OVER_ATTEMPTS: usize = 5;
/// Records buffered between the tailing task and the follower.
const TAIL_CHANNEL: usize = 64;
/// Longest a snapshot download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a booting broker keeps asking a leader that is not ready yet (still recovering,
/// or just replaced) for a snapshot.
const DOWNLOAD_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between those attempts.
const DOWNLOAD_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// How a broker takes part in a replicated cluster.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// ZooKeeper: where the cluster's znodes are.
    pub coord: CoordConfig,
    /// BookKeeper client settings (its ZooKeeper and ledgers root).
    pub bookkeeper: bookkeeper_client::ClientConfig,
    /// The ledgers: quorums, password, rolls, retention.
    pub log: BkLogConfig,
    /// What this broker publishes: its worker address, API URL and id.
    pub me: BrokerInfo,
    /// Bearer token accepted by the other brokers' snapshot endpoint (an admin user's), used
    /// to download a snapshot from the leader at boot when no local one is usable.
    pub peer_token: Option<String>,
    /// How often the broker publishes the position it has applied.
    pub publish_interval: Duration,
}

/// ZooKeeper and BookKeeper sessions.
#[derive(Clone)]
struct Links {
    coord: Coordinator,
    bk: BookKeeper,
}

impl Links {
    async fn connect(settings: &ClusterSettings) -> Result<Links, String> {
        let coord = Coordinator::connect(&settings.coord)
            .await
            .map_err(|e| e.to_string())?;
        let bk = BookKeeper::connect(settings.bookkeeper.clone())
            .await
            .map_err(|e| format!("connect to BookKeeper: {e}"))?;
        Ok(Links { coord, bk })
    }

    fn lost(&self) -> bool {
        self.coord.session_lost() || self.bk.session_expired()
    }
}

/// What the broker knows of the cluster, kept fresh by [`publish`].
struct Published {
    view: watch::Receiver<ClusterView>,
    leader: watch::Receiver<Option<BrokerInfo>>,
    /// Position applied, read by the publisher.
    applied: Arc<AtomicU64>,
    _task: AbortOnDrop,
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Registers this broker and keeps its discovery znode, the leader's address and the list of
/// brokers up to date, every `interval`.
fn publish(links: &Links, settings: &ClusterSettings, applied: u64) -> Published {
    let (view_tx, view) = watch::channel(ClusterView::default());
    let (leader_tx, leader) = watch::channel(None);
    let applied = Arc::new(AtomicU64::new(applied));
    let coord = links.coord.clone();
    let me = settings.me.clone();
    let interval = settings.publish_interval;
    let position = applied.clone();
    let task = tokio::spawn(async move {
        let mut registration = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut info = me.clone();
            info.set_number(APPLIED_LSN, position.load(Ordering::Acquire));
            info.set_number(UPDATED_AT, now_ms() as u64);
            match &registration {
                None => match coord.register(&info).await {
                    Ok(r) => registration = Some(r),
                    Err(e) => debug!(error = %e, "cannot register in the discovery directory yet"),
                },
                Some(r) => {
                    if let Err(e) = r.update(&info).await {
                        debug!(error = %e, "cannot publish the applied position");
                    }
                }
            }
            let leader = coord.leader().await.ok().flatten();
            let brokers = coord.brokers().await.unwrap_or_default();
            // A list that cannot be read this time keeps the one read before.
            let ledgers: Vec<ClusterLedger> = match coord.ledgers().await {
                Ok(l) => l
                    .info
                    .ledgers()
                    .map(|(ledger_id, created_at, first_lsn)| ClusterLedger {
                        ledger_id,
                        created_at,
                        first_lsn,
                    })
                    .collect(),
                Err(e) => {
                    debug!(error = %e, "cannot read the ledger list");
                    view_tx.borrow().ledgers.clone()
                }
            };
            let view = ClusterView {
                current_ledger: ledgers.last().map(|l| l.ledger_id),
                ledgers,
                brokers: brokers
                    .iter()
                    .map(|b| {
                        (
                            b.broker_id().unwrap_or_default().to_owned(),
                            b.api_url().unwrap_or_default().to_owned(),
                            b.applied_lsn(),
                        )
                    })
                    .collect(),
                leader_id: leader
                    .as_ref()
                    .and_then(|l| l.broker_id().map(str::to_owned)),
            };
            leader_tx.send_replace(leader);
            view_tx.send_replace(view);
        }
    });
    Published {
        view,
        leader,
        applied,
        _task: AbortOnDrop(task),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The broker task of a replicated broker: boot, then follow and lead in turn until shutdown.
pub(crate) async fn serve_replicated(
    parts: Parts,
    settings: ClusterSettings,
    mut commands: mpsc::Receiver<Command>,
    mut events: mpsc::Receiver<WorkerEvent>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    recovered: oneshot::Sender<crate::Booted>,
) -> Result<(), DispatcherError> {
    tokio::pin!(shutdown);
    let mut io = Io {
        commands: &mut commands,
        events: &mut events,
        shutdown: shutdown.as_mut(),
    };
    let Some(mut links) = io.connect(&settings).await else {
        let _ = recovered.send(Err(BootError::Stopped));
        return Ok(());
    };
    let booted = io
        .busy(
            boot(
                &links,
                &settings,
                parts.snapshots.clone(),
                parts.mapper.clone(),
            ),
            BrokerError::Recovering,
        )
        .await;
    let (mut state, report) = match booted {
        None => {
            let _ = recovered.send(Err(BootError::Stopped));
            return Ok(());
        }
        Some(Err(e)) => {
            let message = e.to_string();
            let _ = recovered.send(Err(e));
            return Err(DispatcherError::Boot(message));
        }
        Some(Ok(booted)) => booted,
    };
    let mut checkpointer = parts
        .snapshots
        .clone()
        .map(|store| Checkpointer::new(store, report.snapshot_lsn));
    let _ = recovered.send(Ok((report, None)));
    loop {
        let published = publish(&links, &settings, state.last_lsn());
        let ended = follow(
            &mut state,
            &links,
            &settings,
            &parts,
            &published,
            &mut io,
            &mut checkpointer,
        )
        .await;
        match ended {
            FollowEnd::Shutdown => return Ok(()),
            FollowEnd::Failed(e) => return Err(e),
            FollowEnd::SessionLost => {
                warn!("ZooKeeper or BookKeeper session lost; connecting again");
                drop(published);
                match io.connect(&settings).await {
                    Some(fresh) => links = fresh,
                    None => return Ok(()),
                }
            }
            FollowEnd::Rebuild(why) => {
                warn!(reason = %why, "the ledgers no longer hold this broker's position; booting again");
                let booted = io
                    .busy(
                        boot(
                            &links,
                            &settings,
                            parts.snapshots.clone(),
                            parts.mapper.clone(),
                        ),
                        BrokerError::Recovering,
                    )
                    .await;
                match booted {
                    None => return Ok(()),
                    Some(Ok((fresh, _))) => state = fresh,
                    Some(Err(e)) => return Err(DispatcherError::Boot(e.to_string())),
                }
            }
            FollowEnd::Elected(leadership) => {
                let led = lead(
                    state,
                    leadership,
                    &links,
                    &settings,
                    &parts,
                    &published,
                    &mut io,
                    &mut checkpointer,
                )
                .await;
                match led {
                    LeadEnd::Shutdown => return Ok(()),
                    LeadEnd::Failed(e) => return Err(e),
                    LeadEnd::SteppedDown(fresh) => {
                        state = *fresh;
                        if links.lost() {
                            match io.connect(&settings).await {
                                Some(fresh) => links = fresh,
                                None => return Ok(()),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The broker's inputs and its stop signal, shared by the roles.
struct Io<'a, S: Future<Output = ()>> {
    commands: &'a mut mpsc::Receiver<Command>,
    events: &'a mut mpsc::Receiver<WorkerEvent>,
    shutdown: Pin<&'a mut S>,
}

impl<S: Future<Output = ()>> Io<'_, S> {
    /// Runs `work`, answering every request with `refusal` meanwhile; `None` on shutdown.
    async fn busy<T>(&mut self, work: impl Future<Output = T>, refusal: BrokerError) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.as_mut() => return None,
                done = &mut work => return Some(done),
                Some(command) = self.commands.recv() => command.refuse(refusal.clone()),
                Some(event) = self.events.recv() => dispatcher::refuse_event(event, &refusal),
            }
        }
    }

    /// Connects to ZooKeeper and BookKeeper, retrying until they answer; `None` on shutdown.
    async fn connect(&mut self, settings: &ClusterSettings) -> Option<Links> {
        let mut warned = false;
        loop {
            match self
                .busy(Links::connect(settings), BrokerError::Recovering)
                .await?
            {
                Ok(links) => return Some(links),
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "cannot reach the cluster yet; retrying");
                        warned = true;
                    }
                    self.busy(tokio::time::sleep(RECONNECT_PAUSE), BrokerError::Recovering)
                        .await?;
                }
            }
        }
    }
}

/// Builds the state to start from, following the original's decision tree:
/// 1. the newest local snapshot whose position the listed ledgers still continue;
/// 2. otherwise a snapshot downloaded from the leader (needs [`ClusterSettings::peer_token`]);
/// 3. otherwise the empty state, when the ledgers still hold the whole history;
/// 4. otherwise an error telling the operator what to do.
///
/// The records after the state's position are then replayed by following the ledgers.
async fn boot(
    links: &Links,
    settings: &ClusterSettings,
    snapshots: Option<Arc<SnapshotStore>>,
    mapper: Arc<dyn GroupMapper>,
) -> Result<(BrokerState, BootReport), BootError> {
    let started = Instant::now();
    let listed = links
        .coord
        .ledgers()
        .await
        .map_err(|e| BootError::Cluster(e.to_string()))?;
    let first = listed.info.first_lsn();
    let report = |state: &BrokerState, snapshot_lsn: Option<u64>| BootReport {
        snapshot_lsn,
        replayed: 0,
        last_lsn: state.last_lsn(),
        tasks: state.task_count(),
        elapsed: started.elapsed(),
    };
    let mut local_lsn = None;
    if let Some(store) = &snapshots
        && let Some((lsn, state)) = load_snapshot(store.clone(), mapper.clone()).await?
    {
        local_lsn = Some(lsn);
        if lsn + 1 >= first {
            info!(lsn, "booting from the local snapshot");
            let r = report(&state, Some(lsn));
            return Ok((state, r));
        }
        info!(
            lsn,
            first_lsn = first,
            "the local snapshot is older than the ledgers"
        );
    }
    let leader = links
        .coord
        .leader()
        .await
        .map_err(|e| BootError::Cluster(e.to_string()))?;
    let me = settings.me.broker_id();
    let download_until = Instant::now() + DOWNLOAD_PATIENCE;
    let mut leader = leader;
    while let (Some(current), Some(store), Some(token)) =
        (&leader, &snapshots, &settings.peer_token)
        && current.broker_id() != me
        && let Some(url) = current.api_url()
    {
        let lsn = match download_snapshot(url, token, store).await {
            Ok(lsn) => lsn,
            Err(Download::Failed(e)) => return Err(e),
            Err(Download::NotReady(why)) if Instant::now() < download_until => {
                info!(
                    from = url,
                    why, "the leader cannot serve a snapshot yet; retrying"
                );
                tokio::time::sleep(DOWNLOAD_RETRY_PAUSE).await;
                leader = links
                    .coord
                    .leader()
                    .await
                    .map_err(|e| BootError::Cluster(e.to_string()))?;
                continue;
            }
            Err(Download::NotReady(why)) => {
                return Err(BootError::Cluster(format!(
                    "download a snapshot from {url}: the leader was still not ready after {}s: {why}",
                    DOWNLOAD_PATIENCE.as_secs()
                )));
            }
        };
        info!(lsn, from = url, "downloaded a snapshot from the leader");
        let (lsn, state) = load_snapshot(store.clone(), mapper.clone())
            .await?
            .ok_or_else(|| BootError::Cluster("the downloaded snapshot is gone".into()))?;
        if lsn + 1 < first {
            return Err(BootError::Cluster(format!(
                "the leader's snapshot covers up to lsn {lsn} but the ledgers start at lsn {first}"
            )));
        }
        let r = report(&state, Some(lsn));
        return Ok((state, r));
    }
    if listed.info.has_full_history() {
        info!("booting from the empty state: the ledgers hold the whole history");
        let state = BrokerState::new(mapper);
        let r = report(&state, None);
        return Ok((state, r));
    }
    Err(BootError::NoUsableSnapshot {
        first_lsn: first,
        local: local_lsn,
        leader: leader.as_ref().and_then(|l| l.api_url().map(str::to_owned)),
        peer_token: settings.peer_token.is_some(),
    })
}

/// Reads and decodes the newest valid snapshot of `store`, on a blocking thread.
async fn load_snapshot(
    store: Arc<SnapshotStore>,
    mapper: Arc<dyn GroupMapper>,
) -> Result<Option<(u64, BrokerState)>, BootError> {
    tokio::task::spawn_blocking(move || crate::boot::load_snapshot(&store, mapper))
        .await
        .map_err(|e| BootError::Dispatcher(format!("snapshot loader failed: {e}")))?
}

/// Why [`download_snapshot`] did not bring a snapshot.
#[derive(Debug)]
pub enum Download {
    /// The broker refused for now (it is recovering, or no longer the leader): ask again,
    /// after finding the leader again.
    NotReady(String),
    /// Anything else (unreachable, refused credentials, a file that does not validate).
    Failed(BootError),
}

/// Downloads the snapshot of the leader whose API is at `api_url` into `store` (streamed to a
/// temporary file, then validated and adopted), with the bearer `token` of an admin user;
/// returns its log position. This is how a broker boots when no local snapshot is usable.
///
/// # Errors
/// [`Download::NotReady`] when the leader answered that it cannot serve one yet (503, or a
/// retryable refusal); [`Download::Failed`] otherwise.
pub async fn download_snapshot(
    api_url: &str,
    token: &str,
    store: &Arc<SnapshotStore>,
) -> Result<u64, Download> {
    let failed = |what: String| {
        Download::Failed(BootError::Cluster(format!(
            "download a snapshot from {api_url}: {what}"
        )))
    };
    let mut client = reqwest::Client::builder().timeout(DOWNLOAD_TIMEOUT);
    if api_url.starts_with("https://") {
        // A leader serving TLS is verified against this host's root certificates.
        let tls = majordodo_tls::client_config(&majordodo_tls::ClientTlsFiles::default())
            .map_err(|e| failed(e.to_string()))?;
        client = client.use_preconfigured_tls(std::sync::Arc::unwrap_or_clone(tls));
    }
    let client = client.build().map_err(|e| failed(e.to_string()))?;
    let url = format!("{}/snapshot", api_url.trim_end_matches('/'));
    let response = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let announced = response
        .headers()
        .get(crate::http::SNAPSHOT_LSN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(announced) = announced.filter(|_| status.is_success()) else {
        let body = response.text().await.unwrap_or_default();
        let refusal = serde_json::from_str::<majordodo_proto::http::ErrorBody>(&body).ok();
        let why = match &refusal {
            Some(r) => r.error.clone(),
            None => body.chars().take(300).collect(),
        };
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            || refusal.as_ref().is_some_and(|r| r.retryable)
        {
            return Err(Download::NotReady(why));
        }
        return Err(failed(format!("HTTP {status}: {why}")));
    };
    let tmp: PathBuf = store
        .dir()
        .join(format!("download-{}.tmp", std::process::id()));
    let written = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok::<(), std::io::Error>(())
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(failed(e.to_string()));
    }
    let store = store.clone();
    let path = tmp.clone();
    let imported = tokio::task::spawn_blocking(move || store.import(&path))
        .await
        .map_err(|e| failed(e.to_string()))?;
    match imported {
        Ok(info) if info.lsn.0 == announced => Ok(announced),
        Ok(info) => Err(failed(format!(
            "the leader announced a snapshot at lsn {announced} and sent one at lsn {}",
            info.lsn.0
        ))),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(failed(e.to_string()))
        }
    }
}

/// How following ended.
enum FollowEnd {
    Shutdown,
    Elected(Leadership),
    SessionLost,
    /// The ledgers dropped the position this broker follows from: boot again.
    Rebuild(String),
    Failed(DispatcherError),
}

/// What the tailing task hands the follower: the records of one ledger entry, or why it
/// stopped.
type Tailed = Result<Vec<(Lsn, Bytes)>, LogError>;

/// Reads the log after `after` in a task of its own, so that the follower's other work never
/// interrupts a long poll.
fn spawn_tail(
    links: &Links,
    password: Vec<u8>,
    after: Lsn,
) -> (mpsc::Receiver<Tailed>, AbortOnDrop) {
    let (tx, rx) = mpsc::channel(TAIL_CHANNEL);
    let mut follower = LogFollower::new(links.bk.clone(), links.coord.clone(), password, after);
    let task = tokio::spawn(async move {
        loop {
            match follower.next().await {
                Ok(records) => {
                    if tx.send(Ok(records)).await.is_err() {
                        return;
                    }
                }
                Err(e) if e.is_retryable() => {
                    debug!(error = %e, "reading the ledgers failed; retrying");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// Applies log records to a follower's state.
fn apply_records(
    state: &mut BrokerState,
    records: Vec<(Lsn, Bytes)>,
) -> Result<(), DispatcherError> {
    for (lsn, bytes) in records {
        if lsn.0 <= state.last_lsn() {
            continue;
        }
        let entry = decode_entry(&bytes).map_err(|e| {
            DispatcherError::Log(LogError::Corrupt {
                file: "ledgers".into(),
                offset: lsn.0,
                reason: e.to_string(),
            })
        })?;
        state.apply(lsn.0, entry)?;
    }
    Ok(())
}

/// The follower role: see the module documentation.
#[allow(clippy::too_many_arguments)]
async fn follow<S: Future<Output = ()>>(
    state: &mut BrokerState,
    links: &Links,
    settings: &ClusterSettings,
    parts: &Parts,
    published: &Published,
    io: &mut Io<'_, S>,
    checkpointer: &mut Option<Checkpointer>,
) -> FollowEnd {
    info!(lsn = state.last_lsn(), "following the leader");
    let (mut tail, _tail_task) =
        spawn_tail(links, settings.log.password.clone(), Lsn(state.last_lsn()));
    let election = links.coord.elect(&settings.me);
    tokio::pin!(election);
    let session_lost = links.coord.wait_session_lost();
    tokio::pin!(session_lost);
    let interval = parts
        .config
        .dispatcher
        .checkpoint_interval
        .unwrap_or(Duration::from_secs(3600));
    let mut next_snapshot = Instant::now() + interval;
    let mut snapshotted = state.last_lsn();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            () = io.shutdown.as_mut() => return FollowEnd::Shutdown,
            () = &mut session_lost => return FollowEnd::SessionLost,
            elected = &mut election => return match elected {
                Ok(leadership) => FollowEnd::Elected(leadership),
                Err(CoordError::SessionExpired) => FollowEnd::SessionLost,
                Err(e) => {
                    warn!(error = %e, "election failed");
                    FollowEnd::SessionLost
                }
            },
            batch = tail.recv() => match batch {
                Some(Ok(records)) => {
                    if let Err(e) = apply_records(state, records) {
                        error!(error = %e, "a replicated entry does not apply; stopping");
                        return FollowEnd::Failed(e);
                    }
                    published.applied.store(state.last_lsn(), Ordering::Release);
                }
                Some(Err(LogError::Released { first, .. })) => {
                    return FollowEnd::Rebuild(format!("the ledgers start at lsn {first}"));
                }
                Some(Err(e)) => return FollowEnd::Failed(DispatcherError::Log(e)),
                None => return FollowEnd::SessionLost,
            },
            Some(command) = io.commands.recv() => {
                let leader = published.leader.borrow().as_ref().and_then(|l| l.api_url().map(str::to_owned));
                match command {
                    Command::Query(query) => {
                        let cluster = published.view.borrow().clone();
                        query(Ok(&View {
                            state,
                            role: Role::Follower,
                            broker_id: &parts.broker_id,
                            leader: leader.as_deref(),
                            cluster: Some(&cluster),
                            now: parts.clock.now(),
                            leader_core: None,
                        }));
                    }
                    Command::Submit { reply, .. } => {
                        let _ = reply.send(Err(BrokerError::NotLeader(leader)));
                    }
                    Command::CodePool { reply, .. } => {
                        let _ = reply.send(Err(BrokerError::NotLeader(leader)));
                    }
                    Command::Act { reply, .. } => {
                        let _ = reply.send(Err(BrokerError::NotLeader(leader)));
                    }
                    Command::Admin { reply, .. } => {
                        let _ = reply.send(Err(BrokerError::NotLeader(leader)));
                    }
                    Command::Checkpoint { reply } => match checkpointer.as_mut() {
                        Some(cp) => match cp.start(state, None) {
                            Ok(pending) => {
                                tokio::spawn(async move {
                                    let _ = reply.send(pending.await);
                                });
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        },
                        None => {
                            let _ = reply.send(Err(BrokerError::Snapshot(
                                "this broker has no snapshot store".into(),
                            )));
                        }
                    },
                }
            }
            Some(event) = io.events.recv() => {
                if let WorkerEvent::Connected { reply, .. } = event {
                    let at = published.leader.borrow().as_ref().map(BrokerInfo::worker_address);
                    reply.reject(Rejection {
                        reason: match at {
                            Some(at) => format!("broker_not_leader: the leader's worker port is {at}"),
                            None => "broker_not_leader: no leader is known yet".to_owned(),
                        },
                        retryable: true,
                    });
                }
            }
            _ = tick.tick() => {
                if Instant::now() >= next_snapshot {
                    next_snapshot = Instant::now() + interval;
                    if state.last_lsn() > snapshotted
                        && let Some(cp) = checkpointer.as_mut()
                        && !cp.busy()
                        && let Ok(pending) = cp.start(state, None)
                    {
                        snapshotted = state.last_lsn();
                        tokio::spawn(pending);
                    }
                }
            }
        }
    }
}

/// How leading ended.
enum LeadEnd {
    Shutdown,
    /// Another broker leads now; the state to follow on from.
    SteppedDown(Box<BrokerState>),
    Failed(DispatcherError),
}

/// A state whose derived indexes are rebuilt from its tasks: after stepping down, the leader's
/// queues ran ahead of its state (decisions never applied).
fn rebuild(
    state: BrokerState,
    mapper: Arc<dyn GroupMapper>,
) -> Result<BrokerState, DispatcherError> {
    BrokerState::from_snapshot(state.to_snapshot(), mapper)
        .map_err(|e| DispatcherError::Boot(format!("rebuild the state after stepping down: {e}")))
}

/// The leader role: take the log over, catch up, then run the dispatcher until shutdown or
/// until another broker leads.
#[allow(clippy::too_many_arguments)]
async fn lead<S: Future<Output = ()>>(
    mut state: BrokerState,
    leadership: Leadership,
    links: &Links,
    settings: &ClusterSettings,
    parts: &Parts,
    published: &Published,
    io: &mut Io<'_, S>,
    checkpointer: &mut Option<Checkpointer>,
) -> LeadEnd {
    info!(lsn = state.last_lsn(), "elected: taking the log over");
    let mut attempt = 0;
    let log = loop {
        attempt += 1;
        let opened = io
            .busy(
                BookKeeperLog::open(links.bk.clone(), links.coord.clone(), settings.log.clone()),
                BrokerError::Recovering,
            )
            .await;
        match opened {
            None => {
                leadership.resign().await;
                return LeadEnd::Shutdown;
            }
            Some(Ok((log, takeover))) => {
                info!(
                    recovered_ledger = ?takeover.recovered_ledger,
                    last_lsn = takeover.last_lsn.0,
                    ledger = takeover.ledger_id,
                    "took the log over"
                );
                break Arc::new(log);
            }
            Some(Err(LogError::Fenced(why)))
                if leadership.is_held() && attempt < TAKE_OVER_ATTEMPTS =>
            {
                warn!(reason = %why, "the ledger list changed while taking over; again");
            }
            Some(Err(e)) => {
                warn!(error = %e, "could not take the log over; following again");
                leadership.resign().await;
                return LeadEnd::SteppedDown(Box::new(state));
            }
        }
    };
    let from = Lsn(state.last_lsn());
    let mut apply = |lsn: Lsn, bytes: Bytes| -> Result<(), String> {
        let entry = decode_entry(&bytes).map_err(|e| e.to_string())?;
        state.apply(lsn.0, entry).map_err(|e| e.to_string())
    };
    let caught_up = io
        .busy(log.replay(from, &mut apply), BrokerError::Recovering)
        .await;
    match caught_up {
        None => {
            let _ = log.close().await;
            return LeadEnd::Shutdown;
        }
        Some(Err(e)) => {
            error!(error = %e, "could not replay the log after taking it over");
            log.crash().await;
            leadership.resign().await;
            return LeadEnd::Failed(DispatcherError::Log(e));
        }
        Some(Ok(replayed)) => info!(
            records = replayed.records,
            lsn = state.last_lsn(),
            "caught up; leading"
        ),
    }
    published.applied.store(state.last_lsn(), Ordering::Release);
    let leader = Leader::new(state, parts.config.leader.clone(), parts.clock.now());
    let mut dispatcher = Dispatcher::new(
        leader,
        log.clone() as Arc<dyn CommitLog>,
        parts.clock.clone(),
        parts.config.dispatcher.clone(),
        parts.broker_id.clone(),
        checkpointer.take(),
    )
    .with_metrics(parts.metrics.clone());
    dispatcher.cluster = Some(published.view.clone());
    let applied = published.applied.clone();
    let position_log = log.clone();
    let position = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            applied.store(position_log.last_lsn().0, Ordering::Release);
        }
    }));
    let stop = async {
        tokio::select! {
            () = io.shutdown.as_mut() => Stop::Shutdown,
            why = leadership.lost() => Stop::LostLeadership(why),
        }
    };
    let ended = dispatcher.run(io.commands, io.events, stop).await;
    drop(position);
    let (leader, cp) = dispatcher.into_parts();
    *checkpointer = cp;
    let step_down = |leader: Leader| match rebuild(leader.abandon(), parts.mapper.clone()) {
        Ok(state) => LeadEnd::SteppedDown(Box::new(state)),
        Err(e) => LeadEnd::Failed(e),
    };
    match ended {
        Ok(Ended::Shutdown | Ended::InputsClosed) => {
            if let Err(e) = log.close().await {
                warn!(error = %e, "closing the ledger failed; the next leader recovers it");
            }
            leadership.resign().await;
            LeadEnd::Shutdown
        }
        Ok(Ended::LostLeadership(why)) => {
            info!(reason = %why, "stepped down");
            log.crash().await;
            leadership.resign().await;
            step_down(leader)
        }
        Err(DispatcherError::Log(LogError::Fenced(why))) => {
            warn!(reason = %why, "the log was fenced: another broker leads; stepping down");
            log.crash().await;
            leadership.resign().await;
            step_down(leader)
        }
        Err(e) => {
            log.crash().await;
            leadership.resign().await;
            LeadEnd::Failed(e)
        }
    }
}
