//! A small driver that plays the broker runtime around a `Leader`: entries are "logged" into a
//! vector and applied in order when a batch is made durable; a worker's session opens when the
//! batch admitting it is applied (as the dispatcher welcomes it); the assignments the leader
//! then hands out travel on the worker's connection and reach the worker process when it
//! receives them, or are lost with the connection.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use majordodo_core::leader::{FinishReport, Outcome, SubmitOutcome, SubmitRequest, WorkerHello};
use majordodo_core::{
    BrokerState, DefaultGroupMapper, Leader, LeaderConfig, LogEntry, Millis, TaskId, WorkerCapacity,
};

/// One worker connection as the network sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConn {
    /// Its id.
    pub id: u64,
    /// The broker welcomed it (its admission batch was applied).
    pub open: bool,
    /// Assignments pushed on it that the worker has not read yet; lost if it drops.
    pub transit: Vec<(TaskId, u32)>,
    /// Cancellations sent on it that the worker has not read yet; lost if it drops.
    pub cancel_transit: Vec<(TaskId, u32)>,
}

/// A batch "being written".
#[derive(Clone, Debug)]
pub struct Batch {
    pub entries: Vec<LogEntry>,
    /// The connection this batch admits: welcomed once the batch is applied.
    pub welcome: Option<(String, u64)>,
}

pub struct Sim {
    pub leader: Leader,
    /// Every durable entry, in log order (index + 1 = lsn).
    pub log: Vec<LogEntry>,
    /// Batches "being written", oldest first.
    pub inflight: VecDeque<Batch>,
    pub now: Millis,
    /// What each simulated worker process runs: worker id -> (task, attempt).
    pub workers: BTreeMap<String, BTreeSet<(TaskId, u32)>>,
    /// Each worker's current connection.
    pub conns: BTreeMap<String, SimConn>,
    /// Whether pushes reach the worker process at once (true) or wait in transit until
    /// [`Sim::receive`] (false, for schedules that drop connections with pushes in flight).
    pub auto_receive: bool,
    /// Cancellations each worker process has received and not yet carried out.
    pub cancelled: BTreeMap<String, BTreeSet<(TaskId, u32)>>,
    /// Called with every batch the leader decides, before it is handed to the "log".
    pub on_push: Option<fn(&Sim, &[LogEntry])>,
    next_conn: u64,
}

impl Sim {
    pub fn new(config: LeaderConfig) -> Sim {
        Sim {
            leader: Leader::new(BrokerState::default(), config, 1_000),
            log: Vec::new(),
            inflight: VecDeque::new(),
            now: 1_000,
            workers: BTreeMap::new(),
            conns: BTreeMap::new(),
            auto_receive: true,
            cancelled: BTreeMap::new(),
            next_conn: 1,
            on_push: None,
        }
    }

    pub fn push(&mut self, entries: Vec<LogEntry>) {
        if let Some(check) = self.on_push {
            check(self, &entries);
        }
        if !entries.is_empty() {
            self.inflight.push_back(Batch {
                entries,
                welcome: None,
            });
        }
    }

    /// Makes the oldest batch durable: applies it, welcomes the connection it admits, and
    /// pushes what the leader hands out.
    pub fn flush_one(&mut self) -> bool {
        let Some(batch) = self.inflight.pop_front() else {
            return false;
        };
        for e in batch.entries {
            self.log.push(e.clone());
            let lsn = self.log.len() as u64;
            self.leader
                .apply(lsn, e)
                .unwrap_or_else(|err| panic!("leader entry refused at lsn {lsn}: {err}"));
        }
        if let Some((worker, conn)) = batch.welcome
            && self.leader.session_opened(&worker, conn)
        {
            let current = self
                .conns
                .get_mut(&worker)
                .expect("the leader's current connection is the network's");
            assert_eq!(
                current.id, conn,
                "{worker}: the leader opened a stale connection"
            );
            current.open = true;
        }
        self.deliver();
        true
    }

    /// Takes the leader's pushes and puts them on the connections.
    pub fn deliver(&mut self) {
        for wa in self.leader.take_pushes() {
            let conn = self
                .conns
                .get_mut(&*wa.worker_id)
                .unwrap_or_else(|| panic!("push to {} which has no connection", wa.worker_id));
            assert_eq!(
                conn.id, wa.conn,
                "push to a stale connection of {}",
                wa.worker_id
            );
            assert!(conn.open, "push to {} before its welcome", wa.worker_id);
            conn.transit.extend(wa.tasks);
        }
        for wc in self.leader.take_cancels() {
            let conn = self
                .conns
                .get_mut(&*wc.worker_id)
                .unwrap_or_else(|| panic!("cancel to {} which has no connection", wc.worker_id));
            assert_eq!(conn.id, wc.conn, "cancel to a stale connection");
            assert!(conn.open, "cancel to {} before its welcome", wc.worker_id);
            conn.cancel_transit.extend(wc.tasks);
        }
        if self.auto_receive {
            let workers: Vec<String> = self.conns.keys().cloned().collect();
            for w in workers {
                self.receive(&w);
            }
        }
    }

