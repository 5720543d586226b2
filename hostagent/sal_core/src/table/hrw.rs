//! Weighted rendezvous hashing (highest random weight; Thaler & Ravishankar
//! 1998, weighted form of Schindelhauer & Schomaker 2005) for small tiers.
//!
//! Contract:
//! - For a flow key `f` and each target `i` with weight `w_i > 0`, draw
//!   `u_i = U(splitmix64(splitmix64(f ^ SALT) ^ key_i))` in (0, 1] and score
//!   `E_i / w_i` with `E_i = -ln(u_i)` (an Exp(1) variable); the *lowest*
//!   score wins, ties to the lower index (canonical address order). Then
//!   `P(i wins) = w_i / Σ w` exactly (up to the 53-bit draw), and removing a
//!   target moves only the flows it owned (optimal minimal disruption) —
//!   better than Maglev, at O(n) per choice instead of O(1).
//! - `key_i` depends only on the target's address: 64-bit FNV-1a over
//!   `"serval-hrw-v1\0"` and the address encoding (family tag, IP, port,
//!   IPv6 scope id), finalised with splitmix64. `ln` is computed here with
//!   IEEE basic operations only (no libm), so every build and host agrees.
//! - Excluded targets are skipped; the best remaining one wins, so the same
//!   flow and exclusions always give the same target, spread by weight.
//!
//! Cost: ~10 ns per target per choice; used for tiers of 2..=8 targets (see
//! `forward`), where it also saves building a Maglev table.

use std::net::SocketAddr;

use super::maglev::splitmix64;

/// Domain-separation tag of the target key.
const KEY_TAG: &[u8] = b"serval-hrw-v1\0";
/// Mixed into the flow key so HRW draws differ from Maglev's slot hash.
const SALT: u64 = 0x6c62_272e_07bb_0142;

/// The fixed rendezvous key of a target address (see the module doc).
pub(crate) fn target_key(addr: &SocketAddr) -> u64 {
    let fnv = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    let h = KEY_TAG.iter().fold(0xcbf2_9ce4_8422_2325, fnv);
    let h = match addr {
        SocketAddr::V4(a) => [4u8]
            .iter()
            .chain(&a.ip().octets())
            .chain(&a.port().to_be_bytes())
            .fold(h, fnv),
        SocketAddr::V6(a) => [6u8]
            .iter()
            .chain(&a.ip().octets())
            .chain(&a.port().to_be_bytes())
            .chain(&a.scope_id().to_be_bytes())
            .fold(h, fnv),
    };
    splitmix64(h)
}

/// Index (into `targets`, given as `(key, weight > 0)`) of the winner for
/// `flow_key` among those `ok` accepts; `None` if it accepts none. O(n).
#[inline]
pub(crate) fn choose(
    flow_key: u64,
    targets: impl Iterator<Item = (u64, u32)>,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let flow = splitmix64(flow_key ^ SALT);
    let mut best: Option<(usize, f64, f64)> = None;
    for (i, (key, weight)) in targets.enumerate() {
        if !ok(i) {
            continue;
        }
        let (e, w) = (neg_ln_unit(splitmix64(flow ^ key)), f64::from(weight));
        // e / w < best_e / best_w, without dividing.
        if best.map_or(true, |(_, be, bw)| e * bw < be * w) {
            best = Some((i, e, w));
        }
    }
    best.map(|b| b.0)
}

/// `-ln(u)` for `u = (top 53 bits of h + 1) / 2^53` in (0, 1], to ~1e-12
/// relative error, with basic IEEE operations only (deterministic).
#[inline]
fn neg_ln_unit(h: u64) -> f64 {
    const LN2: f64 = std::f64::consts::LN_2;
    let u = ((h >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let bits = u.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52)); // [1, 2)
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        exp += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0))))));
    -(exp as f64 * LN2 + 2.0 * s * series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_matches_std_closely() {
        for h in [
            0u64,
            1 << 11,
            u64::MAX,
            0x1234_5678_9abc_def0,
            1 << 63,
            3 << 61,
        ] {
            let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let (ours, std) = (neg_ln_unit(h), -u.ln());
            assert!(
                (ours - std).abs() <= 1e-11 * std.max(1.0),
                "{h:#x}: {ours} vs {std}"
            );
        }
    }

    #[test]
    fn fixed_values_are_stable() {
        let a = SocketAddr::from(([10, 0, 0, 1], 80));
        assert_eq!(target_key(&a), target_key(&a));
        let t = [
            (target_key(&a), 1),
            (target_key(&"[::1]:80".parse().unwrap()), 1),
        ];
        let picks: Vec<_> = (0..8)
            .map(|f| choose(f, t.iter().copied(), |_| true))
            .collect();
        assert_eq!(
            picks,
            (0..8)
                .map(|f| choose(f, t.iter().copied(), |_| true))
                .collect::<Vec<_>>()
        );
        assert_eq!(choose(1, t.iter().copied(), |i| i == 1), Some(1));
        assert_eq!(choose(1, t.iter().copied(), |_| false), None);
    }
}
