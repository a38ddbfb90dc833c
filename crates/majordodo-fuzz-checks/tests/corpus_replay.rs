//! The fuzz targets' checks, run by `cargo test` on stable so that they never rot: every input
//! checked in under `fuzz/seeds/<target>/` (inputs made by our encoders, minimized inputs the
//! fuzzers found interesting, and every crash found, once fixed), and the inputs our encoders make
//! today, go through the same function the fuzz target calls.
//!
//! `cargo test -p majordodo-fuzz-checks --test corpus_replay -- --ignored write_encoder_seeds`
//! rewrites the encoder-made seeds (`enc-*` files) after a format change.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bookkeeper_client::digest::Digester;
use bookkeeper_client::proto::{BkPacketHeader, ReadResponse, Response, op};
use bookkeeper_client::{DigestType, LedgerMetadata, LedgerState, Segment};
use bytes::{Bytes, BytesMut};
use majordodo_core::{BrokerState, LogEntry, NewTask, TaskId, TaskStatus, TransactionId};
use majordodo_fuzz_checks::TARGETS;
use majordodo_log::vfs::{Fs, SimFs};
use majordodo_log::{CommitLog, Compression, FileLog, FileLogConfig, Lsn};
use majordodo_proto::cluster::{BrokerInfo, LedgersInfo, encode_ledger_entry};
use majordodo_proto::http::{ActionRequest, TaskSubmission};
use majordodo_proto::record::encode_entry;
use majordodo_proto::snapshot::encode_snapshot;
use majordodo_proto::worker::{
    Assign, Assignment, Capacity, Challenge, CodePoolData, CodePoolRequest, Connect, FinishReport,
    Finished, Hello, Message, Outcome, Ping, RunningTask, TaskShape, Welcome, WorkerCodec,
    broker_proof, worker_proof,
};
use majordodo_testkit::archives;
use prost::Message as _;
use tokio_util::codec::Encoder;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds")
}

fn check_of(target: &str) -> fn(&[u8]) {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .unwrap_or_else(|| panic!("no target {target}"))
}

/// Runs `check` on `data`; the panic message (printed by the hook) names the property.
fn passes(check: fn(&[u8]), data: &[u8]) -> bool {
    catch_unwind(AssertUnwindSafe(|| check(data))).is_ok()
}

// Goal: every checked-in input of every fuzz target passes that target's checks, so a decoder
// change that panics on (or stops round-tripping) a known input fails CI. Every target has seeds.
#[test]
fn fuzz_seed_corpus_replays_through_every_target() {
    let mut failures = Vec::new();
    let mut total = 0;
    for (target, check) in TARGETS {
        let dir = seeds_dir().join(target);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("seeds of {target} in {}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 3,
            "{target} has {} seeds in {}",
            files.len(),
            dir.display()
        );
        for file in files {
            let data = fs::read(&file).expect("read seed");
            total += 1;
            if !passes(check, &data) {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} seeds fail their target's checks: {failures:#?}",
        failures.len()
    );
}

// Goal: what our encoders produce today passes the checks (decodes and round-trips), also when it
// differs from the checked-in seeds because a format moved on.
#[test]
fn encoder_made_inputs_pass_every_target() {
    let mut failures = Vec::new();
    for (target, name, data) in encoder_seeds() {
        if !passes(check_of(target), &data) {
            failures.push(format!("{target}/{name}"));
        }
    }
    assert!(failures.is_empty(), "failing inputs: {failures:#?}");
}

// Not a check: rewrites the encoder-made seeds of fuzz/seeds (run by hand after a format change).
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_encoder_seeds() {
    for (target, name, data) in encoder_seeds() {
        let dir = seeds_dir().join(target);
        fs::create_dir_all(&dir).expect("seed directory");
        fs::write(dir.join(format!("enc-{name}")), data).expect("write seed");
    }
}

/// Inputs made by our own encoders, per target: (target, name, bytes).
fn encoder_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, data) in http_seeds() {
        out.push(("http_request", name, data));
    }
    for (name, data) in worker_seeds() {
        out.push(("worker_protocol", name, data));
    }
    for (i, entry) in sample_entries().iter().enumerate() {
        out.push((
            "log_record",
            format!("{i:02}-{}", kind(entry)),
            encode_entry(entry),
        ));
    }
    for (name, data) in snapshot_seeds() {
        out.push(("snapshot", name, data));
    }
    for (name, data) in archive_seeds() {
        out.push(("archive", name, data));
    }
    for (name, data) in segment_seeds() {
        out.push(("log_segment", name, data));
    }
    for (name, data) in cluster_seeds() {
        out.push(("cluster", name, data));
    }
    out
}

