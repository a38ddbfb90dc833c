//! Framing: a `u32` big-endian length, then an [`Envelope`] encoded with protobuf.
//!
//! [`WorkerCodec`] is a `tokio_util` codec used by both sides. A length above the configured
//! maximum is an error before any of the body is buffered, so a peer cannot make us hold more
//! than one maximum-size frame per connection.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use super::messages::{Envelope, Message};
use super::{PROTOCOL_VERSION, ProtocolError};

/// Size of the length prefix.
const LENGTH_PREFIX_LEN: usize = 4;

/// Most bytes reserved ahead of a frame's data; larger frames grow the buffer as data arrives
/// instead of letting a bare length header allocate the whole frame.
const MAX_RESERVE: usize = 64 * 1024;

/// Encodes and decodes worker-protocol frames.
#[derive(Debug, Clone)]
pub struct WorkerCodec {
    /// Largest body accepted or produced, in bytes (the length prefix is not counted).
    max_frame_size: usize,
}

impl WorkerCodec {
    /// A codec that refuses frames whose body is longer than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        WorkerCodec { max_frame_size }
    }

    /// The largest frame body this codec accepts.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Default for WorkerCodec {
    fn default() -> Self {
        WorkerCodec::new(super::DEFAULT_MAX_FRAME_SIZE)
    }
}

/// The number of bytes `message` takes inside a frame body, to check it against the maximum
/// before queueing it.
pub fn encoded_body_len(message: &Message) -> usize {
    envelope(message.clone()).encoded_len()
}

/// Upper bound, in bytes, of what a frame body holds besides the items of its repeated field:
/// the version field, the message's key and length, and one `u64` field (the `seq` of
/// [`super::Finished`]). Each of those is a key of at most 2 bytes and a varint of at most 10.
pub const FRAME_OVERHEAD: usize = 32;

/// Bytes `item` adds to a frame body as one element of a repeated field (field numbers below 16
/// have one-byte keys).
pub fn item_frame_len<T: prost::Message>(item: &T) -> usize {
    prost::encoding::message::encoded_len(1, item)
}

/// Whether `item` fits a frame of `max_frame_size` bytes on its own, as the only element of an
/// [`super::Assign`] or [`super::Finished`].
pub fn fits_in_frame<T: prost::Message>(item: &T, max_frame_size: usize) -> bool {
    FRAME_OVERHEAD + item_frame_len(item) <= max_frame_size
}

/// Splits `items` into consecutive runs, in order, each small enough for one frame of
/// `max_frame_size` bytes. An item that does not fit a frame alone (see [`fits_in_frame`]) still
/// gets a run of its own; the encoder will then refuse that frame.
pub fn chunk_for_frames<T: prost::Message>(items: Vec<T>, max_frame_size: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut size = FRAME_OVERHEAD;
    for item in items {
        let len = item_frame_len(&item);
        if !current.is_empty() && size + len > max_frame_size {
            chunks.push(std::mem::take(&mut current));
            size = FRAME_OVERHEAD;
        }
        size += len;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn envelope(message: Message) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        message: Some(message),
    }
}

/// Decodes one frame body (without its length prefix).
///
/// # Errors
/// [`ProtocolError::UnsupportedVersion`] for another protocol version,
/// [`ProtocolError::UnknownMessage`] for a message kind this version does not know,
/// [`ProtocolError::Malformed`] or [`ProtocolError::InvalidField`] for bad contents.
pub fn decode_body(body: &[u8]) -> Result<Message, ProtocolError> {
    match Envelope::decode(body) {
        Ok(Envelope { version, message }) => {
            if version != PROTOCOL_VERSION {
                return Err(ProtocolError::UnsupportedVersion { version });
            }
            let message = message.ok_or(ProtocolError::UnknownMessage)?;
            message.validate()?;
            Ok(message)
        }
        Err(error) => {
            // Another version may lay its body out differently: report the version, which is
            // the actionable fact, rather than the parse failure it causes.
            match VersionProbe::decode(body) {
                Ok(probe) if probe.version != PROTOCOL_VERSION => {
                    Err(ProtocolError::UnsupportedVersion {
                        version: probe.version,
                    })
                }
                _ => Err(ProtocolError::Malformed(error)),
            }
        }
    }
}

/// The version field alone; decoding it skips the body's other fields without parsing them.
#[derive(Clone, PartialEq, prost::Message)]
struct VersionProbe {
    #[prost(uint32, tag = "1")]
    version: u32,
}

impl Decoder for WorkerCodec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        if src.len() < LENGTH_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&src[..LENGTH_PREFIX_LEN]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_size {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        let frame_len = LENGTH_PREFIX_LEN + len;
        if src.len() < frame_len {
            src.reserve((frame_len - src.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_LEN);
        let body = src.split_to(len);
        decode_body(&body).map(Some)
    }
}

impl Encoder<Message> for WorkerCodec {
    type Error = ProtocolError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let envelope = envelope(message);
        let len = envelope.encoded_len();
        if len > self.max_frame_size {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        let len_prefix = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
            len,
            max: self.max_frame_size,
        })?;
        dst.reserve(LENGTH_PREFIX_LEN + len);
        dst.put_u32(len_prefix);
        envelope
            .encode(dst)
            .expect("the buffer was reserved for the encoded length");
        Ok(())
    }
}
