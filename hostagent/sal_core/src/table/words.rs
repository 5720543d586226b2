//! 256-bit IDs as four big-endian `u64` words, and the arithmetic the LPM
//! index needs on them: masking to a length and the significant length.

use crate::service_id::ID_BYTES;

/// A 256-bit ID as four big-endian words, most significant first.
pub(crate) type Words = [u64; 4];

/// The 32 bytes of an ID as four big-endian words.
#[inline(always)]
pub(crate) fn words(bytes: &[u8; ID_BYTES]) -> Words {
    let word = |i: usize| u64::from_be_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    [word(0), word(1), word(2), word(3)]
}

/// `id` with every bit at position `len` (0..=256) or later cleared.
#[inline(always)]
pub(crate) fn masked(id: &Words, len: u32) -> Words {
    let keep = |i: u32| {
        let bits = len.saturating_sub(64 * i).min(64);
        id[i as usize] & u64::MAX.checked_shl(64 - bits).unwrap_or(0)
    };
    [keep(0), keep(1), keep(2), keep(3)]
}

/// `id` masked to the aligned length `32 * level` (level 0..=8), by table.
#[inline(always)]
pub(crate) fn masked_level(id: &Words, level: u32) -> Words {
    let m = &LEVEL_MASKS[level as usize];
    [id[0] & m[0], id[1] & m[1], id[2] & m[2], id[3] & m[3]]
}

/// The four word masks of each aligned length 32k.
const LEVEL_MASKS: [Words; 9] = {
    let mut masks = [[0u64; 4]; 9];
    let mut level = 0;
    while level < 9 {
        let mut w = 0;
        while w < 4 {
            let bits = 32 * level as i64 - 64 * w as i64;
            masks[level][w] = if bits >= 64 {
                u64::MAX
            } else if bits <= 0 {
                0
            } else {
                u64::MAX << (64 - bits)
            };
            w += 1;
        }
        level += 1;
    }
    masks
};

/// Significant length: bits up to and including the last 1 bit (256 minus
/// the trailing zeros of the 256-bit value); 0 for the all-zero ID.
#[inline(always)]
pub(crate) fn significant_bits(id: &Words) -> u32 {
    let nonzero = u32::from(id[0] != 0)
        | u32::from(id[1] != 0) << 1
        | u32::from(id[2] != 0) << 2
        | u32::from(id[3] != 0) << 3;
    if nonzero == 0 {
        return 0;
    }
    let last = 31 - nonzero.leading_zeros();
    64 * last + 64 - id[last as usize].trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_helpers() {
        let id = [u64::MAX; 4];
        assert_eq!(masked(&id, 0), [0; 4]);
        assert_eq!(masked(&id, 1), [1 << 63, 0, 0, 0]);
        assert_eq!(masked(&id, 64), [u64::MAX, 0, 0, 0]);
        assert_eq!(masked(&id, 65), [u64::MAX, 1 << 63, 0, 0]);
        assert_eq!(masked(&id, 256), id);
        for level in 0..=8 {
            assert_eq!(masked_level(&id, level), masked(&id, 32 * level));
        }
        assert_eq!(significant_bits(&[0; 4]), 0);
        assert_eq!(significant_bits(&[1 << 63, 0, 0, 0]), 1);
        assert_eq!(significant_bits(&[0, 0, 0, 1]), 256);
        assert_eq!(significant_bits(&[0, 1 << 32, 0, 0]), 96);
    }
}
