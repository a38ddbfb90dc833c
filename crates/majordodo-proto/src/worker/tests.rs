//! Codec, message and proof tests: round-trips of every message kind, arbitrary bytes never
//! panic the decoder, frame limits, version and kind errors, and HMAC verification.

use bytes::{BufMut, BytesMut};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

fn arb_capacity() -> impl Strategy<Value = Capacity> {
    (
        any::<u32>(),
        btree_map("[a-z]{0,8}", any::<u32>(), 0..4),
        vec(any::<u32>(), 0..4),
        vec(any::<u32>(), 0..4),
        (any::<u32>(), btree_map("[a-z:]{0,8}", any::<u32>(), 0..3)),
        (arb_amounts(), ".{0,40}"),
    )
        .prop_map(
            |(
                max_threads,
                max_threads_by_task_type,
                groups,
                excluded_groups,
                (pct, limits),
                (amounts, enforcement),
            )| {
                Capacity {
                    max_threads,
                    max_threads_by_task_type,
                    groups,
                    excluded_groups,
                    max_thread_per_user_per_task_type_percent: pct,
                    resource_limits: limits,
                    amounts,
                    enforcement,
                }
            },
        )
}

/// Amounts or needs: the reserved cpu and memory keys, named amounts, any value.
fn arb_amounts() -> impl Strategy<Value = std::collections::BTreeMap<String, u64>> {
    btree_map(
        prop_oneof![
            Just(CPU_MILLIS.to_owned()),
            Just(MEMORY_MIB.to_owned()),
            "[a-z:-]{0,10}"
        ],
        any::<u64>(),
        0..4,
    )
}

fn arb_assignment() -> impl Strategy<Value = Assignment> {
    (
        (
            any::<u64>(),
            any::<u32>(),
            ".{0,12}",
            ".{0,12}",
            ".{0,40}",
            proptest::option::of(".{0,8}"),
            proptest::option::of(".{0,8}"),
            vec(".{0,8}", 0..3),
        ),
        arb_amounts(),
        0u32..4,
    )
        .prop_map(
            |(
                (task_id, attempt, task_type, user_id, data, codepool, mode, resources),
                needs,
                shape,
            )| {
                Assignment {
                    task_id,
                    attempt,
                    task_type,
                    user_id,
                    data,
                    codepool,
                    mode,
                    resources,
                    needs,
                    shape,
                }
            },
        )
}

fn arb_shape() -> impl Strategy<Value = TaskShape> {
    (1u32..1000, vec(".{0,8}", 0..3), arb_amounts()).prop_map(|(id, resources, needs)| TaskShape {
        id,
        resources,
        needs,
    })
}

fn arb_report() -> impl Strategy<Value = FinishReport> {
    (
        any::<u64>(),
        any::<u32>(),
        prop_oneof![Just(Outcome::Finished), Just(Outcome::Error)],
        ".{0,40}",
    )
        .prop_map(|(task_id, attempt, outcome, result)| FinishReport {
            task_id,
            attempt,
            outcome: outcome as i32,
            result,
            retry_after_ms: 0,
        })
}

fn arb_nonce() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), NONCE_LEN)
}

