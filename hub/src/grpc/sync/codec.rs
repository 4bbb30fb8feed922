//! The Sync stream's wire: [`Outbound`] messages (an `Update` copies each revision's
//! pre-encoded payload bytes; the wire is identical to the generated `HubMessage`), the codec
//! and its buffer sizes, and [`OutboundStream`], the hub → agent half of a stream.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use keyfleet_proto::v1;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::fleet::{EncodedRevision, PlannedUpdate};
use crate::grpc::convert;

/// One message to an agent: a generated message, or an update carrying pre-encoded payloads.
#[derive(Debug)]
pub enum Outbound {
    /// Any hub message but Update.
    Message(v1::HubMessage),
    /// An Update whose payloads are already encoded.
    Update(PlannedUpdate),
}

impl Outbound {
    /// Encoded length in bytes (without the 5-byte gRPC frame header).
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Message(message) => message.encoded_len(),
            Self::Update(update) => {
                let body = update_body_len(update);
                prost::encoding::key_len(3) + prost::encoding::encoded_len_varint(body as u64) + body
            }
        }
    }

    pub(super) fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Self::Message(message) => {
                // The buffer grows as needed: encoding cannot fail.
                let _ = message.encode(buf);
            }
            Self::Update(update) => {
                use prost::encoding::{WireType, encode_key, encode_varint, message, uint64};
                encode_key(3, WireType::LengthDelimited, buf);
                encode_varint(update_body_len(update) as u64, buf);
                uint64::encode(1, &update.nonce, buf);
                for upsert in &update.upserts {
                    encode_key(2, WireType::LengthDelimited, buf);
                    encode_varint(upsert.payload.len() as u64, buf);
                    buf.put_slice(&upsert.payload);
                }
                for removal in removals(update) {
                    message::encode(3, &removal, buf);
                }
            }
        }
    }
}

fn removals(update: &PlannedUpdate) -> impl Iterator<Item = v1::Removal> + '_ {
    update.removals.iter().map(|(key, policy)| v1::Removal {
        key: key.clone(),
        deletion_policy: convert::deletion_policy(*policy) as i32,
    })
}

fn update_body_len(update: &PlannedUpdate) -> usize {
    use prost::encoding::{encoded_len_varint, key_len, message, uint64};
    let upserts: usize = update
        .upserts
        .iter()
        .map(|upsert: &Arc<EncodedRevision>| {
            key_len(2) + encoded_len_varint(upsert.payload.len() as u64) + upsert.payload.len()
        })
        .sum();
    let removals: usize = removals(update)
        .map(|removal| message::encoded_len(3, &removal))
        .sum();
    uint64::encoded_len(1, &update.nonce) + upserts + removals
}

/// The codec of the Sync stream: [`Outbound`] out, `AgentMessage` in.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncCodec;

/// Encoder half of [`SyncCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboundEncoder;

/// Decoder half of [`SyncCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentMessageDecoder;

impl Codec for SyncCodec {
    type Encode = Outbound;
    type Decode = v1::AgentMessage;
    type Encoder = OutboundEncoder;
    type Decoder = AgentMessageDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutboundEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        AgentMessageDecoder
    }
}

/// Initial size of each stream's encode and decode buffers, kept for the stream's life. Most
/// messages of a Sync stream are tens of bytes (Ack, Heartbeat, Welcome); an Update of a Secret or
/// a VersionPage grows the buffer as needed. tonic's default (8 KiB each way) was 16 KiB of the
/// hub's ~66 KiB per connected agent and 1 KiB each way still 2 KiB (docs/performance.md,
/// "Memory per agent").
const STREAM_BUFFER_BYTES: usize = 256;
/// Encoded bytes after which a stream yields to others (tonic's default).
const STREAM_YIELD_BYTES: usize = 32 * 1024;

fn stream_buffer_settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER_BYTES, STREAM_YIELD_BYTES)
}

impl Encoder for OutboundEncoder {
    type Item = Outbound;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        stream_buffer_settings()
    }

    fn encode(&mut self, item: Outbound, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for AgentMessageDecoder {
    type Item = v1::AgentMessage;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        stream_buffer_settings()
    }

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<v1::AgentMessage>, Status> {
        let message = v1::AgentMessage::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|error| Status::invalid_argument(format!("agent message: {error}")))?;
        Ok(Some(message))
    }
}

/// The hub → agent half of a stream: a terminal status (revocation, protocol error) overtakes
/// anything still queued.
pub struct OutboundStream {
    end: Option<oneshot::Receiver<Status>>,
    rx: mpsc::Receiver<Box<Outbound>>,
    done: bool,
}

impl OutboundStream {
    /// The messages of `rx`, then the status `end` hands over, if any.
    pub(super) fn new(rx: mpsc::Receiver<Box<Outbound>>, end: oneshot::Receiver<Status>) -> Self {
        Self {
            end: Some(end),
            rx,
            done: false,
        }
    }
}

impl futures::Stream for OutboundStream {
    type Item = Result<Outbound, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(end) = self.end.as_mut() {
            match Pin::new(end).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.done = true;
                    self.end = None;
                    self.rx.close();
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.end = None,
                Poll::Pending => {}
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                // The stream task drops its sender before it hands over the final status: wait
                // for that status (or for the task to end without one) instead of ending with OK,
                // which would tell an agent that broke the protocol that all went well.
                let Some(end) = self.end.as_mut() else {
                    return Poll::Ready(None);
                };
                match Pin::new(end).poll(cx) {
                    Poll::Ready(Ok(status)) => {
                        self.done = true;
                        self.end = None;
                        Poll::Ready(Some(Err(status)))
                    }
                    Poll::Ready(Err(_)) => {
                        self.end = None;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            next => next.map(|next| next.map(|message| Ok(*message))),
        }
    }
}
