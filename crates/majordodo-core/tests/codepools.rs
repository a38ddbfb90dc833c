//! Code pools in the core: chunked creation, checksums, use by tasks, deletion and expiry, all
//! through the leader and replay.

mod support;

use majordodo_core::codepool::pool_entries;
use majordodo_core::leader::{CodePoolRefusal, Outcome, SubmitOutcome, SubmitRequest};
use majordodo_core::{ApplyError, BrokerState, Leader, LeaderConfig, LogEntry, WorkerCapacity};
use support::Sim;

fn archive(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn submit_with_pool(sim: &mut Sim, pool: &str) -> SubmitOutcome {
    sim.submit(SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        max_attempts: 1,
        codepool: Some(pool.into()),
        ..SubmitRequest::default()
    })
}

fn create(sim: &mut Sim, id: &str, ttl: i64, data: &[u8], chunk: usize) {
    let now = sim.now;
    let entries = sim
        .leader
        .create_code_pool(now, id, ttl, data, chunk)
        .expect("create");
    sim.push(entries);
    sim.flush();
}

#[test]
fn a_pool_is_logged_in_chunks_and_usable_once_its_last_chunk_checks() {
    // Goal: an archive larger than a chunk becomes one header and several chunk entries, none
    // larger than the chunk size; the pool is complete (with the same bytes) only after the
    // last one, and a replay rebuilds exactly the same pool.
    let mut sim = Sim::new(LeaderConfig::default());
    let data = archive(2_600);
    let now = sim.now;
    let entries = sim
        .leader
        .create_code_pool(now, "p", 0, &data, 1_000)
        .unwrap();
    assert_eq!(entries.len(), 4);
    for e in &entries[1..] {
        let LogEntry::CodePoolChunk { data, .. } = e else {
            panic!("not a chunk: {e:?}")
        };
        assert!(data.len() <= 1_000);
    }
    // While in flight, the id is taken and tasks cannot use it yet.
    assert!(matches!(
        sim.leader.create_code_pool(now, "p", 0, &data, 1_000),
        Err(CodePoolRefusal::Exists(_))
    ));
    assert!(matches!(
        submit_with_pool(&mut sim, "p"),
        SubmitOutcome::NotCreated(_)
    ));
    sim.push(entries);
    sim.flush();
    let pool = sim.state().codepool("p").unwrap();
    assert!(pool.is_complete());
    assert_eq!(pool.data(), data);
    assert_eq!(pool.read_at(990, 20), data[990..1010].to_vec());
    assert_eq!(pool.read_at(2_590, 100), data[2_590..].to_vec());
    assert!(pool.read_at(2_600, 10).is_empty());
    assert!(matches!(
        submit_with_pool(&mut sim, "p"),
        SubmitOutcome::Accepted(_)
    ));
    sim.flush();
    assert_eq!(sim.replay(), *sim.state());
    sim.state().check_invariants().unwrap();
}