/// Every valid message kind, with arbitrary contents.
fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (".{0,16}", ".{0,16}", ".{0,16}", arb_nonce(), ".{0,16}").prop_map(
            |(worker_id, process_id, location, client_nonce, credential_id)| {
                Message::Hello(Hello {
                    worker_id,
                    process_id,
                    location,
                    client_nonce,
                    credential_id,
                })
            }
        ),
        (".{0,16}", arb_nonce()).prop_map(|(broker_id, broker_nonce)| {
            Message::Challenge(Challenge {
                broker_id,
                broker_nonce,
            })
        }),
        (
            vec(any::<u8>(), PROOF_LEN),
            arb_capacity(),
            vec((any::<u64>(), any::<u32>()), 0..5),
            any::<bool>()
        )
            .prop_map(|(proof, capacity, running, task_shapes)| Message::Connect(
                Connect {
                    proof,
                    capacity,
                    running: running
                        .into_iter()
                        .map(|(task_id, attempt)| RunningTask { task_id, attempt })
                        .collect(),
                    task_shapes,
                }
            )),
        (vec(any::<u8>(), PROOF_LEN), any::<u64>(), any::<u64>()).prop_map(
            |(broker_proof, keepalive_interval_ms, idle_timeout_ms)| Message::Welcome(Welcome {
                broker_proof,
                keepalive_interval_ms,
                idle_timeout_ms,
            })
        ),
        (".{0,30}", any::<bool>())
            .prop_map(|(reason, retryable)| Message::Reject(Reject { reason, retryable })),
        (vec(arb_assignment(), 0..4), vec(arb_shape(), 0..3)).prop_map(|(assignments, shapes)| {
            Message::Assign(Assign {
                assignments,
                shapes,
            })
        }),
        (any::<u64>(), vec(arb_report(), 0..4))
            .prop_map(|(seq, reports)| Message::Finished(Finished { seq, reports })),
        any::<u64>().prop_map(|seq| Message::FinishedAck(FinishedAck { seq })),
        (arb_capacity(), any::<u32>())
            .prop_map(|(capacity, running)| Message::Ping(Ping { capacity, running })),
        Just(Message::Pong(Pong {})),
        Just(Message::Shutdown(Shutdown {})),
        ".{0,30}".prop_map(|reason| Message::Kill(Kill { reason })),
        (any::<u64>(), ".{0,16}", any::<u64>(), any::<u32>()).prop_map(
            |(request_id, pool_id, offset, max_len)| {
                Message::CodePoolRequest(super::CodePoolRequest {
                    request_id,
                    pool_id,
                    offset,
                    max_len,
                })
            }
        ),
        (
            (any::<u64>(), ".{0,16}", any::<u64>(), any::<u64>()),
            vec(any::<u8>(), 32),
            vec(any::<u8>(), 0..300)
        )
            .prop_map(|((request_id, pool_id, offset, size), sha256, data)| {
                Message::CodePoolData(super::CodePoolData {
                    request_id,
                    pool_id,
                    offset,
                    size,
                    sha256,
                    data,
                    error: String::new(),
                })
            }),
    ]
}

fn encode(message: Message) -> BytesMut {
    let mut buf = BytesMut::new();
    WorkerCodec::default()
        .encode(message, &mut buf)
        .expect("message fits the default frame size");
    buf
}

fn frame_of(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf
}

proptest! {
    #[test]
    fn every_message_round_trips_through_the_codec(message in arb_message()) {
        // Goal: encode then decode gives back the same message, consuming the whole frame.
        let mut buf = encode(message.clone());
        let decoded = WorkerCodec::default().decode(&mut buf).expect("decodes");
        prop_assert_eq!(decoded, Some(message));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in vec(any::<u8>(), 0..512)) {
        // Goal: the decoder returns a value or an error for any input, whole or in pieces.
        let mut codec = WorkerCodec::new(256);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
        let _ = decode_body(&bytes);
    }

    #[test]
    fn arbitrary_bodies_in_a_valid_frame_never_panic(body in vec(any::<u8>(), 0..512)) {
        // Goal: a well-framed body of random bytes is decoded or refused with a typed error.
        let mut buf = frame_of(&body);
        let _ = WorkerCodec::default().decode(&mut buf);
    }

    #[test]
    fn chunks_fit_their_frames_and_keep_order(
        assignments in vec(arb_assignment(), 0..40),
        reports in vec(arb_report(), 0..40),
        seq in any::<u64>(),
        max in 64usize..600,
    ) {
        // Goal: every chunk of items that fit alone encodes within the limit, nothing is lost
        // or reordered, and no two neighbouring chunks could have been merged.
        let assignments: Vec<_> = assignments.into_iter().filter(|a| fits_in_frame(a, max)).collect();
        let chunks = chunk_for_frames(assignments.clone(), max);
        for pair in chunks.windows(2) {
            let merged: Vec<_> = pair[0].iter().chain(&pair[1]).cloned().collect();
            let merged_len = encoded_body_len(&Message::Assign(Assign { assignments: merged, shapes: Vec::new() }));
            prop_assert!(merged_len > max - FRAME_OVERHEAD);
        }
        for chunk in &chunks {
            prop_assert!(!chunk.is_empty());
            let len = encoded_body_len(&Message::Assign(Assign { assignments: chunk.clone(), shapes: Vec::new() }));
            prop_assert!(len <= max, "{} > {}", len, max);
        }
        prop_assert_eq!(chunks.concat(), assignments);

        let reports: Vec<_> = reports.into_iter().filter(|r| fits_in_frame(r, max)).collect();
        let chunks = chunk_for_frames(reports.clone(), max);
        for chunk in &chunks {
            let len = encoded_body_len(&Message::Finished(Finished { seq, reports: chunk.clone() }));
            prop_assert!(len <= max, "{} > {}", len, max);
        }
        prop_assert_eq!(chunks.concat(), reports);
    }

    #[test]
    fn frames_split_at_any_point_decode_the_same(message in arb_message(), split in any::<prop::sample::Index>()) {
        // Goal: a frame arriving in two reads decodes once both halves are buffered.
        let full = encode(message.clone());
        let at = split.index(full.len() + 1);
        let mut codec = WorkerCodec::default();
        let mut buf = BytesMut::from(&full[..at]);
        if at < full.len() {
            prop_assert_eq!(codec.decode(&mut buf).expect("partial frame is not an error"), None);
        }
        buf.extend_from_slice(&full[at..]);
        prop_assert_eq!(codec.decode(&mut buf).expect("decodes"), Some(message));
    }
}

