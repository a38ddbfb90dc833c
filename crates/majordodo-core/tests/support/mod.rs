//! A small driver that plays the broker runtime around a `Leader`: entries are "logged" into a
//! vector, applied in order when a batch is made durable, and assignments are delivered to
//! simulated workers.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use majordodo_core::leader::{
    FinishReport, Outcome, SubmitOutcome, SubmitRequest, WorkerAssignments, WorkerHello,
};
use majordodo_core::{
    BrokerState, DefaultGroupMapper, Leader, LeaderConfig, LogEntry, Millis, TaskId, WorkerCapacity,
};

pub struct Sim {
    pub leader: Leader,
    /// Every durable entry, in log order (index + 1 = lsn).
    pub log: Vec<LogEntry>,
    /// Batches "being written": entries plus the assignments to deliver once durable.
    pub inflight: VecDeque<(Vec<LogEntry>, Vec<WorkerAssignments>)>,
    pub now: Millis,
    /// What each simulated worker process runs: worker id -> (task, attempt).
    pub workers: BTreeMap<String, BTreeSet<(TaskId, u32)>>,
    pub conns: BTreeMap<String, u64>,
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
            next_conn: 1,
        }
    }

    pub fn push(&mut self, entries: Vec<LogEntry>) {
        if !entries.is_empty() {
            self.inflight.push_back((entries, Vec::new()));
        }
    }

    /// Makes the oldest batch durable: applies it and delivers its assignments.
    pub fn flush_one(&mut self) -> bool {
        let Some((entries, assignments)) = self.inflight.pop_front() else {
            return false;
        };
        for e in entries {
            self.log.push(e.clone());
            let lsn = self.log.len() as u64;
            self.leader
                .apply(lsn, e)
                .unwrap_or_else(|err| panic!("leader entry refused at lsn {lsn}: {err}"));
        }
        for a in assignments {
            let Some(conn) = self.conns.get(&*a.worker_id) else {
                continue;
            };
            if *conn != a.conn {
                continue;
            }
            for (task, attempt) in a.tasks {
                if self.leader.deliverable(task, &a.worker_id, attempt) {
                    self.workers
                        .entry(a.worker_id.to_string())
                        .or_default()
                        .insert((task, attempt));
                }
            }
        }
        true
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
        let (assigned, pushes) = self.leader.assign(self.now);
        entries.extend(assigned);
        let batch = entries.clone();
        if !entries.is_empty() {
            self.inflight.push_back((entries, pushes));
        }
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
        self.conns.insert(worker.into(), conn);
        self.workers.entry(worker.into()).or_default();
        self.push(admission.entries);
        Ok(())
    }

    /// The worker's connection drops; the process keeps what it runs.
    pub fn disconnect(&mut self, worker: &str) {
        if let Some(conn) = self.conns.remove(worker) {
            let entries = self.leader.worker_disconnected(self.now, worker, conn);
            self.push(entries);
        }
    }

    /// The worker process dies: forgets what it runs, and its connection drops.
    pub fn crash(&mut self, worker: &str) {
        self.disconnect(worker);
        self.workers.remove(worker);
    }

    pub fn report(
        &mut self,
        worker: &str,
        task: TaskId,
        attempt: u32,
        outcome: Outcome,
        result: &str,
    ) {
        if let Some(set) = self.workers.get_mut(worker) {
            set.remove(&(task, attempt));
        }
        let entries = self.leader.finish_reports(
            self.now,
            worker,
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
        let (entries, assignments) = self.leader.assign(self.now);
        if !entries.is_empty() {
            self.inflight.push_back((entries, assignments));
        }
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
