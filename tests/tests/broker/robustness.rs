//! Protocol robustness: random bytes and mutated valid requests sent to a
//! live broker. Each connection must be answered or closed (never hang),
//! and the broker must keep running and serving.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use unlost_tests::{BrokerProcess, KafkaConn};

fn name(s: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(s))
}

/// A request's header and body (without the size: `send_frame` adds it).
fn frame<R: Encodable>(key: ApiKey, version: i16, req: &R) -> Vec<u8> {
    unlost_wire::request(key, version, 7, "fuzz", req).unwrap()[4..].to_vec()
}

/// Valid requests of every API the broker serves, at old and new versions.
fn seeds() -> Vec<Vec<u8>> {
    let batch = Bytes::from(unlost_broker::storage::batch::build(
        0,
        &[b"fuzz-value", b"v2"],
        1,
    ));
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name("fuzz"))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch)),
            ])]);
    let fetch = FetchRequest::default()
        .with_max_wait_ms(50)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name("fuzz"))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_partition_max_bytes(1 << 20)])]);
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(name("fuzz")))]))
        .with_allow_auto_topic_creation(true);
    let list = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(name("fuzz"))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1),
            ])]);
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("fg")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(name("fuzz"))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1),
                ]),
        ]);
    let offset_fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("fg")))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(name("fuzz"))
                .with_partition_indexes(vec![0]),
        ]));
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(1000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(name("fuzz-created"))
            .with_num_partitions(2)
            .with_replication_factor(1)]);
    let coordinator = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("fg"));
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("fg")))
        .with_session_timeout_ms(6000)
        .with_rebalance_timeout_ms(6000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(StrBytes::from_static_str("range"))
        .with_metadata(Bytes::from_static(b"meta"))]);
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("fg")))
        .with_generation_id(1)
        .with_member_id(StrBytes::from_static_str("m"));
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("fg")))
        .with_generation_id(1)
        .with_member_id(StrBytes::from_static_str("m"));
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("fg")))
        .with_member_id(StrBytes::from_static_str("m"));
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    vec![
        frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
        frame(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default()),
        frame(ApiKey::Metadata, 1, &metadata),
        frame(ApiKey::Metadata, 9, &metadata),
        frame(ApiKey::Produce, 3, &produce),
        frame(ApiKey::Produce, 9, &produce),
        frame(ApiKey::Fetch, 4, &fetch),
        frame(ApiKey::Fetch, 12, &fetch),
        frame(ApiKey::ListOffsets, 1, &list),
        frame(ApiKey::ListOffsets, 7, &list),
        frame(ApiKey::OffsetCommit, 2, &commit),
        frame(ApiKey::OffsetCommit, 8, &commit),
        frame(ApiKey::OffsetFetch, 1, &offset_fetch),
        frame(ApiKey::OffsetFetch, 7, &offset_fetch),
        frame(ApiKey::CreateTopics, 2, &create),
        frame(ApiKey::CreateTopics, 6, &create),
        frame(ApiKey::FindCoordinator, 0, &coordinator),
        frame(ApiKey::FindCoordinator, 3, &coordinator),
        frame(ApiKey::JoinGroup, 0, &join),
        frame(ApiKey::JoinGroup, 5, &join),
        frame(ApiKey::SyncGroup, 3, &sync),
        frame(ApiKey::Heartbeat, 3, &heartbeat),
        frame(ApiKey::LeaveGroup, 0, &leave),
        frame(ApiKey::InitProducerId, 4, &init),
    ]
}

#[derive(Debug, Clone)]
enum Input {
    /// Random bytes, written as they are (the first four are the length).
    Random(Vec<u8>),
    /// A valid request with bytes flipped, cut or extended, sent with a
    /// correct length prefix (or a wrong one).
    Mutated {
        seed: usize,
        flips: Vec<(f64, u8)>,
        cut: Option<f64>,
        tail: Vec<u8>,
        lie_about_length: Option<i32>,
    },
}

fn input(seeds: usize) -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Input::Random),
        5 => (
            0..seeds,
            prop::collection::vec((0.0..1.0f64, 1..=255u8), 0..6),
            prop::option::weighted(0.2, 0.0..1.0f64),
            prop::collection::vec(any::<u8>(), 0..8),
            prop::option::weighted(0.1, any::<i32>()),
        )
            .prop_map(|(seed, flips, cut, tail, lie_about_length)| Input::Mutated { seed, flips, cut, tail, lie_about_length }),
    ]
}

fn bytes_of(input: &Input, seeds: &[Vec<u8>]) -> Vec<u8> {
    match input {
        Input::Random(b) => b.clone(),
        Input::Mutated {
            seed,
            flips,
            cut,
            tail,
            lie_about_length,
        } => {
            let mut body = seeds[*seed].clone();
            for (at, x) in flips {
                let i = ((body.len() as f64) * at) as usize;
                if i < body.len() {
                    body[i] ^= x;
                }
            }
            if let Some(c) = cut {
                body.truncate((body.len() as f64 * c) as usize);
            }
            body.extend_from_slice(tail);
            let len = lie_about_length.unwrap_or(body.len() as i32);
            [&len.to_be_bytes()[..], &body].concat()
        }
    }
}

#[test]
fn random_and_mutated_frames_never_crash_or_hang_the_broker() {
    let broker = RefCell::new(BrokerProcess::start(&["--flush", "ms:50"]));
    let addr = broker.borrow().addr;
    let seeds = seeds();
    // Every seed is a valid request that gets an answer.
    for s in &seeds {
        let mut c = KafkaConn::connect(addr);
        c.send_frame(s).unwrap();
        c.read_frame()
            .unwrap_or_else(|e| panic!("seed not answered: {e}\n{}", broker.borrow().log_text()));
    }
    let cases = std::env::var("UNLOST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&input(seeds.len()), |inp| {
            let bytes = bytes_of(&inp, &seeds);
            let mut c = KafkaConn::connect(addr);
            // The broker may close before reading everything: a failed write is fine.
            let _ = c.send_raw(&bytes);
            c.shutdown_write();
            let closed = c.read_to_close();
            let mut b = broker.borrow_mut();
            prop_assert!(b.is_running(), "broker died on {inp:?}\n{}", b.log_text());
            prop_assert!(
                closed.is_ok(),
                "connection neither answered nor closed in 20 s: {closed:?}"
            );
            Ok(())
        })
        .unwrap();
    // Still serving real requests.
    let mut c = KafkaConn::connect(addr);
    c.send_frame(&seeds[0]).unwrap();
    c.read_frame().expect("broker answers after fuzzing");
    std::thread::sleep(Duration::from_millis(10));
    assert!(broker.borrow_mut().is_running());
}