fn kind(entry: &LogEntry) -> String {
    format!("{entry:?}")
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("entry")
        .to_lowercase()
}

fn http_seeds() -> Vec<(String, Vec<u8>)> {
    let task = TaskSubmission::new("report", "alice", "payload é")
        .needing("cpu", 500)
        .with_idempotency_key("key-1");
    let mut in_transaction = TaskSubmission::new("t", "bob", "").in_transaction(7);
    in_transaction.max_attempts = 3;
    in_transaction.deadline = 20_000;
    let requests = [
        ("submit-task", ActionRequest::SubmitTask(task.clone())),
        (
            "submit-tasks",
            ActionRequest::SubmitTasks(vec![task, in_transaction]),
        ),
        ("begin-transaction", ActionRequest::BeginTransaction),
        ("commit-transaction", ActionRequest::CommitTransaction(7)),
        ("cancel-task", ActionRequest::CancelTask(42)),
        (
            "delete-codepool",
            ActionRequest::DeleteCodePool("pool".into()),
        ),
        (
            "add-worker-credential",
            ActionRequest::AddWorkerCredential {
                worker_id: "w2".into(),
                comment: Some("rack 4".into()),
            },
        ),
        (
            "revoke-worker-credential",
            ActionRequest::RevokeWorkerCredential {
                credential_id: "wc-0123456789abcdef".into(),
            },
        ),
    ];
    let mut out: Vec<(String, Vec<u8>)> = requests
        .into_iter()
        .map(|(name, request)| {
            let body = serde_json::to_vec(&request.to_json()).expect("serialize");
            (name.to_owned(), body)
        })
        .collect();
    for (name, query) in [
        (
            "view-tasks",
            "view=tasks&userId=alice&status=waiting&max=10",
        ),
        ("view-task", "view=task&taskId=42"),
        ("view-status", "view=status"),
        (
            "view-worker-credentials",
            "view=workerCredentials&workerId=w2",
        ),
    ] {
        out.push((name.to_owned(), query.as_bytes().to_vec()));
    }
    out
}

fn frames(messages: Vec<Message>) -> Vec<u8> {
    let mut codec = WorkerCodec::default();
    let mut out = BytesMut::new();
    for message in messages {
        codec.encode(message, &mut out).expect("encode frame");
    }
    out.to_vec()
}

fn capacity() -> Capacity {
    Capacity {
        max_threads: 4,
        max_threads_by_task_type: BTreeMap::from([("any".into(), 2), ("report".into(), 1)]),
        groups: vec![1, 2],
        amounts: BTreeMap::from([("cpu".into(), 4000), ("memory".into(), 1024)]),
        ..Capacity::default()
    }
}

