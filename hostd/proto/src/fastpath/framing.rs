//! The control socket's binary framing, without I/O: a `u32` little-endian length, then that
//! many bytes of postcard. Reading and writing sockets is the caller's (fastpath's server,
//! hostd's client).
//!
//! A connection's codec is chosen from its first four bytes ([`Codec::detect`]). Binary
//! frames are shorter than 16 MiB, so their fourth byte (the length's most significant byte)
//! is 0; a JSON text never contains a NUL byte, so a first JSON line has a non-zero fourth
//! byte.

use alloc::vec::Vec;
use core::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame body: below 16 MiB, so a frame's fourth byte is always 0.
pub const MAX_FRAME: usize = (16 << 20) - 1;

/// A frame that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame of more than [`MAX_FRAME`] bytes (announced, or to be sent).
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The body is not a postcard message of the expected type.
    Postcard(postcard::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { len } => write!(
                f,
                "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit; the peer does not \
                 speak this protocol"
            ),
            Self::Postcard(err) => write!(
                f,
                "cannot decode a postcard message ({err}); client and server versions may differ"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Postcard(err) => Some(err),
            Self::TooLong { .. } => None,
        }
    }
}

/// The two codecs of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `u32` LE length + postcard.
    Postcard,
    /// One JSON document per line.
    JsonLines,
}

impl Codec {
    /// Picks the codec from the first four bytes of a connection.
    pub fn detect(first: [u8; 4]) -> Self {
        if first[3] == 0 {
            Codec::Postcard
        } else {
            Codec::JsonLines
        }
    }
}

/// `message` as one frame: length prefix and postcard body.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(message).map_err(FrameError::Postcard)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len as usize <= MAX_FRAME)
        .ok_or(FrameError::TooLong { len: body.len() })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame's 4-byte header announces, checked against [`MAX_FRAME`] before
/// anything is allocated for it.
pub fn frame_length(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong { len });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the header).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(FrameError::Postcard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastpath::{Direction, Request};

    #[test]
    fn frames_round_trip_and_are_detected_as_postcard() {
        let req = Request::DeleteAclRule {
            port: "vm1".into(),
            direction: Direction::In,
            id: 7,
        };
        let frame = encode_frame(&req).unwrap();
        let header = [frame[0], frame[1], frame[2], frame[3]];
        assert_eq!(Codec::detect(header), Codec::Postcard);
        assert_eq!(frame_length(header).unwrap(), frame.len() - 4);
        assert_eq!(decode_body::<Request>(&frame[4..]).unwrap(), req);
        assert!(matches!(
            decode_body::<Request>(&frame[4..frame.len() - 1]),
            Err(FrameError::Postcard(_))
        ));
    }

    #[test]
    fn json_text_is_detected_and_long_frames_are_refused() {
        assert_eq!(Codec::detect(*b"\"get"), Codec::JsonLines);
        assert_eq!(Codec::detect(*b"{\"ge"), Codec::JsonLines);
        assert_eq!(
            frame_length([0xff, 0xff, 0xff, 0x01]),
            Err(FrameError::TooLong { len: 0x01ff_ffff })
        );
        assert_eq!(frame_length([0xff, 0xff, 0xff, 0x00]), Ok(MAX_FRAME));
    }
}
