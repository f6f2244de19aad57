//! Carrying the JSON report over a serial console: between marker lines, with its length and
//! CRC-32, on one line. Kernel messages or line noise can land in the middle of console output;
//! a frame that does not check out is an error, never a pass.

/// Starts a frame; followed by ` bytes=<n> crc32=<8 hex>`.
pub const BEGIN: &str = "==HWTEST-REPORT-BEGIN";
/// Ends a frame.
pub const END: &str = "==HWTEST-REPORT-END==";

/// Frames `payload` (which must be one line).
pub fn encode(payload: &str) -> String {
    format!(
        "{BEGIN} bytes={} crc32={:08x}\n{payload}\n{END}\n",
        payload.len(),
        crc32fast::hash(payload.as_bytes())
    )
}

/// A frame that does not check out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// No begin marker yet.
    #[error("no report frame in the console output")]
    NotFound,
    /// Begin without end: the output stopped early.
    #[error("the report frame is truncated (no end marker)")]
    Truncated,
    /// The header line is mangled.
    #[error("the report frame header is malformed: {0:?}")]
    BadHeader(String),
    /// The payload is not what the header says.
    #[error(
        "the report frame is corrupt: header says {want_bytes} bytes crc32 {want_crc:08x}, got {got_bytes} bytes crc32 {got_crc:08x}"
    )]
    Corrupt {
        /// Length in the header.
        want_bytes: usize,
        /// CRC in the header.
        want_crc: u32,
        /// Length received.
        got_bytes: usize,
        /// CRC received.
        got_crc: u32,
    },
}

/// Finds the last complete frame in console output and checks it. Carriage returns (a serial
/// console's line endings) are ignored.
pub fn decode(console: &str) -> Result<String, FrameError> {
    let text = console.replace('\r', "");
    let start = text
        .rfind(&format!("\n{BEGIN} "))
        .map(|i| i + 1)
        .or_else(|| text.starts_with(BEGIN).then_some(0));
    let start = start.ok_or(FrameError::NotFound)?;
    let rest = &text[start..];
    let (header, rest) = rest.split_once('\n').ok_or(FrameError::Truncated)?;
    let end = rest
        .find(&format!("\n{END}"))
        .ok_or(FrameError::Truncated)?;
    let payload = &rest[..end];
    let bad = || FrameError::BadHeader(header.to_string());
    let mut want_bytes = None;
    let mut want_crc = None;
    for field in header[BEGIN.len()..].split_whitespace() {
        match field.split_once('=') {
            Some(("bytes", v)) => want_bytes = v.parse::<usize>().ok(),
            Some(("crc32", v)) => want_crc = u32::from_str_radix(v, 16).ok(),
            _ => return Err(bad()),
        }
    }
    let (want_bytes, want_crc) = (want_bytes.ok_or_else(bad)?, want_crc.ok_or_else(bad)?);
    let got_crc = crc32fast::hash(payload.as_bytes());
    if payload.len() != want_bytes || got_crc != want_crc {
        return Err(FrameError::Corrupt {
            want_bytes,
            want_crc,
            got_bytes: payload.len(),
            got_crc,
        });
    }
    Ok(payload.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"suite":"hw-test","passed":true}"#;

    #[test]
    fn round_trips_through_a_noisy_console() {
        let console = format!(
            "appliance# hw-test --json --frame\r\nhw-test: running cpu_virt\r\n{}appliance# ",
            encode(JSON).replace('\n', "\r\n")
        );
        assert_eq!(decode(&console).unwrap(), JSON);
    }

    #[test]
    fn the_echoed_command_is_not_a_frame() {
        assert_eq!(
            decode("appliance# hw-test --frame\r\n"),
            Err(FrameError::NotFound)
        );
    }

    #[test]
    fn truncation_and_corruption_are_errors() {
        let framed = encode(JSON);
        let cut = &framed[..framed.len() - END.len() - 2];
        assert_eq!(decode(cut), Err(FrameError::Truncated));
        let flipped = framed.replace("true", "treu");
        assert!(matches!(decode(&flipped), Err(FrameError::Corrupt { .. })));
        // A kernel message landing inside the payload line.
        let noisy = framed.replace(r#""passed""#, r#"[ 12.3] igb: link up"passed""#);
        assert!(matches!(decode(&noisy), Err(FrameError::Corrupt { .. })));
        let header = framed.replace("crc32=", "crc=");
        assert!(matches!(decode(&header), Err(FrameError::BadHeader(_))));
    }

    #[test]
    fn the_last_frame_wins() {
        let console = format!("{}{}", encode("old"), encode(JSON));
        assert_eq!(decode(&console).unwrap(), JSON);
    }
}
