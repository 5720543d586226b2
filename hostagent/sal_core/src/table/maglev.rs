//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), with
//! fixed, specified hashes so every build and every host agrees.
//!
//! Contract:
//! - Input: the eligible targets of one tier, in canonical (address) order
//!   (`forward` uses Maglev only for tiers of more than 8; smaller tiers use
//!   rendezvous hashing, see `hrw`),
//!   each with a weight > 0. The same input always yields the same table.
//! - A target's permutation depends only on its own address: `offset` and
//!   `skip` are the first two big-endian u64s of SHA-256 over
//!   `"serval-maglev-v1\0"` followed by the address encoding (family tag,
//!   IP, port, IPv6 scope id), reduced mod `M` and mod `M - 1` (+1).
//!   Adding or removing one target therefore moves few other flows.
//! - Weights: targets take turns filling their next preferred empty slot;
//!   each pass a target earns `weight` credit and fills one slot per `w_max`
//!   credit, so slot shares are proportional to weight (every target gets
//!   at least one slot, so a tiny weight is rounded up to one slot).
//! - `M` is a prime fixed per size class — 509 for ≤ 8 targets, 2039 for
//!   ≤ 32, 32749 for ≤ 512, 131071 for ≤ 4096 — so every target owns ≥ 63
//!   slots (≥ 32 in the last class; slot shares within a few % of the
//!   weights) while the common table stays small (1 KiB) and quick to build. Minimal disruption holds while the target count
//!   stays within one class; crossing a class boundary changes `M` and
//!   reshuffles most flows of that tier.
//! - Flow keys map to slots by `splitmix64(key) mod M`.
//!
//! Build cost is O(M · passes); with equal weights that is O(M), with skewed
//! weights up to O(M · n). Lookup is O(1).

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use super::rules::encode_addr;

/// Most eligible targets one tier may hold.
pub const MAX_TARGETS: usize = 4096;
/// Domain-separation tag of the permutation hash.
const PERMUTATION_TAG: &[u8] = b"serval-maglev-v1\0";
/// Size classes: (most targets, prime table size `M`).
const SIZE_CLASSES: [(usize, usize); 4] =
    [(8, 509), (32, 2039), (512, 32749), (MAX_TARGETS, 131071)];

/// A Maglev lookup table: slot → index (into the input slice) of a target.
pub(crate) struct Maglev {
    slots: Box<[u16]>,
}

impl Maglev {
    /// Builds the table for `targets` (canonical order, weights > 0, at most
    /// [`MAX_TARGETS`], at least one).
    pub(crate) fn build(targets: &[(SocketAddr, u32)]) -> Maglev {
        let n = targets.len();
        let m = table_size(n);
        let perms: Vec<(usize, usize)> = targets.iter().map(|(a, _)| permutation(a, m)).collect();
        let w_max = targets.iter().map(|t| u64::from(t.1)).max().unwrap_or(1);
        let mut slots = vec![u16::MAX; m];
        let mut next: Vec<usize> = perms.iter().map(|p| p.0).collect();
        // Start each target one slot's worth ahead so that every target owns
        // at least one slot, however small its weight (a bias of ≤ 1 slot).
        let mut credit: Vec<u64> = targets.iter().map(|t| w_max - u64::from(t.1)).collect();
        let mut filled = 0;
        while filled < m {
            for i in 0..n {
                credit[i] += u64::from(targets[i].1);
                if credit[i] < w_max {
                    continue;
                }
                credit[i] -= w_max;
                while slots[next[i]] != u16::MAX {
                    next[i] += perms[i].1;
                    if next[i] >= m {
                        next[i] -= m;
                    }
                }
                slots[next[i]] = i as u16;
                filled += 1;
                if filled == m {
                    break;
                }
            }
        }
        Maglev {
            slots: slots.into_boxed_slice(),
        }
    }

    /// Number of slots (`M`).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The home slot of a flow key.
    #[inline]
    pub(crate) fn home(&self, flow_key: u64) -> usize {
        (splitmix64(flow_key) % self.slots.len() as u64) as usize
    }

    /// Target index stored in `slot` (taken mod `M`).
    #[inline]
    pub(crate) fn at(&self, slot: usize) -> usize {
        usize::from(self.slots[slot % self.slots.len()])
    }

    /// Bytes held by the table.
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

/// `M` for `n` targets.
fn table_size(n: usize) -> usize {
    SIZE_CLASSES
        .iter()
        .find(|c| n <= c.0)
        .map_or(SIZE_CLASSES[SIZE_CLASSES.len() - 1].1, |c| c.1)
}

/// `(offset, skip)` of a target in a table of `m` slots.
fn permutation(addr: &SocketAddr, m: usize) -> (usize, usize) {
    let mut key = Vec::with_capacity(40);
    key.extend_from_slice(PERMUTATION_TAG);
    encode_addr(addr, &mut key);
    let digest = Sha256::digest(&key);
    let word = |i: usize| u64::from_be_bytes(digest[i..i + 8].try_into().expect("8 bytes"));
    let offset = (word(0) % m as u64) as usize;
    let skip = (word(8) % (m as u64 - 1)) as usize + 1;
    (offset, skip)
}

/// The splitmix64 finalizer (Steele, Lea, Flood 2014): a fixed bijective mix.
#[inline]
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A flow key from bytes (e.g. a 5-tuple or a flow ID): 64-bit FNV-1a.
/// Fixed across builds and hosts; not meant to resist chosen inputs.
pub fn flow_key_from_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 80))
    }

    #[test]
    fn fills_every_slot_and_is_deterministic() {
        let t: Vec<_> = (0..7).map(|i| (addr(i), 1 + u32::from(i))).collect();
        let a = Maglev::build(&t);
        let b = Maglev::build(&t);
        assert_eq!(a.len(), 509);
        assert!(a.slots.iter().all(|&s| usize::from(s) < t.len()));
        assert_eq!(a.slots, b.slots);
    }

    #[test]
    fn fixed_hashes_are_stable() {
        assert_eq!(flow_key_from_bytes(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(flow_key_from_bytes(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }
}
