//! Property tests of the hub's Sync message handling, through a real hub (tonic over TLS on
//! loopback): arbitrary frames (bytes the hub's decoder must parse) and arbitrary sequences of
//! `AgentMessage`s (Hello checks, version pages, acks, drift reports) never panic the hub; every
//! protocol violation ends the stream with INVALID_ARGUMENT / FAILED_PRECONDITION naming the
//! field, and the hub keeps serving afterwards. Also the wire selector conversion.
//!
//! A panicking stream task would end the stream without a status: the properties require one.
//! Every sequence ends with an empty message (always a violation), so each case ends by itself.
//! Bounded: 256 cases per property (`PROPTEST_CASES` for a longer hunt), run by `cargo test`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::BufMut as _;
use keyfleet_hub::grpc::convert;
use keyfleet_hub::grpc::sync::SyncConfig;
use keyfleet_proto::v1::secret_sync_client::SecretSyncClient;
use keyfleet_proto::v1::{self, agent_message};
use keyfleet_proto::{PROTOCOL_VERSION, limits};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost::Message as _;
use support::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(256),
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Field names a refusal may start with: the message names what was wrong.
const FIELDS: &[&str] = &["hello", "ack", "drift", "version_page", "agent message"];

fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("regcred".to_owned()),
        Just("a.b-c".to_owned()),
        Just("UPPER".to_owned()),
        Just("a".repeat(254)),
        Just("x".repeat(64)),
        "[a-z0-9.-]{0,20}",
        any::<String>(),
    ]
}

fn bytes(lengths: &[usize]) -> impl Strategy<Value = Vec<u8>> {
    let lengths = lengths.to_vec();
    prop_oneof![
        prop::sample::select(lengths).prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn hello() -> impl Strategy<Value = agent_message::Body> {
    (
        prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()],
        prop_oneof!["[a-z0-9.]{0,10}", "x{60,70}", any::<String>()],
        bytes(&[16]),
        bytes(&[32]),
        prop_oneof![
            Just(0u32),
            0..20u32,
            Just(limits::MAX_APPLIED as u32 + 1),
            any::<u32>()
        ],
    )
        .prop_map(
            |(protocol, agent_version, boot_id, applied_digest, applied_count)| {
                agent_message::Body::Hello(v1::Hello {
                    agent_version,
                    protocol,
                    boot_id,
                    applied_digest,
                    applied_count,
                })
            },
        )
}

fn item_result() -> impl Strategy<Value = v1::ItemResult> {
    (
        odd_string(),
        any::<u64>(),
        prop::option::of((
            any::<i32>(),
            any::<bool>(),
            prop_oneof![any::<String>(), "y{1020,1030}"],
        )),
    )
        .prop_map(|(key, revision, error)| v1::ItemResult {
            key,
            revision,
            error: error.map(|(code, retryable, message)| v1::ItemError {
                code,
                retryable,
                message,
            }),
        })
}

fn body() -> impl Strategy<Value = Option<agent_message::Body>> {
    prop_oneof![
        hello().prop_map(Some),
        Just(Some(agent_message::Body::Heartbeat(v1::Heartbeat {
            sent_at_unix_ms: 1
        }))),
        (0..4u64, prop::collection::vec(item_result(), 0..4))
            .prop_map(|(nonce, results)| Some(agent_message::Body::Ack(v1::Ack { nonce, results }))),
        (
            odd_string(),
            odd_string(),
            any::<i32>(),
            any::<u64>(),
            prop_oneof![Just(String::new()), Just("x".repeat(1025)), any::<String>()]
        )
            .prop_map(|(key, namespace, kind, revision, failure)| {
                Some(agent_message::Body::Drift(v1::DriftReport {
                    key,
                    namespace,
                    kind,
                    revision,
                    failure,
                }))
            }),
        (
            prop::collection::vec(
                (odd_string(), any::<u64>(), bytes(&[32])).prop_map(|(key, revision, sha256)| {
                    v1::AppliedItem {
                        key,
                        revision,
                        sha256,
                    }
                }),
                0..4
            ),
            any::<bool>()
        )
            .prop_map(
                |(items, last)| Some(agent_message::Body::VersionPage(v1::VersionPage { items, last }))
            ),
        Just(None),
    ]
}

/// A stream's messages: usually a Hello first, then anything, then the empty message.
fn sequence() -> impl Strategy<Value = Vec<Option<agent_message::Body>>> {
    (
        prop_oneof![3 => hello().prop_map(Some), 1 => body()],
        prop::collection::vec(body(), 0..5),
    )
        .prop_map(|(first, rest)| {
            let mut all = vec![first];
            all.extend(rest);
            all.push(None);
            all
        })
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    hub: Hub,
    channel: Channel,
    next_cluster: std::cell::Cell<u128>,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (hub, channel) = runtime.block_on(async {
            let hub = Hub::start_with(
                default_fleet_config(),
                SyncConfig {
                    // Hundreds of streams in a second: the admission bucket is not under test.
                    admission_per_second: 1e6,
                    admission_burst: 1_000_000,
                    handshake_timeout: Duration::from_secs(5),
                    ..SyncConfig::default()
                },
            )
            .await;
            let channel = hub.endpoint.channel().await.unwrap();
            (hub, channel)
        });
        Self {
            runtime,
            hub,
            channel,
            next_cluster: std::cell::Cell::new(1),
        }
    }

    /// A fresh enrolled cluster with an empty desired set; its credential.
    fn cluster(&self) -> String {
        let n = self.next_cluster.get();
        self.next_cluster.set(n + 1);
        let (cluster, credential) = self.hub.enroll(n);
        self.hub.fleet.set_desired(cluster, desired(&[]));
        credential
    }

    /// The hub still serves a well-behaved agent.
    fn still_serves(&self) {
        let credential = self.cluster();
        self.runtime.block_on(async {
            let mut agent = TestAgent::connect(&self.hub.endpoint, &credential, Applied::new())
                .await
                .unwrap();
            within(PROMPT, "handshake", agent.handshake()).await.unwrap();
        });
    }
}

