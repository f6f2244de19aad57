//! The binary form, without `std`: the `u32` little-endian length prefix, the size limit,
//! and postcard encoding and decoding of envelopes, with the version checked first.

use core::fmt::{self, Write as _};

use serde::Serialize;

use crate::{MAX_FRAME_BYTES, PROTOCOL_VERSION, ReplyEnvelope, RequestEnvelope, Text};

/// A message that cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// It (or the buffer given) is larger than [`MAX_FRAME_BYTES`] allows.
    TooLarge,
    /// The buffer is too small for it.
    BufferTooSmall,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => write!(f, "message larger than {MAX_FRAME_BYTES} bytes"),
            Self::BufferTooSmall => f.write_str("message larger than the encoding buffer"),
        }
    }
}

/// A message that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces more than [`MAX_FRAME_BYTES`].
    TooLarge {
        /// The announced length.
        len: u64,
    },
    /// The request carries another protocol version.
    UnsupportedVersion {
        /// The request's id.
        id: u32,
        /// Its version.
        version: u16,
    },
    /// The body is not a valid message (garbage, truncated, trailing bytes, wrong types).
    Malformed {
        /// The request's id, 0 when unreadable.
        id: u32,
        /// What the decoder said.
        detail: Text,
    },
}

impl DecodeError {
    /// The request id the error concerns (0 when unknown).
    pub fn id(&self) -> u32 {
        match self {
            Self::TooLarge { .. } => 0,
            Self::UnsupportedVersion { id, .. } | Self::Malformed { id, .. } => *id,
        }
    }

    /// A malformed-message error with the decoder's message.
    pub fn malformed(id: u32, detail: impl fmt::Display) -> Self {
        let mut text = Text::new();
        // A message longer than the capacity is cut: write! stops at the first failure.
        let _ = write!(text, "{detail}");
        Self::Malformed { id, detail: text }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len } => write!(
                f,
                "frame of {len} bytes is larger than the {MAX_FRAME_BYTES} bytes allowed"
            ),
            Self::UnsupportedVersion { version, .. } => write!(
                f,
                "protocol version {version} is not supported: this hostd speaks version \
                 {PROTOCOL_VERSION}; use a client built for it"
            ),
            Self::Malformed { detail, .. } => write!(f, "malformed message: {detail}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}
#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// The body length announced by a frame's 4-byte header, checked against the limit.
pub fn frame_length(header: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(header);
    if len > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge { len: len.into() });
    }
    Ok(len as usize)
}

/// Encodes `message` as one frame (header + body) into `buf`; returns the frame.
pub fn encode_frame<'a, T: Serialize>(
    message: &T,
    buf: &'a mut [u8],
) -> Result<&'a [u8], EncodeError> {
    if buf.len() < 4 {
        return Err(EncodeError::BufferTooSmall);
    }
    let body_len = {
        let (_, body) = buf.split_at_mut(4);
        postcard::to_slice(message, body)
            .map_err(|_| EncodeError::BufferTooSmall)?
            .len()
    };
    let len = u32::try_from(body_len).map_err(|_| EncodeError::TooLarge)?;
    if len > MAX_FRAME_BYTES {
        return Err(EncodeError::TooLarge);
    }
    buf[..4].copy_from_slice(&len.to_le_bytes());
    Ok(&buf[..4 + body_len])
}

/// The version and id at the start of a request body, read without decoding the rest.
pub fn peek_version(body: &[u8]) -> Result<(u16, u32), DecodeError> {
    let (version, rest) =
        postcard::take_from_bytes::<u16>(body).map_err(|e| DecodeError::malformed(0, e))?;
    let id = postcard::take_from_bytes::<u32>(rest)
        .map(|(id, _)| id)
        .unwrap_or(0);
    Ok((version, id))
}

/// Decodes a request body: version checked first, then the whole, with no bytes left over.
pub fn decode_request(body: &[u8]) -> Result<RequestEnvelope, DecodeError> {
    let (version, id) = peek_version(body)?;
    if version != crate::PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion { id, version });
    }
    let (envelope, rest) = postcard::take_from_bytes::<RequestEnvelope>(body)
        .map_err(|e| DecodeError::malformed(id, e))?;
    if !rest.is_empty() {
        return Err(DecodeError::malformed(
            id,
            format_args!("{} bytes after the end of the message", rest.len()),
        ));
    }
    Ok(envelope)
}

/// Decodes a reply body (client side).
pub fn decode_reply(body: &[u8]) -> Result<ReplyEnvelope, DecodeError> {
    let (envelope, rest) = postcard::take_from_bytes::<ReplyEnvelope>(body)
        .map_err(|e| DecodeError::malformed(0, e))?;
    if !rest.is_empty() {
        return Err(DecodeError::malformed(
            envelope.id,
            format_args!("{} bytes after the end of the message", rest.len()),
        ));
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstanceRef, Request, name};

    fn envelope() -> RequestEnvelope {
        RequestEnvelope {
            version: PROTOCOL_VERSION,
            id: 42,
            request: Request::PauseInstance(InstanceRef {
                instance: name("web-1"),
            }),
        }
    }

    #[test]
    fn frames_round_trip_without_std_buffers() {
        let mut buf = [0u8; 128];
        let frame = encode_frame(&envelope(), &mut buf).unwrap();
        let len = frame_length(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_request(&frame[4..]).unwrap(), envelope());
    }

    #[test]
    fn a_small_buffer_is_an_error_not_a_panic() {
        let mut buf = [0u8; 6];
        assert_eq!(
            encode_frame(&envelope(), &mut buf),
            Err(EncodeError::BufferTooSmall)
        );
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading_the_body() {
        assert_eq!(
            frame_length((MAX_FRAME_BYTES + 1).to_le_bytes()),
            Err(DecodeError::TooLarge {
                len: u64::from(MAX_FRAME_BYTES) + 1
            })
        );
        assert_eq!(frame_length(MAX_FRAME_BYTES.to_le_bytes()), Ok(65536));
    }

    #[test]
    fn another_version_is_named_with_the_request_id() {
        let mut other = envelope();
        other.version = 9;
        let mut buf = [0u8; 128];
        let frame = encode_frame(&other, &mut buf).unwrap();
        let err = decode_request(&frame[4..]).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion { id: 42, version: 9 });
        assert_eq!(err.id(), 42);
    }

    #[test]
    fn truncated_garbage_and_trailing_bytes_are_malformed() {
        let mut buf = [0u8; 128];
        let frame = encode_frame(&envelope(), &mut buf).unwrap().to_vec();
        let body = &frame[4..];
        assert!(matches!(
            decode_request(&body[..body.len() - 1]),
            Err(DecodeError::Malformed { id: 42, .. })
        ));
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(matches!(
            decode_request(&trailing),
            Err(DecodeError::Malformed { id: 42, .. })
        ));
        // This version, id 1, then a variant index far past the last call.
        let version = u8::try_from(crate::PROTOCOL_VERSION).unwrap();
        assert!(matches!(
            decode_request(&[version, 1, 0x7f]),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(decode_request(&[]).is_err());
    }
}