#[test]
fn consecutive_frames_decode_in_order() {
    // Goal: several frames in one buffer come out one by one, in order.
    let mut buf = encode(Message::FinishedAck(FinishedAck { seq: 1 }));
    buf.extend_from_slice(&encode(Message::Pong(Pong {})));
    let mut codec = WorkerCodec::default();
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Message::FinishedAck(FinishedAck { seq: 1 }))
    );
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Message::Pong(Pong {}))
    );
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

#[test]
fn length_over_the_limit_is_rejected_before_the_body_arrives() {
    // Goal: only the 4-byte header of an oversized frame is needed to refuse it.
    let mut codec = WorkerCodec::new(1024);
    let mut buf = BytesMut::new();
    buf.put_u32(1025);
    match codec.decode(&mut buf) {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            assert_eq!((len, max), (1025, 1024));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[test]
fn frame_at_the_limit_is_accepted() {
    // Goal: the limit is inclusive: a body of exactly max bytes decodes.
    let message = Message::Kill(Kill {
        reason: "x".repeat(100),
    });
    let body_len = encoded_body_len(&message);
    let mut codec = WorkerCodec::new(body_len);
    let mut buf = BytesMut::new();
    codec.encode(message.clone(), &mut buf).unwrap();
    assert_eq!(buf.len(), 4 + body_len);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(message));
}

#[test]
fn encoding_a_message_over_the_limit_fails() {
    // Goal: the sender refuses to produce a frame the receiver would refuse.
    let mut codec = WorkerCodec::new(16);
    let mut buf = BytesMut::new();
    let err = codec
        .encode(
            Message::Kill(Kill {
                reason: "x".repeat(64),
            }),
            &mut buf,
        )
        .unwrap_err();
    assert!(matches!(err, ProtocolError::FrameTooLarge { max: 16, .. }));
    assert!(buf.is_empty());
}

#[test]
fn other_protocol_version_is_a_typed_error() {
    // Goal: a frame from another version is reported as such, even if its body is foreign;
    // a version 1 hello (before per-worker credentials) is refused naming both versions.
    let old = Envelope {
        version: 1,
        message: Some(Message::Pong(Pong {})),
    }
    .encode_to_vec();
    let err = decode_body(&old).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported protocol version 1 (this side speaks 2)"
    );
    let body = Envelope {
        version: 3,
        message: Some(Message::Pong(Pong {})),
    }
    .encode_to_vec();
    let err = decode_body(&body).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::UnsupportedVersion { version: 3 }
    ));

    // Version 3 with a field 16 that is not a Hello message in our layout.
    let mut foreign = Vec::new();
    prost::encoding::uint32::encode(1, &3, &mut foreign);
    prost::encoding::uint64::encode(16, &7, &mut foreign);
    let err = decode_body(&foreign).unwrap_err();
    assert!(
        matches!(err, ProtocolError::UnsupportedVersion { version: 3 }),
        "{err:?}"
    );
}

