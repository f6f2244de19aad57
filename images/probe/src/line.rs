//! Line editing of console input: echo, backspace, and one complete line at a time.

use core::fmt;

/// Longest command line kept; further characters are dropped (and not echoed).
pub const MAX_LINE: usize = 80;

/// A completed input line.
#[derive(Clone, Copy)]
pub struct Line {
    bytes: [u8; MAX_LINE],
    len: usize,
}

impl Line {
    /// The line's text (printable ASCII only, so always valid UTF-8).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.bytes.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The line being typed.
#[derive(Debug)]
pub struct LineEditor {
    line: Line,
    /// The previous byte was a carriage return: a line feed right after it ends no new line.
    after_carriage_return: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self {
            line: Line {
                bytes: [0; MAX_LINE],
                len: 0,
            },
            after_carriage_return: false,
        }
    }
}

impl LineEditor {
    /// Takes one input byte, writes its echo to `echo`, and returns the line when the byte
    /// ends one (CR, LF, or CR LF).
    pub fn feed(&mut self, byte: u8, echo: &mut impl fmt::Write) -> Option<Line> {
        let after_carriage_return =
            core::mem::replace(&mut self.after_carriage_return, byte == b'\r');
        match byte {
            b'\n' if after_carriage_return => None,
            b'\r' | b'\n' => {
                let _ = echo.write_char('\n');
                let line = self.line;
                self.line.len = 0;
                Some(line)
            }
            // Backspace and DEL both erase: terminals send either.
            0x08 | 0x7F => {
                if self.line.len > 0 {
                    self.line.len -= 1;
                    let _ = echo.write_str("\x08 \x08");
                }
                None
            }
            0x20..=0x7E => {
                if let Some(slot) = self.line.bytes.get_mut(self.line.len) {
                    *slot = byte;
                    self.line.len += 1;
                    let _ = echo.write_char(char::from(byte));
                }
                None
            }
            _ => None, // other control characters and non-ASCII bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn type_bytes(
        editor: &mut LineEditor,
        input: &[u8],
        echo: &mut String,
    ) -> std::vec::Vec<String> {
        input
            .iter()
            .filter_map(|b| editor.feed(*b, echo))
            .map(|l| l.as_str().into())
            .collect()
    }

    #[test]
    fn echoes_and_returns_lines_on_cr_lf_and_crlf() {
        let mut editor = LineEditor::default();
        let mut echo = String::new();
        let lines = type_bytes(&mut editor, b"ticks\roff\npci\r\nhelp\n", &mut echo);
        assert_eq!(lines, ["ticks", "off", "pci", "help"]);
        assert_eq!(echo, "ticks\noff\npci\nhelp\n");
    }

    #[test]
    fn backspace_erases_on_screen_and_in_the_line() {
        let mut editor = LineEditor::default();
        let mut echo = String::new();
        let lines = type_bytes(&mut editor, b"\x08tickz\x7fs\r", &mut echo);
        assert_eq!(lines, ["ticks"]);
        assert_eq!(echo, "tickz\x08 \x08s\n");
    }

    #[test]
    fn drops_control_bytes_and_overlong_input() {
        let mut editor = LineEditor::default();
        let mut echo = String::new();
        let mut input = std::vec![b'a'; MAX_LINE + 5];
        input.extend_from_slice(b"\x1b\x00\xff\n");
        let lines = type_bytes(&mut editor, &input, &mut echo);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(echo.len(), MAX_LINE + 1);
    }

    #[test]
    fn empty_line_is_still_a_line() {
        let mut editor = LineEditor::default();
        let mut echo = String::new();
        assert_eq!(type_bytes(&mut editor, b"\r\r", &mut echo), ["", ""]);
    }
}
