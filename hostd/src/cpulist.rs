//! Core lists as the kernel writes them (`0-3,8,10-11`): parsing and printing.

use std::collections::BTreeSet;

/// A malformed core list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{list}` is not a core list: write cores like `2-5,8` (numbers and ranges, comma-separated)"
)]
pub struct CpuListError {
    /// The text.
    pub list: String,
}

/// Parses `0-3,8`; the empty string is the empty set.
pub fn parse(list: &str) -> Result<BTreeSet<u16>, CpuListError> {
    let err = || CpuListError {
        list: list.to_owned(),
    };
    let mut cores = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let first: u16 = first.parse().map_err(|_| err())?;
        let last: u16 = last.parse().map_err(|_| err())?;
        if first > last || last > 4095 {
            return Err(err());
        }
        cores.extend(first..=last);
    }
    Ok(cores)
}

/// Prints a set the way the kernel does: ranges of 3 or more as `a-b`.
pub fn format<'a>(cores: impl IntoIterator<Item = &'a u16>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u16, u16)> = None;
    let flush = |out: &mut Vec<String>, (a, b): (u16, u16)| match b - a {
        0 => out.push(a.to_string()),
        1 => out.push(format!("{a},{b}")),
        _ => out.push(format!("{a}-{b}")),
    };
    let mut sorted: Vec<u16> = cores.into_iter().copied().collect();
    sorted.sort_unstable();
    sorted.dedup();
    for core in sorted {
        run = match run {
            Some((a, b)) if core == b + 1 => Some((a, core)),
            Some(done) => {
                flush(&mut out, done);
                Some((core, core))
            }
            None => Some((core, core)),
        };
    }
    if let Some(done) = run {
        flush(&mut out, done);
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_like_the_kernel() {
        let set = parse("0-3, 8,10-11").unwrap();
        assert_eq!(
            set.iter().copied().collect::<Vec<_>>(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(format(&set), "0-3,8,10,11");
        assert!(parse("").unwrap().is_empty());
        assert!(parse("3-1").is_err());
        assert!(parse("a").is_err());
        assert_eq!(
            parse("x").unwrap_err().to_string(),
            "`x` is not a core list: write cores like `2-5,8` (numbers and ranges, comma-separated)"
        );
    }
}