#[test]
fn unknown_message_kind_is_a_typed_error() {
    // Goal: a message tag this version does not know decodes to UnknownMessage.
    let mut body = Vec::new();
    prost::encoding::uint32::encode(1, &PROTOCOL_VERSION, &mut body);
    prost::encoding::string::encode(99, &"future".to_string(), &mut body);
    assert!(matches!(
        decode_body(&body),
        Err(ProtocolError::UnknownMessage)
    ));
}

#[test]
fn wrong_nonce_length_is_rejected() {
    // Goal: fixed-size fields are checked at decode time.
    let body = Envelope {
        version: PROTOCOL_VERSION,
        message: Some(Message::Hello(Hello {
            worker_id: "w".into(),
            process_id: "p".into(),
            location: String::new(),
            client_nonce: vec![0; 31],
            credential_id: String::new(),
        })),
    }
    .encode_to_vec();
    assert!(matches!(
        decode_body(&body),
        Err(ProtocolError::InvalidField {
            field: "hello.client_nonce",
            ..
        })
    ));
}

#[test]
fn unknown_outcome_is_rejected() {
    // Goal: a finish report must say finished or error.
    let body = Envelope {
        version: PROTOCOL_VERSION,
        message: Some(Message::Finished(Finished {
            seq: 1,
            reports: vec![FinishReport {
                task_id: 1,
                attempt: 1,
                outcome: 7,
                result: String::new(),
                retry_after_ms: 0,
            }],
        })),
    }
    .encode_to_vec();
    assert!(matches!(
        decode_body(&body),
        Err(ProtocolError::InvalidField { .. })
    ));
}

#[test]
fn worker_proof_verifies_only_with_the_same_secret_and_fields() {
    // Goal: the right secret passes; a wrong secret or any changed field fails.
    let (bn, cn) = (random_nonce(), random_nonce());
    let proof = worker_proof(b"secret", &bn, &cn, "w1", "p1");
    assert!(verify_worker_proof(b"secret", &bn, &cn, "w1", "p1", &proof));
    assert!(!verify_worker_proof(
        b"secreT", &bn, &cn, "w1", "p1", &proof
    ));
    let mut tampered = bn;
    tampered[0] ^= 1;
    assert!(!verify_worker_proof(
        b"secret", &tampered, &cn, "w1", "p1", &proof
    ));
    assert!(!verify_worker_proof(
        b"secret", &cn, &bn, "w1", "p1", &proof
    ));
    assert!(!verify_worker_proof(
        b"secret", &bn, &cn, "w2", "p1", &proof
    ));
    assert!(!verify_worker_proof(
        b"secret", &bn, &cn, "w1", "p2", &proof
    ));
    assert!(!verify_worker_proof(
        b"secret",
        &bn,
        &cn,
        "w1",
        "p1",
        &proof[..31]
    ));
}

#[test]
fn credential_proofs_verify_only_with_the_secret_and_the_same_fields() {
    // Goal: the worker's proof checks against the verifier alone; the verifier cannot make a
    // proof (its keys are not the secret); any changed field, a wrong secret or a cut proof
    // fails; the broker's proof checks with the secret and differs from the worker's.
    let secret = random_credential_secret();
    let verifier = credential_verifier(&secret);
    let (bn, cn) = (random_nonce(), random_nonce());
    let auth = CredentialAuth {
        broker_nonce: &bn,
        client_nonce: &cn,
        worker_id: "w1",
        process_id: "p1",
        credential_id: "c1",
    };
    let proof = credential_worker_proof(&secret, &auth);
    assert!(verify_credential_worker_proof(&verifier, &auth, &proof));
    assert!(!verify_credential_worker_proof(
        &verifier,
        &auth,
        &proof[..31]
    ));
    let mut wrong = secret;
    wrong[0] ^= 1;
    assert!(!verify_credential_worker_proof(
        &verifier,
        &auth,
        &credential_worker_proof(&wrong, &auth)
    ));
    // Someone holding only the verifier (the log, a snapshot) keyed with what it has fails.
    for key in [verifier.stored_key, verifier.server_key] {
        assert!(!verify_credential_worker_proof(
            &verifier,
            &auth,
            &credential_worker_proof(&key, &auth)
        ));
    }
    for changed in [
        CredentialAuth {
            worker_id: "w2",
            ..auth
        },
        CredentialAuth {
            process_id: "p2",
            ..auth
        },
        CredentialAuth {
            credential_id: "c2",
            ..auth
        },
        CredentialAuth {
            broker_nonce: &cn,
            client_nonce: &bn,
            ..auth
        },
    ] {
        assert!(!verify_credential_worker_proof(&verifier, &changed, &proof));
        assert!(!verify_credential_broker_proof(
            &secret,
            &changed,
            &credential_broker_proof(&verifier, &auth)
        ));
    }
    let broker = credential_broker_proof(&verifier, &auth);
    assert!(verify_credential_broker_proof(&secret, &auth, &broker));
    assert!(!verify_credential_broker_proof(&wrong, &auth, &broker));
    assert_ne!(broker, proof);
}

