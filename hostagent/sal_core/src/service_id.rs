//! Service IDs derived from service names, mirroring `registry/names.py`.
//!
//! A name is a sequence of DNS labels, most specific first
//! (`payments.prod.acme`). Its labels are reversed (`acme`, `prod`,
//! `payments`) and each becomes one 32-bit chunk: the first four bytes of
//! SHA-256 over `b"serval-sid-v1\0"` followed by the label. The chunks are laid
//! out from the most significant end of a 256-bit ID, zero-padded, so a
//! parent's ID is a prefix of its children's IDs and longest-prefix match on
//! IDs equals suffix match on names. A name has at most [`MAX_LABELS`] labels;
//! its prefix length is `32 * labels` bits.
//!
//! The test vectors in `tests/testdata/service_ids.json` are checked by both
//! this module and the Python registry.

use sha2::{Digest, Sha256};

/// Bytes in a service ID.
pub const ID_BYTES: usize = 32;
/// Bits contributed by each label.
pub const BITS_PER_LABEL: u32 = 32;
/// Most labels a name may have (`ID_BYTES * 8 / BITS_PER_LABEL`).
pub const MAX_LABELS: usize = 8;
/// Longest name, in characters, without a trailing dot (as in DNS).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label, in characters (as in DNS).
pub const MAX_LABEL_LEN: usize = 63;
/// Domain separation tag hashed before every label.
pub const LABEL_HASH_TAG: &[u8] = b"serval-sid-v1\0";

/// A 256-bit service ID plus the number of leading bits that are significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId {
    pub bytes: [u8; ID_BYTES],
    pub prefix_bits: u32,
}

impl ServiceId {
    /// Lower-case hex of all 32 bytes (64 characters).
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why a name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    TooManyLabels(usize),
    EmptyLabel,
    LabelTooLong(String),
    BadCharacter(String),
    HyphenAtEdge(String),
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => write!(f, "service name is empty"),
            NameError::TooLong(n) => write!(
                f,
                "service name is {n} characters, more than {MAX_NAME_LEN}"
            ),
            NameError::TooManyLabels(n) => {
                write!(f, "service name has {n} labels, more than {MAX_LABELS}")
            }
            NameError::EmptyLabel => write!(f, "service name has an empty label"),
            NameError::LabelTooLong(l) => {
                write!(f, "label {l:?} is longer than {MAX_LABEL_LEN} characters")
            }
            NameError::BadCharacter(l) => {
                write!(f, "label {l:?} may hold only letters, digits and '-'")
            }
            NameError::HyphenAtEdge(l) => write!(f, "label {l:?} starts or ends with '-'"),
        }
    }
}

impl std::error::Error for NameError {}

/// Lower-cases `name`, drops one trailing dot and checks the DNS label rules.
pub fn normalize(name: &str) -> Result<String, NameError> {
    let lowered = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if lowered.is_empty() {
        return Err(NameError::Empty);
    }
    if lowered.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(lowered.len()));
    }
    let labels: Vec<&str> = lowered.split('.').collect();
    if labels.len() > MAX_LABELS {
        return Err(NameError::TooManyLabels(labels.len()));
    }
    for label in &labels {
        check_label(label)?;
    }
    Ok(lowered)
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong(label.to_string()));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameError::BadCharacter(label.to_string()));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtEdge(label.to_string()));
    }
    Ok(())
}

/// Derives the service ID of `name` (normalising it first).
pub fn service_id(name: &str) -> Result<ServiceId, NameError> {
    let normalized = normalize(name)?;
    let mut bytes = [0u8; ID_BYTES];
    let labels: Vec<&str> = normalized.split('.').rev().collect();
    for (i, label) in labels.iter().enumerate() {
        let digest = Sha256::new()
            .chain_update(LABEL_HASH_TAG)
            .chain_update(label.as_bytes())
            .finalize();
        bytes[i * 4..i * 4 + 4].copy_from_slice(&digest[..4]);
    }
    Ok(ServiceId {
        bytes,
        prefix_bits: BITS_PER_LABEL * labels.len() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!("../../../tests/testdata/service_ids.json");

    #[test]
    fn matches_shared_test_vectors() {
        let doc: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        for case in doc["valid"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let id = service_id(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                normalize(name).unwrap(),
                case["normalized"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(id.to_hex(), case["id"].as_str().unwrap(), "{name}");
            assert_eq!(
                u64::from(id.prefix_bits),
                case["prefix_bits"].as_u64().unwrap(),
                "{name}"
            );
        }
        for case in doc["invalid"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            assert!(service_id(name).is_err(), "{name:?} should be refused");
        }
    }

    #[test]
    fn parent_id_is_prefix_of_child_id() {
        let parent = service_id("prod.acme").unwrap();
        let child = service_id("payments.prod.acme").unwrap();
        let n = (parent.prefix_bits / 8) as usize;
        assert_eq!(parent.bytes[..n], child.bytes[..n]);
        assert_eq!(child.prefix_bits, parent.prefix_bits + BITS_PER_LABEL);
    }

    #[test]
    fn case_and_trailing_dot_do_not_change_the_id() {
        assert_eq!(
            service_id("Payments.PROD.").unwrap(),
            service_id("payments.prod").unwrap()
        );
    }
}