fn authorized<T>(message: T, credential: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {credential}").parse().unwrap());
    request
}

/// Reads the hub's answers until the stream ends; the status it ended with (`Ok` for a clean
/// end, which a protocol violation must never get).
async fn end_of<S>(mut inbound: S) -> Result<Code, TestCaseError>
where
    S: futures::Stream<Item = Result<v1::HubMessage, tonic::Status>> + Unpin,
{
    use futures::StreamExt as _;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(next) = inbound.next().await {
            if let Err(status) = next {
                return Some(status);
            }
        }
        None
    })
    .await
    .map_err(|_| TestCaseError::fail("the hub neither answered nor ended the stream in 10 s"))?;
    let Some(status) = ended else {
        return Ok(Code::Ok);
    };
    let message = status.message();
    prop_assert!(
        matches!(status.code(), Code::InvalidArgument | Code::FailedPrecondition),
        "{status:?}"
    );
    prop_assert!(
        FIELDS.iter().any(|field| message.starts_with(field)),
        "the refusal does not name a field: {message:?}"
    );
    Ok(status.code())
}

#[test]
fn arbitrary_message_sequences_end_with_a_status_naming_the_field() {
    let fixture = Fixture::new();
    let mut runner = TestRunner::new(config());
    runner
        .run(&sequence(), |messages| {
            let credential = fixture.cluster();
            fixture.runtime.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                for body in messages {
                    tx.send(v1::AgentMessage { body }).await.unwrap();
                }
                let mut client = SecretSyncClient::new(fixture.channel.clone());
                let response = client
                    .sync(authorized(ReceiverStream::new(rx), &credential))
                    .await
                    .map_err(|status| TestCaseError::fail(format!("stream refused: {status:?}")))?;
                let code = end_of(response.into_inner()).await?;
                prop_assert_ne!(code, Code::Ok, "stream ended without a status (a panic?)");
                drop(tx);
                Ok(())
            })
        })
        .unwrap();
    fixture.still_serves();
}