    /// The worker process reads what is in transit on its connection.
    pub fn receive(&mut self, worker: &str) {
        let Some(conn) = self.conns.get_mut(worker) else {
            return;
        };
        let got = std::mem::take(&mut conn.transit);
        let cancels = std::mem::take(&mut conn.cancel_transit);
        self.workers.entry(worker.into()).or_default().extend(got);
        self.cancelled
            .entry(worker.into())
            .or_default()
            .extend(cancels);
    }

    /// The worker process stops the cancelled attempts it runs and reports each one ended.
    pub fn stop_cancelled(&mut self, worker: &str) {
        let cancels = self.cancelled.remove(worker).unwrap_or_default();
        for (task, attempt) in cancels {
            if self
                .workers
                .get(worker)
                .is_some_and(|s| s.contains(&(task, attempt)))
            {
                self.report(worker, task, attempt, Outcome::Error, "cancelled");
            }
        }
    }

    pub fn flush(&mut self) {
        while self.flush_one() {}
    }

    pub fn submit(&mut self, req: SubmitRequest) -> SubmitOutcome {
        let (outcome, entry) = self.leader.submit(self.now, req);
        self.push(entry.into_iter().collect());
        outcome
    }

    /// Submits and assigns in one batch, as the dispatcher does within one round.
    pub fn submit_in_round(&mut self, req: SubmitRequest) -> (SubmitOutcome, Vec<LogEntry>) {
        let (outcome, entry) = self.leader.submit(self.now, req);
        let mut entries: Vec<LogEntry> = entry.into_iter().collect();
        entries.extend(self.leader.assign(self.now));
        let batch = entries.clone();
        self.push(entries);
        (outcome, batch)
    }

    pub fn submit_simple(&mut self, user: &str, task_type: &str, max_attempts: u32) -> TaskId {
        match self.submit(SubmitRequest {
            task_type: task_type.into(),
            user_id: user.into(),
            data: format!("data-{}", self.now),
            max_attempts,
            ..Default::default()
        }) {
            SubmitOutcome::Accepted(id) => id,
            SubmitOutcome::NotCreated(why) => panic!("not created: {why}"),
        }
    }

    /// The worker process opens a new connection, listing what it runs. An older connection of
    /// the same process is replaced: the worker dropped it, and what was in transit on it is lost.
    pub fn connect(&mut self, worker: &str, capacity: WorkerCapacity) -> Result<(), String> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let running: Vec<(TaskId, u32)> = self
            .workers
            .get(worker)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let admission = self
            .leader
            .worker_connected(
                self.now,
                WorkerHello {
                    conn,
                    worker_id: worker.into(),
                    process_id: format!("{worker}-process"),
                    location: "here".into(),
                    capacity,
                    running,
                },
            )
            .map_err(|e| e.to_string())?;
        self.conns.insert(
            worker.into(),
            SimConn {
                id: conn,
                open: false,
                transit: Vec::new(),
                cancel_transit: Vec::new(),
            },
        );
        self.workers.entry(worker.into()).or_default();
        self.inflight.push_back(Batch {
            entries: admission.entries,
            welcome: Some((worker.into(), conn)),
        });
        Ok(())
    }

    /// The worker's connection drops (with what was in transit on it); the process keeps what
    /// it runs.
    pub fn disconnect(&mut self, worker: &str) {
        if let Some(conn) = self.conns.remove(worker) {
            let entries = self.leader.worker_disconnected(self.now, worker, conn.id);
            self.push(entries);
        }
    }

    /// The worker process dies: forgets what it runs, and its connection drops.
    pub fn crash(&mut self, worker: &str) {
        self.disconnect(worker);
        self.workers.remove(worker);
        self.cancelled.remove(worker);
    }

    pub fn report(
        &mut self,
        worker: &str,
        task: TaskId,
        attempt: u32,
        outcome: Outcome,
        result: &str,
    ) {
        // A worker without a connection keeps its report until it has one (it lists the attempt
        // as running when it reconnects).
        let Some(conn) = self.conns.get(worker).map(|c| c.id) else {
            return;
        };
        if let Some(set) = self.workers.get_mut(worker) {
            set.remove(&(task, attempt));
        }
        let entries = self.leader.finish_reports(
            self.now,
            worker,
            conn,
            &[FinishReport {
                task_id: task,
                attempt,
                outcome,
                result: result.into(),
            }],
        );
        self.push(entries);
    }

    pub fn assign(&mut self) {
        let entries = self.leader.assign(self.now);
        self.push(entries);
    }

    pub fn tick(&mut self) {
        let entries = self.leader.tick(self.now);
        self.push(entries);
    }

    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
    }

    /// Submits → logs → assigns → delivers, until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            self.tick();
            self.flush();
            self.assign();
            if self.inflight.is_empty() {
                return;
            }
            self.flush();
        }
        panic!("simulation does not settle");
    }

    pub fn state(&self) -> &BrokerState {
        self.leader.state()
    }

    /// Replays the durable log into a fresh state.
    pub fn replay(&self) -> BrokerState {
        let mut state = BrokerState::new(Arc::new(DefaultGroupMapper));
        for (i, e) in self.log.iter().enumerate() {
            state
                .apply(i as u64 + 1, e.clone())
                .unwrap_or_else(|err| panic!("replay refused lsn {}: {err}", i + 1));
        }
        state
    }

    pub fn running_of(&self, worker: &str) -> Vec<(TaskId, u32)> {
        self.workers
            .get(worker)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}
