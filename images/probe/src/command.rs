//! The console commands of docs/VMM.md, parsed from one input line.

use thiserror::Error;

use crate::pci::Bdf;

/// One command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `off`: power off (ACPI S5, else debug exit 0).
    Off,
    /// `reset`: reset the machine through the i8042.
    Reset,
    /// `ticks`: print the idle-loop counter.
    Ticks,
    /// `ignore-power`: stop honouring the power button.
    IgnorePower,
    /// `pci`: print the pci lines again.
    Pci,
    /// `peek <bus:dev.fn> <bar> <offset>`: print a 32-bit value of a BAR.
    Peek {
        /// The function.
        bdf: Bdf,
        /// BAR register index (0..=5).
        bar: u8,
        /// Byte offset into the BAR.
        offset: u64,
    },
    /// `help`: list the commands.
    Help,
}

/// The `help` text.
pub const HELP: &str = "\
commands:
  off                               power off (ACPI S5, else debug exit 0)
  reset                             reset the machine (i8042)
  ticks                             print the idle-loop counter
  ignore-power                      stop honouring the power button
  pci                               print the pci lines again
  peek <bus:dev.fn> <bar> <offset>  read 32 bits at a BAR offset (hex offset)
  help                              this list
";

/// Usage of `peek`, for its errors.
const PEEK_USAGE: &str = "peek <bus:dev.fn> <bar 0-5> <hex offset>, e.g. peek 00:03.0 0 0x8";

/// Why a line is not a command.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum CommandError<'a> {
    /// The first word is not a command.
    #[error("unknown command `{0}`: type help for the list")]
    Unknown(&'a str),
    /// A command that takes no arguments got some.
    #[error("`{0}` takes no arguments")]
    UnexpectedArguments(&'static str),
    /// `peek` arguments are missing or malformed.
    #[error("bad peek arguments `{0}`: usage: {PEEK_USAGE}")]
    BadPeek(&'a str),
}

/// Parses a line: `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, CommandError<'_>> {
    let line = line.trim();
    let (name, arguments) = line.split_once(' ').unwrap_or((line, ""));
    let arguments = arguments.trim();
    let simple = |command: Command, name: &'static str| {
        if arguments.is_empty() {
            Ok(Some(command))
        } else {
            Err(CommandError::UnexpectedArguments(name))
        }
    };
    match name {
        "" => Ok(None),
        "off" => simple(Command::Off, "off"),
        "reset" => simple(Command::Reset, "reset"),
        "ticks" => simple(Command::Ticks, "ticks"),
        "ignore-power" => simple(Command::IgnorePower, "ignore-power"),
        "pci" => simple(Command::Pci, "pci"),
        "help" => simple(Command::Help, "help"),
        "peek" => parse_peek(arguments)
            .map(Some)
            .ok_or(CommandError::BadPeek(arguments)),
        _ => Err(CommandError::Unknown(name)),
    }
}

fn parse_peek(arguments: &str) -> Option<Command> {
    let mut words = arguments.split_whitespace();
    let bdf = Bdf::parse(words.next()?)?;
    let bar = words.next()?.parse::<u8>().ok().filter(|bar| *bar <= 5)?;
    let offset = words.next()?;
    let offset = offset
        .strip_prefix("0x")
        .or_else(|| offset.strip_prefix("0X"))
        .unwrap_or(offset);
    let offset = u64::from_str_radix(offset, 16).ok()?;
    words
        .next()
        .is_none()
        .then_some(Command::Peek { bdf, bar, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("off"), Ok(Some(Command::Off)));
        assert_eq!(parse("  reset "), Ok(Some(Command::Reset)));
        assert_eq!(parse("ticks"), Ok(Some(Command::Ticks)));
        assert_eq!(parse("ignore-power"), Ok(Some(Command::IgnorePower)));
        assert_eq!(parse("pci"), Ok(Some(Command::Pci)));
        assert_eq!(parse("help"), Ok(Some(Command::Help)));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn parses_peek_with_and_without_0x_and_segment() {
        let expected = Command::Peek {
            bdf: Bdf {
                bus: 0,
                device: 3,
                function: 0,
            },
            bar: 0,
            offset: 0x8,
        };
        assert_eq!(parse("peek 00:03.0 0 0x8"), Ok(Some(expected)));
        assert_eq!(parse("peek 0000:00:03.0  0  8"), Ok(Some(expected)));
        let bar3 = Command::Peek {
            bdf: Bdf {
                bus: 1,
                device: 0,
                function: 1,
            },
            bar: 3,
            offset: 0x1c,
        };
        assert_eq!(parse("peek 01:00.1 3 1C"), Ok(Some(bar3)));
    }

    #[test]
    fn rejects_unknown_commands_extra_arguments_and_bad_peeks() {
        assert_eq!(parse("of"), Err(CommandError::Unknown("of")));
        assert_eq!(
            parse("off now"),
            Err(CommandError::UnexpectedArguments("off"))
        );
        assert_eq!(
            parse("peek 00:03.0 6 0"),
            Err(CommandError::BadPeek("00:03.0 6 0"))
        );
        assert_eq!(
            parse("peek 00:03.0 0"),
            Err(CommandError::BadPeek("00:03.0 0"))
        );
        assert_eq!(
            parse("peek 00:03.0 0 zz"),
            Err(CommandError::BadPeek("00:03.0 0 zz"))
        );
        assert_eq!(
            parse("peek 00:03.0 0 8 9"),
            Err(CommandError::BadPeek("00:03.0 0 8 9"))
        );
        assert_eq!(parse("peek"), Err(CommandError::BadPeek("")));
    }
}
