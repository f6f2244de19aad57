//! The binary form over `std::io`: one frame per message.

use std::io::{self, Read, Write};
use std::vec::Vec;

use serde::Serialize;

use crate::{DecodeError, MAX_FRAME_BYTES, frame_length};

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// I/O failed, or the peer closed the connection inside a frame (truncated).
    Io(io::Error),
    /// The header announces more than [`MAX_FRAME_BYTES`].
    TooLarge(DecodeError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("connection closed"),
            Self::Io(err) => write!(f, "socket I/O failed: {err}"),
            Self::TooLarge(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(err) => Some(err),
            Self::TooLarge(err) => Some(err),
            Self::Closed => None,
        }
    }
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(message: &T) -> io::Result<Vec<u8>> {
    let mut frame = std::vec![0u8; 4];
    let body = postcard::to_stdvec(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_BYTES)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                std::format!(
                    "message of {} bytes is larger than {MAX_FRAME_BYTES}",
                    body.len()
                ),
            )
        })?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Writes one message as a frame.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    out.write_all(&encode(message)?)
}

/// Reads the rest of a frame whose first header byte is `first` into `body`.
pub fn read_frame_after(
    first: u8,
    input: &mut impl Read,
    body: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut header = [first, 0, 0, 0];
    input.read_exact(&mut header[1..]).map_err(ReadError::Io)?;
    let len = frame_length(header).map_err(ReadError::TooLarge)?;
    body.clear();
    body.resize(len, 0);
    input.read_exact(body).map_err(ReadError::Io)
}

/// Reads one frame's body into `body`.
pub fn read_frame(input: &mut impl Read, body: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut first = [0u8; 1];
    loop {
        match input.read(&mut first) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) => return read_frame_after(first[0], input, body),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ReadError::Io(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reply, ReplyEnvelope, Response, decode_reply};

    #[test]
    fn io_frames_round_trip_and_eof_between_frames_is_closed() {
        let reply = ReplyEnvelope {
            id: 3,
            reply: Reply::Ok(Response::Done),
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, &reply).unwrap();
        write_frame(&mut wire, &reply).unwrap();
        let mut reader = wire.as_slice();
        let mut body = Vec::new();
        for _ in 0..2 {
            read_frame(&mut reader, &mut body).unwrap();
            assert_eq!(decode_reply(&body).unwrap(), reply);
        }
        assert!(matches!(
            read_frame(&mut reader, &mut body),
            Err(ReadError::Closed)
        ));
        // Cut inside the body: an I/O error (unexpected EOF), not a frame.
        let mut cut = &wire[..wire.len() / 2 - 1];
        assert!(matches!(
            read_frame(&mut cut, &mut body),
            Err(ReadError::Io(_))
        ));
    }
}