#[test]
fn broker_proof_verifies_only_with_the_same_secret_and_fields() {
    // Goal: the broker's proof checks the same way, and is not the worker's proof.
    let (bn, cn) = (random_nonce(), random_nonce());
    let proof = broker_proof(b"secret", &cn, &bn, "w1");
    assert!(verify_broker_proof(b"secret", &cn, &bn, "w1", &proof));
    assert!(!verify_broker_proof(b"other", &cn, &bn, "w1", &proof));
    let mut tampered = cn;
    tampered[31] ^= 0x80;
    assert!(!verify_broker_proof(
        b"secret", &tampered, &bn, "w1", &proof
    ));
    assert!(!verify_broker_proof(b"secret", &cn, &bn, "w2", &proof));
    assert_ne!(proof, worker_proof(b"secret", &bn, &cn, "w1", ""));
}

#[test]
fn field_boundaries_are_part_of_the_proof() {
    // Goal: moving bytes from one field to the next changes the proof (length prefixes).
    let (bn, cn) = (random_nonce(), random_nonce());
    assert_ne!(
        worker_proof(b"s", &bn, &cn, "ab", "c"),
        worker_proof(b"s", &bn, &cn, "a", "bc")
    );
}

#[test]
fn nonces_differ_between_calls() {
    // Goal: nonces are fresh randomness, not a constant.
    assert_ne!(random_nonce(), random_nonce());
}

#[test]
fn type_limit_falls_back_to_any() {
    // Goal: a type's own entry wins; other types count against `any`; without `any` they are refused.
    let mut capacity = Capacity {
        max_threads: 10,
        ..Capacity::default()
    };
    capacity.max_threads_by_task_type.insert("a".into(), 2);
    assert_eq!(capacity.type_limit("a"), Some(("a", 2)));
    assert_eq!(capacity.type_limit("b"), None);
    capacity
        .max_threads_by_task_type
        .insert(ANY_TASK_TYPE.into(), 5);
    assert_eq!(capacity.type_limit("b"), Some((ANY_TASK_TYPE, 5)));
}

#[test]
fn type_limit_follows_the_broker_rule_for_empty_and_zero_entries() {
    // Goal: the worker's check agrees with the broker's scheduler: no positive entry means any
    // type up to max_threads, and a 0 entry does not forbid its type.
    let mut capacity = Capacity {
        max_threads: 7,
        ..Capacity::default()
    };
    assert_eq!(capacity.type_limit("x"), Some((ANY_TASK_TYPE, 7)));
    capacity.max_threads_by_task_type.insert("x".into(), 0);
    assert_eq!(capacity.type_limit("x"), Some((ANY_TASK_TYPE, 7)));
    capacity.max_threads_by_task_type.insert("y".into(), 3);
    assert_eq!(
        capacity.type_limit("x"),
        None,
        "y is limited and x has no any to fall back on"
    );
    capacity
        .max_threads_by_task_type
        .insert(ANY_TASK_TYPE.into(), 2);
    assert_eq!(capacity.type_limit("x"), Some((ANY_TASK_TYPE, 2)));
}

/// An `Assignment` as a peer that predates `needs` knows it.
#[derive(Clone, PartialEq, prost::Message)]
struct AssignmentBeforeNeeds {
    #[prost(uint64, tag = "1")]
    task_id: u64,
    #[prost(string, tag = "3")]
    task_type: String,
    #[prost(string, repeated, tag = "8")]
    resources: Vec<String>,
}

