//! Control socket I/O: binary frames (the protocol part, length prefix + postcard and codec
//! detection, is `hostd_proto::fastpath`'s) or JSON lines for people and scripts.

use std::io::{BufRead, Read, Write};

use hostd_proto::fastpath::FrameError;
pub use hostd_proto::fastpath::{Codec, MAX_FRAME};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// Socket I/O failed.
    #[error("control socket I/O failed")]
    Io(#[source] std::io::Error),
    /// A frame announced more than `MAX_FRAME` bytes.
    #[error(
        "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit; the peer does not speak this protocol"
    )]
    TooLong {
        /// Announced length.
        len: usize,
    },
    /// The body did not decode.
    #[error("cannot decode a postcard message; client and server versions may differ")]
    Postcard(#[source] postcard::Error),
    /// A JSON line did not decode.
    #[error("cannot decode a JSON message; see docs/FASTPATH.md for the request format")]
    Json(#[source] serde_json::Error),
}

impl From<FrameError> for FramingError {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::TooLong { len } => Self::TooLong { len },
            FrameError::Postcard(err) => Self::Postcard(err),
        }
    }
}

/// Writes one postcard frame.
pub fn write_postcard<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FramingError> {
    let frame = hostd_proto::fastpath::encode_frame(msg)?;
    w.write_all(&frame).map_err(FramingError::Io)?;
    w.flush().map_err(FramingError::Io)
}

/// Reads the body of one postcard frame whose 4 length bytes were already read.
pub fn read_postcard_body<R: Read, T: DeserializeOwned>(
    r: &mut R,
    len_bytes: [u8; 4],
) -> Result<T, FramingError> {
    let len = hostd_proto::fastpath::frame_length(len_bytes)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(FramingError::Io)?;
    Ok(hostd_proto::fastpath::decode_body(&body)?)
}

/// Reads one postcard frame; `None` at a clean end of stream.
pub fn read_postcard<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, FramingError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => read_postcard_body(r, len).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(FramingError::Io(e)),
    }
}

/// Writes one JSON line.
pub fn write_json_line<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FramingError> {
    let mut line = serde_json::to_vec(msg).map_err(FramingError::Json)?;
    line.push(b'\n');
    w.write_all(&line).map_err(FramingError::Io)?;
    w.flush().map_err(FramingError::Io)
}

/// Reads one JSON line, with `prefix` already read from the stream; `None` at end of stream.
pub fn read_json_line<R: BufRead, T: DeserializeOwned>(
    r: &mut R,
    prefix: &[u8],
) -> Result<Option<T>, FramingError> {
    let mut line = prefix.to_vec();
    let n = r.read_until(b'\n', &mut line).map_err(FramingError::Io)?;
    if n == 0 && line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if line.len() > MAX_FRAME {
        return Err(FramingError::TooLong { len: line.len() });
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(FramingError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::messages::{Direction, Request};

    #[test]
    fn postcard_round_trip_and_detection() {
        let req = Request::DeleteAclRule {
            port: "vm1".into(),
            direction: Direction::In,
            id: 7,
        };
        let mut buf = Vec::new();
        write_postcard(&mut buf, &req).unwrap();
        assert_eq!(
            Codec::detect([buf[0], buf[1], buf[2], buf[3]]),
            Codec::Postcard
        );
        let back: Request = read_postcard(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, req);
        let end: Option<Request> = read_postcard(&mut [].as_slice()).unwrap();
        assert!(end.is_none());
    }

    #[test]
    fn json_lines_are_detected_and_parsed() {
        let text = b"{\"get_stats\":null}\n\"get_config\"\n";
        // A unit variant may be written as an object with null or as a bare string.
        assert_eq!(
            Codec::detect([text[0], text[1], text[2], text[3]]),
            Codec::JsonLines
        );
        let mut r = std::io::BufReader::new(&text[4..]);
        let first: Request = read_json_line(&mut r, &text[..4]).unwrap().unwrap();
        assert_eq!(first, Request::GetStats);
        let second: Request = read_json_line(&mut r, b"").unwrap().unwrap();
        assert_eq!(second, Request::GetConfig);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut r = [0u8; 0].as_slice();
        let e = read_postcard_body::<_, Request>(&mut r, [0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert!(matches!(e, FramingError::TooLong { .. }));
    }
}
