//! Little-endian fields of firmware structures (ACPI tables, PVH start info, MP tables),
//! read from byte slices with bounds checks: a short or corrupt table yields `None`, never a
//! panic.

/// The byte at `offset`.
pub fn u8_at(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

/// The little-endian `u16` at `offset`.
pub fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(array_at(bytes, offset)?))
}

/// The little-endian `u32` at `offset`.
pub fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(array_at(bytes, offset)?))
}

/// The little-endian `u64` at `offset`.
pub fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(array_at(bytes, offset)?))
}

/// `N` bytes at `offset`.
pub fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

/// True when the bytes sum to zero modulo 256: the checksum rule of ACPI and MP tables.
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_fields_and_refuses_short_input() {
        let bytes = [0x78, 0x56, 0x34, 0x12, 0xAA];
        assert_eq!(u8_at(&bytes, 4), Some(0xAA));
        assert_eq!(u16_at(&bytes, 0), Some(0x5678));
        assert_eq!(u32_at(&bytes, 0), Some(0x1234_5678));
        assert_eq!(u32_at(&bytes, 2), None);
        assert_eq!(u64_at(&bytes, 0), None);
        assert_eq!(u8_at(&bytes, usize::MAX), None);
        assert_eq!(array_at::<2>(&bytes, usize::MAX), None);
    }

    #[test]
    fn checksum_is_sum_modulo_256() {
        assert!(checksum_ok(&[0x10, 0xF0]));
        assert!(!checksum_ok(&[0x10, 0xEF]));
        assert!(checksum_ok(&[]));
    }
}
