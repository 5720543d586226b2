//! Service prefixes: a 256-bit service ID plus a bit-granular length.
//!
//! Contract: a [`ServicePrefix`] is always canonical — every bit beyond its
//! length is zero. Constructors *mask* those bits rather than refuse them, so
//! two spellings that differ only beyond the length are the same prefix (and a
//! configuration holding both is refused as a duplicate). Prefix lengths run
//! from 0 (matches every ID) to 256 (matches one ID).

use std::fmt;

use super::error::TableError;
use crate::service_id::{ServiceId, ID_BYTES};

/// Bits in a service ID.
pub const ID_BITS: u32 = (ID_BYTES * 8) as u32;

/// A canonical service prefix (bits beyond `len()` are zero). Ordered by
/// ID bytes, then length (so a prefix sorts just before its extensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServicePrefix {
    bytes: [u8; ID_BYTES],
    bits: u16,
}

impl ServicePrefix {
    /// The prefix of `bits` leading bits of `bytes`; later bits are masked to
    /// zero. Refuses lengths above 256.
    pub fn new(bytes: [u8; ID_BYTES], bits: u32) -> Result<Self, TableError> {
        if bits > ID_BITS {
            return Err(TableError::PrefixTooLong(bits));
        }
        Ok(ServicePrefix {
            bytes: mask(bytes, bits),
            bits: bits as u16,
        })
    }

    /// The prefix `/0`, which matches every service ID.
    pub fn root() -> Self {
        ServicePrefix {
            bytes: [0; ID_BYTES],
            bits: 0,
        }
    }

    /// Parses `hex[:bits]`: up to 64 hex digits, left-aligned in the ID and
    /// zero-padded on the right. Without `:bits` the length is 4 bits per hex
    /// digit. `":0"` (or the empty string) is `/0`.
    pub fn parse(text: &str) -> Result<Self, TableError> {
        let (hex, bits) = match text.split_once(':') {
            Some((hex, bits)) => (hex, Some(parse_bits(bits)?)),
            None => (text, None),
        };
        let bytes = parse_hex(hex)?;
        Self::new(bytes, bits.unwrap_or(4 * hex.len() as u32))
    }

    /// Number of significant leading bits (0..=256).
    pub fn len(&self) -> u32 {
        u32::from(self.bits)
    }

    /// True for `/0`.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The 32 bytes, zero beyond the length.
    pub fn bytes(&self) -> &[u8; ID_BYTES] {
        &self.bytes
    }

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &[u8; ID_BYTES]) -> bool {
        mask(*id, self.len()) == self.bytes
    }
}

impl Ord for ServicePrefix {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let halves = |p: &Self| {
            let (hi, lo) = p.bytes.split_at(16);
            let word = |b: &[u8]| u128::from_be_bytes(b.try_into().expect("16 bytes"));
            (word(hi), word(lo), p.bits)
        };
        halves(self).cmp(&halves(other))
    }
}

impl PartialOrd for ServicePrefix {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl From<ServiceId> for ServicePrefix {
    /// A name-derived ID becomes the prefix of its `prefix_bits` (32 per
    /// label); an out-of-range `prefix_bits` is clamped to 256.
    fn from(id: ServiceId) -> Self {
        let bits = id.prefix_bits.min(ID_BITS);
        ServicePrefix {
            bytes: mask(id.bytes, bits),
            bits: bits as u16,
        }
    }
}

impl fmt::Display for ServicePrefix {
    /// `hex:bits` with just enough whole bytes of hex to cover the length;
    /// [`ServicePrefix::parse`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.len().div_ceil(8) as usize;
        for b in &self.bytes[..used] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ":{}", self.bits)
    }
}

/// `bytes` with every bit at position `bits` or later cleared.
fn mask(mut bytes: [u8; ID_BYTES], bits: u32) -> [u8; ID_BYTES] {
    let whole = (bits / 8) as usize;
    let rest = bits % 8;
    if whole < ID_BYTES {
        bytes[whole] &= !(0xffu8 >> rest);
        for b in &mut bytes[whole + 1..] {
            *b = 0;
        }
    }
    bytes
}

fn parse_bits(text: &str) -> Result<u32, TableError> {
    text.parse::<u32>()
        .map_err(|_| TableError::BadPrefixText(format!("length {text:?} is not a number")))
}

fn parse_hex(hex: &str) -> Result<[u8; ID_BYTES], TableError> {
    if hex.len() > 2 * ID_BYTES {
        return Err(TableError::BadPrefixText(format!(
            "{} hex digits, more than {}",
            hex.len(),
            2 * ID_BYTES
        )));
    }
    let mut bytes = [0u8; ID_BYTES];
    for (i, c) in hex.chars().enumerate() {
        let nibble = c
            .to_digit(16)
            .ok_or_else(|| TableError::BadPrefixText(format!("{c:?} is not a hex digit")))?;
        bytes[i / 2] |= (nibble as u8) << if i % 2 == 0 { 4 } else { 0 };
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let cases = [
            ("", 0, ":0"),
            (":0", 0, ":0"),
            ("ff", 8, "ff:8"),
            ("ff:1", 1, "80:1"),
            ("fe:7", 7, "fe:7"),
            ("ffffffffff:33", 33, "ffffffff80:33"),
            ("abc", 12, "abc0:12"),
        ];
        for (text, bits, shown) in cases {
            let p = ServicePrefix::parse(text).unwrap();
            assert_eq!(p.len(), bits, "{text}");
            assert_eq!(p.to_string(), shown, "{text}");
            assert_eq!(ServicePrefix::parse(shown).unwrap(), p, "{text}");
        }
    }

    #[test]
    fn parse_refusals_are_typed() {
        assert_eq!(
            ServicePrefix::parse("ff:257"),
            Err(TableError::PrefixTooLong(257))
        );
        assert!(matches!(
            ServicePrefix::parse("zz"),
            Err(TableError::BadPrefixText(_))
        ));
        assert!(matches!(
            ServicePrefix::parse("ff:x"),
            Err(TableError::BadPrefixText(_))
        ));
        assert!(matches!(
            ServicePrefix::parse(&"0".repeat(65)),
            Err(TableError::BadPrefixText(_))
        ));
    }

    #[test]
    fn bits_beyond_length_are_masked() {
        let p = ServicePrefix::new([0xff; 32], 255).unwrap();
        assert_eq!(p.bytes()[31], 0xfe);
        assert!(p.matches(&[0xff; 32]));
        let mut other = [0xff; 32];
        other[0] = 0x7f;
        assert!(!p.matches(&other));
        assert!(ServicePrefix::root().matches(&other));
        assert_eq!(
            ServicePrefix::new([0xff; 32], 256).unwrap().bytes(),
            &[0xff; 32]
        );
    }

    #[test]
    fn from_name_derived_id() {
        let id = crate::service_id::service_id("payments.prod.acme").unwrap();
        let p = ServicePrefix::from(id);
        assert_eq!(p.len(), 96);
        assert!(p.matches(&id.bytes));
    }
}
