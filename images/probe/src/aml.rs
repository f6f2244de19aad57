//! Just enough AML to read `\_S5`: the SLP_TYP value that, written with SLP_EN to PM1a_CNT,
//! powers the machine off. QEMU's q35 declares 0 there, our VMM 5.
//!
//! A full AML interpreter is far beyond a probe; `\_S5` is, in every DSDT that matters here, a
//! plain `Name (_S5, Package () { <SLP_TYPa>, ... })`, which encodes as
//! `NameOp [RootChar] "_S5_" PackageOp PkgLength NumElements <integer>`.

use thiserror::Error;

/// `NameOp`.
const NAME_OP: u8 = 0x08;
/// `RootChar` (`\`).
const ROOT_CHAR: u8 = b'\\';
/// `PackageOp`.
const PACKAGE_OP: u8 = 0x12;
/// Integer encodings: `ZeroOp`, `OneOp`, `OnesOp`, and prefixed constants.
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const ONES_OP: u8 = 0xFF;
const BYTE_PREFIX: u8 = 0x0A;
const WORD_PREFIX: u8 = 0x0B;
const DWORD_PREFIX: u8 = 0x0C;
const QWORD_PREFIX: u8 = 0x0E;

/// Why `\_S5` could not be read.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum AmlError {
    /// No `Name (_S5, Package ...)` in the DSDT.
    #[error(
        "the DSDT declares no \\_S5 package: the VMM's DSDT must contain \
         Name (_S5, Package () {{ SLP_TYP, ... }}) for ACPI power-off"
    )]
    S5NotFound,
    /// `\_S5` is there but its first element is not an integer constant the probe decodes.
    #[error(
        "\\_S5 at DSDT offset {offset:#x} starts with AML opcode {opcode:#04x}, not an integer \
         constant: declare SLP_TYP as a constant"
    )]
    S5NotConstant {
        /// Offset of the element in the AML.
        offset: usize,
        /// The opcode found.
        opcode: u8,
    },
}

/// The SLP_TYPa value of `\_S5` in `aml` (a whole DSDT or just its body).
pub fn s5_sleep_type(aml: &[u8]) -> Result<u8, AmlError> {
    let mut first_error = None;
    for name_at in find_all(aml, b"_S5_") {
        let declared_by_name = match name_at {
            0 => false,
            1 => aml[0] == NAME_OP,
            _ => {
                aml[name_at - 1] == NAME_OP
                    || (aml[name_at - 1] == ROOT_CHAR && aml[name_at - 2] == NAME_OP)
            }
        };
        if !declared_by_name {
            continue; // a reference to _S5_, or the bytes by chance
        }
        match package_first_integer(aml, name_at + 4) {
            Some(Ok(value)) => return Ok((value & 0x7) as u8), // SLP_TYP is 3 bits wide
            Some(Err(error)) => {
                first_error.get_or_insert(error);
            }
            None => {}
        }
    }
    Err(first_error.unwrap_or(AmlError::S5NotFound))
}

/// Offsets of every occurrence of `needle` in `haystack`.
fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, window)| *window == needle)
        .map(|(offset, _)| offset)
}

/// Decodes `PackageOp PkgLength NumElements <first element>` at `at`: `None` when there is
/// no package there, an error when its first element is not an integer constant.
fn package_first_integer(aml: &[u8], at: usize) -> Option<Result<u64, AmlError>> {
    if *aml.get(at)? != PACKAGE_OP {
        return None;
    }
    // PkgLength: bits 7..6 of the lead byte count the bytes that follow it (0..3).
    let lead = *aml.get(at + 1)?;
    let num_elements_at = at + 2 + usize::from(lead >> 6);
    if *aml.get(num_elements_at)? == 0 {
        return None;
    }
    let element_at = num_elements_at + 1;
    let opcode = *aml.get(element_at)?;
    let constant = |len: usize| {
        let bytes = aml.get(element_at + 1..element_at + 1 + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |value, byte| (value << 8) | u64::from(*byte)),
        )
    };
    let value = match opcode {
        ZERO_OP => Some(0),
        ONE_OP => Some(1),
        ONES_OP => Some(u64::MAX),
        BYTE_PREFIX => constant(1),
        WORD_PREFIX => constant(2),
        DWORD_PREFIX => constant(4),
        QWORD_PREFIX => constant(8),
        _ => {
            return Some(Err(AmlError::S5NotConstant {
                offset: element_at,
                opcode,
            }));
        }
    };
    value.map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_vmms_s5_of_5() {
        // Name (_S5_, Package (4) { 5, 5, 0, 0 }) as acpi_tables' aml builder emits it.
        let aml = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00,
        ];
        assert_eq!(s5_sleep_type(&aml), Ok(5));
    }

    #[test]
    fn reads_qemus_q35_s5_of_zero_with_root_prefix() {
        // Name (\_S5, Package (4) { Zero, Zero, Zero, Zero }) inside other AML.
        let aml = [
            0x10, 0x05, b'_', b'S', b'B', b'_', 0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06,
            0x04, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(s5_sleep_type(&aml), Ok(0));
    }

    #[test]
    fn accepts_one_op_and_multi_byte_pkg_length() {
        let aml = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x40, 0x00, 0x02, 0x01, 0x01,
        ];
        assert_eq!(s5_sleep_type(&aml), Ok(1));
    }

    #[test]
    fn skips_references_that_are_not_declarations() {
        // A method body that mentions _S5_ (no NameOp before it), then the real one.
        let aml = [
            0x70, b'_', b'S', b'5', b'_', 0x60, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01,
            0x0A, 0x07,
        ];
        assert_eq!(s5_sleep_type(&aml), Ok(7));
    }

    #[test]
    fn missing_or_non_constant_s5_is_an_error() {
        assert_eq!(
            s5_sleep_type(b"no sleep states here"),
            Err(AmlError::S5NotFound)
        );
        assert_eq!(
            s5_sleep_type(&[0x08, b'_', b'S', b'5', b'_', 0x12]),
            Err(AmlError::S5NotFound)
        );
        let local_var = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01, 0x60];
        assert_eq!(
            s5_sleep_type(&local_var),
            Err(AmlError::S5NotConstant {
                offset: 8,
                opcode: 0x60
            })
        );
    }
}
