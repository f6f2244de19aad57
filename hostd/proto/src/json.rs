//! The JSON-lines form: one JSON object per line, the same types as the binary form.

use std::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::{DecodeError, MAX_FRAME_BYTES, PROTOCOL_VERSION, RequestEnvelope};

/// The fields read before the rest, so a wrong version or a malformed call is answered
/// with the request's id.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    version: Option<u16>,
    #[serde(default)]
    id: u32,
}

/// Encodes `message` as one JSON line (with its `\n`).
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

/// Decodes one request line (without its `\n`): version first, then the whole.
pub fn decode_request_line(line: &[u8]) -> Result<RequestEnvelope, DecodeError> {
    if line.len() > MAX_FRAME_BYTES as usize {
        return Err(DecodeError::TooLarge {
            len: line.len() as u64,
        });
    }
    let head: Head = serde_json::from_slice(line).map_err(|e| DecodeError::malformed(0, e))?;
    match head.version {
        None => {
            return Err(DecodeError::malformed(
                head.id,
                "missing field `version` (this hostd speaks version 1)",
            ));
        }
        Some(version) if version != PROTOCOL_VERSION => {
            return Err(DecodeError::UnsupportedVersion {
                id: head.id,
                version,
            });
        }
        Some(_) => {}
    }
    serde_json::from_slice(line).map_err(|e| DecodeError::malformed(head.id, e))
}

/// Decodes one reply line (client side).
pub fn decode_reply_line(line: &[u8]) -> Result<crate::ReplyEnvelope, DecodeError> {
    serde_json::from_slice(line).map_err(|e| DecodeError::malformed(0, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, InstanceRef, Reply, ReplyEnvelope, Request, StopInstance, name};

    #[test]
    fn the_json_form_uses_snake_case_tags() {
        let envelope = RequestEnvelope {
            version: crate::PROTOCOL_VERSION,
            id: 5,
            request: Request::StopInstance(StopInstance {
                instance: name("web-1"),
                force: true,
                timeout_ms: None,
            }),
        };
        let line = encode_line(&envelope).unwrap();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"version\":2,\"id\":5,\"request\":{\"stop_instance\":\
             {\"instance\":\"web-1\",\"force\":true,\"timeout_ms\":null}}}\n"
        );
        assert_eq!(
            decode_request_line(&line[..line.len() - 1]).unwrap(),
            envelope
        );
        // Optional fields may be left out.
        let short = br#"{"version":2,"id":6,"request":{"stop_instance":{"instance":"a"}}}"#;
        assert!(decode_request_line(short).is_ok());
        let unit = br#"{"version":2,"id":6,"request":"host_status"}"#;
        assert_eq!(
            decode_request_line(unit).unwrap().request,
            Request::HostStatus
        );
    }

    #[test]
    fn wrong_types_versions_and_garbage_keep_the_id() {
        let wrong = br#"{"version":2,"id":8,"request":{"start_instance":{"instance":5}}}"#;
        assert!(matches!(
            decode_request_line(wrong),
            Err(DecodeError::Malformed { id: 8, .. })
        ));
        let version = br#"{"version":99,"id":9,"request":"hello"}"#;
        assert_eq!(
            decode_request_line(version),
            Err(DecodeError::UnsupportedVersion { id: 9, version: 99 })
        );
        assert!(decode_request_line(b"{nonsense").is_err());
        let missing = br#"{"id":4,"request":"hello"}"#;
        assert!(matches!(
            decode_request_line(missing),
            Err(DecodeError::Malformed { id: 4, .. })
        ));
        let long_name = std::format!(
            r#"{{"version":1,"id":1,"request":{{"start_instance":{{"instance":"{}"}}}}}}"#,
            "x".repeat(40)
        );
        assert!(decode_request_line(long_name.as_bytes()).is_err());
        let _ = InstanceRef::default();
        let reply = ReplyEnvelope {
            id: 1,
            reply: Reply::Error(crate::ApiError::new(ErrorCode::NotFound, "no")),
        };
        let line = encode_line(&reply).unwrap();
        assert_eq!(decode_reply_line(&line).unwrap(), reply);
    }
}