#[test]
fn chunks_out_of_order_too_large_or_with_a_wrong_checksum_are_refused_unchanged() {
    // Goal: apply checks order, sizes and the checksum of the whole before it changes anything.
    let data = archive(300);
    let entries = pool_entries("p", 1, 0, &data, 100);
    let mut s = BrokerState::default();
    s.apply(1, entries[0].clone()).unwrap();
    let before = s.clone();
    assert!(matches!(
        s.apply(2, entries[2].clone()),
        Err(ApplyError::CodePool {
            reason: "chunk out of order",
            ..
        })
    ));
    assert_eq!(s, before);
    s.apply(2, entries[1].clone()).unwrap();
    s.apply(3, entries[2].clone()).unwrap();
    let mut bad = entries[3].clone();
    if let LogEntry::CodePoolChunk { data, .. } = &mut bad {
        data[0] ^= 1;
    }
    let before = s.clone();
    assert!(matches!(
        s.apply(4, bad),
        Err(ApplyError::CodePool {
            reason: "checksum mismatch",
            ..
        })
    ));
    assert_eq!(s, before);
    assert!(!s.codepool("p").unwrap().is_complete());
    let too_big = LogEntry::CodePoolChunk {
        id: "p".into(),
        index: 2,
        data: vec![0; 101],
    };
    assert!(s.apply(4, too_big).is_err());
    s.apply(4, entries[3].clone()).unwrap();
    assert!(s.codepool("p").unwrap().is_complete());
    assert!(
        s.apply(5, entries[3].clone()).is_err(),
        "a chunk after the last"
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_task_naming_an_unknown_pool_is_not_created() {
    // Goal: submitting with a pool that does not exist creates nothing and says why.
    let mut sim = Sim::new(LeaderConfig::default());
    match submit_with_pool(&mut sim, "nope") {
        SubmitOutcome::NotCreated(why) => assert!(why.contains("does not exist"), "{why}"),
        other => panic!("{other:?}"),
    }
    sim.flush();
    assert_eq!(sim.state().task_count(), 0);
}

#[test]
fn a_pool_in_use_is_not_deleted_and_can_be_recreated_after_deletion() {
    // Goal: delete refuses unknown pools and pools that live tasks name (submissions in flight
    // included); after the task ends it deletes; the id can then be created again.
    let mut sim = Sim::new(LeaderConfig::default());
    let now = sim.now;
    assert!(matches!(
        sim.leader.delete_code_pool(now, "p"),
        Err(CodePoolRefusal::Unknown(_))
    ));
    create(&mut sim, "p", 0, &archive(10), 100);
    let SubmitOutcome::Accepted(id) = submit_with_pool(&mut sim, "p") else {
        panic!("not accepted")
    };
    assert!(matches!(
        sim.leader.delete_code_pool(now, "p"),
        Err(CodePoolRefusal::InUse { tasks: 1, .. })
    ));
    sim.flush();
    assert_eq!(sim.state().code_pool_users("p"), 1);
    sim.connect("w", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    assert!(sim.leader.delete_code_pool(now, "p").is_err(), "running");
    sim.report("w", id, 1, Outcome::Finished, "ok");
    sim.flush();
    assert_eq!(sim.state().code_pool_users("p"), 0);
    let delete = sim.leader.delete_code_pool(now, "p").unwrap();
    assert!(matches!(
        sim.leader.delete_code_pool(now, "p"),
        Err(CodePoolRefusal::Busy(_))
    ));
    sim.push(vec![delete]);
    sim.flush();
    assert!(sim.state().codepool("p").is_none());
    create(&mut sim, "p", 0, &archive(20), 100);
    assert_eq!(sim.state().codepool("p").unwrap().size, 20);
    assert_eq!(sim.replay(), *sim.state());
}

#[test]
fn an_expired_pool_is_purged_by_the_tick_only_once_no_live_task_names_it() {
    // Goal: the original's rule (survey §2.11): a pool older than its TTL is deleted (logged)
    // when no waiting, delayed or running task names it; a pool without TTL stays; the timer
    // says when.
    let mut sim = Sim::new(LeaderConfig::default());
    create(&mut sim, "short", 5_000, &archive(10), 100);
    create(&mut sim, "forever", 0, &archive(10), 100);
    let SubmitOutcome::Accepted(id) = submit_with_pool(&mut sim, "short") else {
        panic!("not accepted")
    };
    sim.flush();
    // No timer for a pool a live task names (nothing else is timed here).
    assert_eq!(sim.leader.next_timer(), None);
    sim.advance(6_000);
    sim.tick();
    sim.flush();
    assert!(
        sim.state().codepool("short").is_some(),
        "a waiting task names it"
    );
    sim.connect("w", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    assert!(
        sim.state().codepool("short").is_some(),
        "a running task names it"
    );
    sim.report("w", id, 1, Outcome::Finished, "ok");
    sim.flush();
    assert!(sim.leader.next_timer().is_some_and(|t| t <= sim.now));
    sim.tick();
    let deletes: Vec<_> = sim
        .inflight
        .iter()
        .flat_map(|b| b.entries.iter())
        .filter(|e| matches!(e, LogEntry::DeleteCodePool { .. }))
        .cloned()
        .collect();
    assert_eq!(
        deletes,
        vec![LogEntry::DeleteCodePool {
            id: "short".into(),
            timestamp: sim.now
        }]
    );
    sim.flush();
    assert!(sim.state().codepool("short").is_none());
    assert!(sim.state().codepool("forever").is_some());
    sim.advance(1_000_000);
    sim.tick();
    sim.flush();
    assert!(sim.state().codepool("forever").is_some());
    assert_eq!(sim.replay(), *sim.state());
}

#[test]
fn a_creation_cut_short_is_swept_by_the_next_leader() {
    // Goal: a pool whose chunks stopped coming (the leader died while writing them) is not
    // usable, and the next leader's first tick deletes it, so its id can be used again.
    let data = archive(300);
    let mut state = BrokerState::default();
    for (i, e) in pool_entries("cut", 1, 0, &data, 100)
        .into_iter()
        .take(2)
        .enumerate()
    {
        state.apply(i as u64 + 1, e).unwrap();
    }
    let mut leader = Leader::new(state, LeaderConfig::default(), 50);
    assert!(leader.code_pool_usable("cut").is_err());
    assert_eq!(leader.next_timer(), Some(50));
    let entries = leader.tick(60);
    assert_eq!(
        entries,
        vec![LogEntry::DeleteCodePool {
            id: "cut".into(),
            timestamp: 60
        }]
    );
    leader.apply(3, entries[0].clone()).unwrap();
    assert!(leader.state().codepool("cut").is_none());
    assert!(leader.create_code_pool(70, "cut", 0, &data, 100).is_ok());
}

#[test]
fn a_pool_named_by_a_prepared_task_stays_until_its_transaction_ends() {
    // Goal: a task prepared in an open transaction counts as a user of its pool: the pool is
    // neither deleted nor purged while the transaction may still publish the task; the commit
    // makes the task live with its pool; after a rollback the pool can go; no reservation of
    // the submission is left behind.
    use majordodo_core::leader::Caller;
    let mut sim = Sim::new(LeaderConfig::default());
    let caller = Caller {
        name: "u".into(),
        admin: false,
    };
    create(&mut sim, "p", 0, &archive(10), 100);
    let prepare = |sim: &mut Sim, tx| {
        sim.submit(SubmitRequest {
            task_type: "t".into(),
            user_id: "u".into(),
            max_attempts: 1,
            codepool: Some("p".into()),
            transaction: Some(tx),
            ..SubmitRequest::default()
        })
    };
    let now = sim.now;
    let (tx, begin) = sim.leader.begin_transaction(now, &caller).unwrap();
    sim.push(vec![begin]);
    sim.flush();
    let SubmitOutcome::Accepted(id) = prepare(&mut sim, tx) else {
        panic!("not prepared")
    };
    sim.flush();
    assert!(!sim.leader.has_pending(), "a reservation is left behind");
    assert!(matches!(
        sim.leader.delete_code_pool(now, "p"),
        Err(CodePoolRefusal::InUse { tasks: 1, .. })
    ));
    let commit = sim.leader.commit_transaction(now, tx, &caller).unwrap();
    sim.push(vec![commit]);
    sim.flush();
    assert_eq!(sim.state().task(id).unwrap().codepool(), Some("p"));
    assert_eq!(sim.state().code_pool_users("p"), 1);

    let (tx, begin) = sim.leader.begin_transaction(now, &caller).unwrap();
    sim.push(vec![begin]);
    sim.flush();
    prepare(&mut sim, tx);
    sim.flush();
    let rollback = sim.leader.rollback_transaction(now, tx, &caller).unwrap();
    sim.push(vec![rollback]);
    sim.flush();
    assert_eq!(
        sim.state().code_pool_users("p"),
        1,
        "only the committed task"
    );
    sim.state().check_invariants().unwrap();
    assert_eq!(sim.replay(), *sim.state());
}