fn worker_seeds() -> Vec<(String, Vec<u8>)> {
    let client_nonce = [0xc1; 32];
    let broker_nonce = [0xb7; 32];
    let secret = b"fuzz shared secret";
    let hello = Hello {
        worker_id: "fuzz-worker".into(),
        process_id: "pid-1".into(),
        location: "host:1".into(),
        client_nonce: client_nonce.to_vec(),
        credential_id: String::new(),
    };
    let connect = Connect {
        proof: worker_proof(secret, &broker_nonce, &client_nonce, "fuzz-worker", "pid-1").to_vec(),
        capacity: capacity(),
        running: vec![RunningTask {
            task_id: 3,
            attempt: 1,
        }],
        task_shapes: true,
    };
    let handshake = vec![Message::Hello(hello.clone()), Message::Connect(connect)];
    let welcome = vec![
        Message::Challenge(Challenge {
            broker_id: "broker".into(),
            broker_nonce: broker_nonce.to_vec(),
        }),
        Message::Welcome(Welcome {
            broker_proof: broker_proof(secret, &client_nonce, &broker_nonce, "fuzz-worker")
                .to_vec(),
            keepalive_interval_ms: 1000,
            idle_timeout_ms: 10_000,
        }),
    ];
    let session = vec![
        Message::Assign(Assign {
            assignments: vec![Assignment {
                task_id: 5,
                attempt: 1,
                task_type: "report".into(),
                user_id: "alice".into(),
                data: "payload".into(),
                codepool: Some("pool".into()),
                resources: vec!["db".into()],
                needs: BTreeMap::from([("cpu".into(), 500)]),
                ..Assignment::default()
            }],
            shapes: Vec::new(),
        }),
        Message::Assign(Assign {
            assignments: vec![Assignment {
                task_id: 6,
                attempt: 1,
                task_type: "report".into(),
                user_id: "bob".into(),
                shape: 1,
                ..Assignment::default()
            }],
            shapes: vec![TaskShape {
                id: 1,
                resources: vec!["db".into()],
                needs: BTreeMap::from([("cpu".into(), 500), ("memory".into(), 64)]),
            }],
        }),
        Message::Finished(Finished {
            seq: 9,
            reports: vec![FinishReport {
                task_id: 5,
                attempt: 1,
                outcome: Outcome::Finished as i32,
                result: "ok".into(),
                ..FinishReport::default()
            }],
        }),
        Message::Ping(Ping {
            capacity: capacity(),
            running: 1,
        }),
        Message::CodePoolRequest(CodePoolRequest {
            request_id: 1,
            pool_id: "pool".into(),
            offset: 0,
            max_len: 65_536,
        }),
        Message::CodePoolData(CodePoolData {
            request_id: 1,
            pool_id: "pool".into(),
            offset: 0,
            size: 4,
            data: b"data".to_vec(),
            sha256: vec![0x5a; 32],
            ..CodePoolData::default()
        }),
    ];
    // Two Hellos naming other fields, for the proof-binding check.
    let other_hello = Hello {
        worker_id: "fuzz-worke".into(),
        process_id: "rpid-1".into(),
        ..hello.clone()
    };
    // The same with a per-worker credential.
    let credential_secret = b"fuzz credential secret";
    let credential_hello = Hello {
        credential_id: "c-fuzz".into(),
        ..hello.clone()
    };
    let auth = majordodo_proto::worker::CredentialAuth {
        broker_nonce: &broker_nonce,
        client_nonce: &client_nonce,
        worker_id: "fuzz-worker",
        process_id: "pid-1",
        credential_id: "c-fuzz",
    };
    let credential_connect = Connect {
        proof: majordodo_proto::worker::credential_worker_proof(credential_secret, &auth).to_vec(),
        capacity: capacity(),
        running: vec![],
        task_shapes: false,
    };
    let other_credential = Hello {
        credential_id: "c-fuzz2".into(),
        ..credential_hello.clone()
    };
    vec![
        (
            "credential-handshake".into(),
            frames(vec![
                Message::Hello(credential_hello.clone()),
                Message::Connect(credential_connect),
            ]),
        ),
        (
            "credential-two-hellos".into(),
            frames(vec![
                Message::Hello(credential_hello),
                Message::Hello(other_credential),
            ]),
        ),
        ("handshake".into(), frames(handshake)),
        ("welcome".into(), frames(welcome)),
        ("session".into(), frames(session)),
        (
            "two-hellos".into(),
            frames(vec![Message::Hello(hello), Message::Hello(other_hello)]),
        ),
    ]
}