/// Sends each item as one gRPC frame as it is, and decodes the hub's messages.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct HubDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = v1::HubMessage;
    type Encoder = RawEncoder;
    type Decoder = HubDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> HubDecoder {
        HubDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for HubDecoder {
    type Item = v1::HubMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<v1::HubMessage>, tonic::Status> {
        use bytes::Buf as _;
        v1::HubMessage::decode(src.copy_to_bytes(src.remaining()))
            .map(Some)
            .map_err(|error| tonic::Status::internal(error.to_string()))
    }
}

fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let frame = prop_oneof![
        // Noise.
        prop::collection::vec(any::<u8>(), 0..200),
        // A real message cut or with one byte changed.
        (sequence(), any::<usize>(), any::<u8>(), any::<bool>()).prop_map(|(messages, at, byte, cut)| {
            let mut bytes = v1::AgentMessage {
                body: messages[0].clone(),
            }
            .encode_to_vec();
            if !bytes.is_empty() {
                let at = at % bytes.len();
                if cut {
                    bytes.truncate(at);
                } else {
                    bytes[at] = byte;
                }
            }
            bytes
        }),
    ];
    prop::collection::vec(frame, 1..4).prop_map(|mut frames| {
        // The empty message (zero bytes) ends every case with a violation.
        frames.push(Vec::new());
        frames
    })
}

#[test]
fn arbitrary_frames_end_with_a_status_naming_the_field() {
    let fixture = Fixture::new();
    let mut runner = TestRunner::new(config());
    runner
        .run(&frames(), |frames| {
            let credential = fixture.cluster();
            fixture.runtime.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                for frame in frames {
                    tx.send(frame).await.unwrap();
                }
                let mut grpc = tonic::client::Grpc::new(fixture.channel.clone());
                grpc.ready().await.unwrap();
                let path = http::uri::PathAndQuery::from_static("/keyfleet.v1.SecretSync/Sync");
                let response = grpc
                    .streaming(authorized(ReceiverStream::new(rx), &credential), path, RawCodec)
                    .await
                    .map_err(|status| TestCaseError::fail(format!("stream refused: {status:?}")))?;
                let code = end_of(response.into_inner()).await?;
                prop_assert_ne!(code, Code::Ok, "stream ended without a status (a panic?)");
                drop(tx);
                Ok(())
            })
        })
        .unwrap();
    fixture.still_serves();
}

proptest! {
    #![proptest_config(config())]

    /// Wire selectors (namespace selectors and cluster selectors the Admin API takes): refused
    /// with the operator or key named, or converted and converted back unchanged.
    #[test]
    fn wire_selectors_convert_or_name_the_problem(
        match_labels in prop::collection::hash_map(odd_string(), odd_string(), 0..3),
        requirements in prop::collection::vec(
            (odd_string(), prop_oneof![Just("In".to_owned()), Just("NotIn".to_owned()), Just("Exists".to_owned()),
                Just("DoesNotExist".to_owned()), any::<String>()], prop::collection::vec(odd_string(), 0..3)),
            0..4,
        ),
    ) {
        let selector = v1::LabelSelector {
            match_labels,
            match_expressions: requirements
                .into_iter()
                .map(|(key, operator, values)| v1::LabelRequirement { key, operator, values })
                .collect(),
        };
        match convert::selector_from_proto(&selector) {
            Ok(domain) => {
                let back = convert::selector_to_proto(&domain);
                prop_assert_eq!(back.match_expressions, selector.match_expressions);
                prop_assert_eq!(back.match_labels, selector.match_labels);
            }
            Err(error) => {
                let text = error.to_string();
                prop_assert!(
                    text.starts_with("selector operator") || text.starts_with("selector requirement on"),
                    "{text}"
                );
            }
        }
    }
}