/// A `Capacity` as a peer that predates `amounts` and `enforcement` knows it.
#[derive(Clone, PartialEq, prost::Message)]
struct CapacityBeforeAmounts {
    #[prost(uint32, tag = "1")]
    max_threads: u32,
    #[prost(btree_map = "string, uint32", tag = "51")]
    resource_limits: std::collections::BTreeMap<String, u32>,
}

#[test]
fn amounts_and_needs_are_compatible_both_ways() {
    // Goal: an old peer's capacity and assignment decode with nothing declared, and a new
    // peer's amounts, enforcement and needs are skipped by an old decoder without error.
    let old = CapacityBeforeAmounts {
        max_threads: 3,
        resource_limits: [("db".to_owned(), 2)].into(),
    }
    .encode_to_vec();
    let capacity = Capacity::decode(&old[..]).unwrap();
    assert_eq!(capacity.max_threads, 3);
    assert!(capacity.amounts.is_empty() && capacity.enforcement.is_empty());

    let new = Capacity {
        max_threads: 3,
        amounts: [(CPU_MILLIS.to_owned(), 4000), ("db:orders".to_owned(), 10)].into(),
        enforcement: "rlimits".into(),
        ..Capacity::default()
    };
    let seen_by_old = CapacityBeforeAmounts::decode(&new.encode_to_vec()[..]).unwrap();
    assert_eq!(seen_by_old.max_threads, 3);

    let old = AssignmentBeforeNeeds {
        task_id: 9,
        task_type: "t".into(),
        resources: vec!["r".into()],
    }
    .encode_to_vec();
    let assignment = Assignment::decode(&old[..]).unwrap();
    assert_eq!((assignment.task_id, assignment.needs.len()), (9, 0));

    let new = Assignment {
        task_id: 9,
        task_type: "t".into(),
        needs: [(MEMORY_MIB.to_owned(), 64)].into(),
        ..Assignment::default()
    };
    let seen_by_old = AssignmentBeforeNeeds::decode(&new.encode_to_vec()[..]).unwrap();
    assert_eq!(seen_by_old.task_id, 9);
    assert_eq!(
        Assignment::decode(&new.encode_to_vec()[..]).unwrap().needs,
        new.needs
    );
}

/// A `Connect` as a worker that predates task shapes sends it.
#[derive(Clone, PartialEq, prost::Message)]
struct ConnectBeforeShapes {
    #[prost(bytes = "vec", tag = "1")]
    proof: Vec<u8>,
    #[prost(message, required, tag = "2")]
    capacity: Capacity,
}

/// An `Assign` as a worker that predates task shapes reads it.
#[derive(Clone, PartialEq, prost::Message)]
struct AssignBeforeShapes {
    #[prost(message, repeated, tag = "1")]
    assignments: Vec<AssignmentBeforeNeeds>,
}

#[test]
fn task_shapes_are_compatible_both_ways_and_id_0_is_refused() {
    // Goal: an old worker's Connect decodes as not knowing shapes (so a new broker sends every
    // assignment whole); a frame with shapes still decodes for an old reader (it ignores them);
    // a shape with id 0 ("none") is an invalid field.
    let old = ConnectBeforeShapes {
        proof: vec![0; PROOF_LEN],
        capacity: Capacity::default(),
    }
    .encode_to_vec();
    assert!(!Connect::decode(&old[..]).unwrap().task_shapes);

    let assign = Assign {
        assignments: vec![Assignment {
            task_id: 5,
            task_type: "t".into(),
            shape: 1,
            ..Assignment::default()
        }],
        shapes: vec![TaskShape {
            id: 1,
            resources: vec!["db".into()],
            needs: [(CPU_MILLIS.to_owned(), 250)].into(),
        }],
    };
    let bytes = assign.encode_to_vec();
    let seen_by_old = AssignBeforeShapes::decode(&bytes[..]).unwrap();
    assert_eq!(seen_by_old.assignments[0].task_id, 5);
    assert_eq!(Assign::decode(&bytes[..]).unwrap(), assign);
    assert!(Message::Assign(assign.clone()).validate().is_ok());

    let mut zero = assign;
    zero.shapes[0].id = 0;
    let err = Message::Assign(zero).validate().unwrap_err();
    assert!(err.to_string().contains("assign.shapes.id"), "{err}");
}