fn new_task(id: u64) -> NewTask {
    NewTask {
        id: TaskId(id),
        task_type: format!("t{}", id % 3),
        user_id: format!("user{}", id % 2),
        data: "é data".repeat(id as usize % 4),
        max_attempts: 2,
        attempts: 0,
        requested_start_time: 0,
        deadline: if id.is_multiple_of(2) { 20_000 } else { 0 },
        slot: id.is_multiple_of(3).then(|| format!("slot{id}")),
        codepool: None,
        mode: None,
        created: 100 + id as i64,
        idempotency_key: (id % 2 == 1).then(|| format!("key-{id}")),
        priority: 1,
        needs: vec![("cpu".into(), 100)],
    }
}

/// Entries of most kinds, applicable in this order to an empty state.
fn sample_entries() -> Vec<LogEntry> {
    vec![
        LogEntry::AddTask(new_task(1)),
        LogEntry::AddTask(new_task(2)),
        LogEntry::AddTask(new_task(3)),
        LogEntry::WorkerConnected {
            worker_id: "w1".into(),
            location: "host".into(),
            process_id: "p".into(),
            timestamp: 5,
        },
        LogEntry::AssignTask {
            task_id: TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
            resources: vec!["db".into()],
            timestamp: 6,
        },
        LogEntry::TaskStatusChange {
            task_id: TaskId(1),
            status: TaskStatus::Finished,
            attempt: 1,
            worker_id: Some("w1".into()),
            result: Some("ok".into()),
            timestamp: 7,
        },
        LogEntry::BeginTransaction {
            transaction_id: TransactionId(4),
            timestamp: 8,
            owner: Some("alice".into()),
        },
        LogEntry::PrepareAddTask {
            transaction_id: TransactionId(4),
            task: new_task(5),
        },
        LogEntry::AssignTask {
            task_id: TaskId(2),
            worker_id: "w1".into(),
            attempt: 1,
            resources: vec![],
            timestamp: 9,
        },
        LogEntry::DeferTask {
            task_id: TaskId(2),
            attempt: 1,
            worker_id: "w1".into(),
            until: 50_000,
            timestamp: 10,
        },
        LogEntry::SetTaskPriority {
            task_id: TaskId(3),
            priority: 4,
            timestamp: 11,
        },
        LogEntry::CreateCodePool {
            id: "pool".into(),
            timestamp: 12,
            ttl: 0,
            data: archives::zip(&[archives::file("run.sh", b"echo hi")]),
        },
        LogEntry::Noop { timestamp: 13 },
        LogEntry::WorkerDisconnected {
            worker_id: "w1".into(),
            timestamp: 14,
        },
        LogEntry::AddWorkerCredential {
            credential_id: "c-1".into(),
            worker_id: "w1".into(),
            stored_key: [0x11; 32],
            server_key: [0x22; 32],
            comment: Some("rack 4".into()),
            timestamp: 15,
        },
        LogEntry::AddWorkerCredential {
            credential_id: "c-2".into(),
            worker_id: "w1".into(),
            stored_key: [0x33; 32],
            server_key: [0x44; 32],
            comment: None,
            timestamp: 16,
        },
        LogEntry::RevokeWorkerCredential {
            credential_id: "c-1".into(),
            timestamp: 17,
        },
    ]
}

fn sample_state() -> BrokerState {
    let mut state = BrokerState::default();
    for (lsn, entry) in sample_entries().into_iter().enumerate() {
        state
            .apply(lsn as u64 + 1, entry)
            .unwrap_or_else(|e| panic!("sample entry {lsn}: {e:?}"));
    }
    state
}

fn snapshot_seeds() -> Vec<(String, Vec<u8>)> {
    let content = encode_snapshot(&sample_state().snapshot_source());
    let empty = encode_snapshot(&BrokerState::default().snapshot_source());
    let lsn = Lsn(sample_entries().len() as u64);
    vec![
        ("content".into(), content.clone()),
        ("content-empty".into(), empty),
        (
            "file-gzip".into(),
            majordodo_log::encode_snapshot(lsn, &content, Compression::Gzip),
        ),
        (
            "file-plain".into(),
            majordodo_log::encode_snapshot(lsn, &content, Compression::None),
        ),
    ]
}

fn archive_seeds() -> Vec<(String, Vec<u8>)> {
    use archives::{Item, executable, file};
    let items = [
        Item::Dir("bin/".into()),
        executable("bin/run", b"#!/bin/sh\necho hi\n"),
        file("lib/data.txt", &[b'x'; 300]),
    ];
    vec![
        ("zip".into(), archives::zip(&items)),
        ("tar-gz".into(), archives::tar_gz(&items)),
        (
            "zip-symlink".into(),
            archives::zip(&[Item::Symlink("link".into(), "../etc".into())]),
        ),
        (
            "tar-gz-hardlink".into(),
            archives::tar_gz(&[file("a", b"a"), Item::HardLink("b".into(), "a".into())]),
        ),
    ]
}

/// Segment files written by a real file log (on the simulated file system).
fn segment_seeds() -> Vec<(String, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fs = SimFs::new(1);
    let dir = Path::new("/log");
    let config = FileLogConfig {
        segment_size: 4096,
        ..FileLogConfig::default()
    };
    let (log, _) = FileLog::open_with(Arc::new(fs.clone()), dir, config).expect("open");
    runtime.block_on(async {
        for batch in 0..6u8 {
            let records = (0..3u8)
                .map(|i| Bytes::from(vec![batch * 3 + i; 40 + usize::from(i) * 300]))
                .collect();
            log.append(records).await.expect("append");
        }
        log.close().await.expect("close");
    });
    let mut names: Vec<_> = fs
        .read_dir(dir)
        .expect("list")
        .into_iter()
        .filter(|n| n.to_string_lossy().ends_with(".log"))
        .collect();
    names.sort();
    assert!(names.len() >= 2, "the log rolled segments: {names:?}");
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let file = fs.open_read(&dir.join(&name)).expect("open segment");
            let mut data = vec![0; file.size().expect("size") as usize];
            file.read_exact_at(&mut data, 0).expect("read segment");
            (format!("segment-{i}"), data)
        })
        .collect()
}

fn cluster_seeds() -> Vec<(String, Vec<u8>)> {
    let records = [Bytes::from_static(b"first"), Bytes::from(vec![7u8; 100])];
    let mut ledgers = LedgersInfo::empty();
    ledgers.push(11, 1_000, 1);
    ledgers.push(12, 2_000, 40);
    let metadata = LedgerMetadata {
        ensemble_size: 3,
        write_quorum: 2,
        ack_quorum: 2,
        state: LedgerState::Closed,
        last_entry_id: 9,
        length: 900,
        segments: vec![
            Segment {
                first_entry_id: 0,
                bookies: vec!["b1:3181".into(), "b2:3181".into(), "b3:3181".into()],
            },
            Segment {
                first_entry_id: 5,
                bookies: vec!["b1:3181".into(), "b4:3181".into(), "b3:3181".into()],
            },
        ],
        digest_type: Some(DigestType::Crc32c),
        password: Some(b"pw".to_vec()),
        ctime: Some(1_000),
        custom_metadata: BTreeMap::from([("application".into(), b"majordodo".to_vec())]),
        creator_token: Some(42),
    };
    let entry = Digester::new(DigestType::Crc32c, b"fuzz").package_entry(11, 3, 2, 300, b"payload");
    let response = Response {
        header: BkPacketHeader {
            version: 3,
            operation: op::READ_ENTRY,
            txn_id: 5,
            priority: None,
        },
        status: 0,
        read_response: Some(ReadResponse {
            status: 0,
            ledger_id: 11,
            entry_id: 3,
            body: Some(entry),
            ..ReadResponse::default()
        }),
        ..Response::default()
    };
    let body = response.encode_to_vec();
    let mut stream = (body.len() as u32).to_be_bytes().to_vec();
    stream.extend_from_slice(&body);
    vec![
        ("ledger-entry".into(), encode_ledger_entry(7, &records)),
        (
            "broker-info".into(),
            BrokerInfo::new("127.0.0.1", 7000, "http://127.0.0.1:7364/majordodo", "b1").to_json(),
        ),
        ("ledgers-info".into(), ledgers.to_json()),
        ("ledger-metadata".into(), metadata.serialize()),
        ("bookie-read-response".into(), stream),
    ]
}
