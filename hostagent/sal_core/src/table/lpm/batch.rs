//! Batched lookup (`rte_lpm_lookup_bulk`-style): many IDs at once, so their
//! cache misses overlap.
//!
//! A single lookup in a table larger than the cache waits on one or two
//! memory reads whose addresses depend on each other's results, and its
//! data-dependent branches keep the CPU from running ahead into the next
//! lookup. A batch is resolved in groups of [`BATCH`] IDs, stage by stage,
//! each stage issuing independent loads for the whole group before any is
//! used: (1) candidate levels and prefetch of the tags of the longest
//! candidate; (2) from the tags, the longest level whose fingerprint is
//! present, and prefetch of its entry; (3) verify that entry and finish with
//! the scalar logic (remainders, `best`). A fingerprint-only match falls
//! back to the scalar general path. Remainder probes (IDs under a node with
//! non-aligned children) are not prefetched: they cost a dependent miss.
//!
//! Measured, not kept: prefetching the tags of the 2, 3 or all candidate
//! levels (slower at 100k: more hashing, and the tags fit in L2 there; no
//! gain at 1M); no tag prefetch (1M much slower); also prefetching the
//! entry at the longest level's home slot in stage 1 (no gain).
//!
//! Exactness: stage 2 skips a level only on a definite miss (`probe` reached
//! the chain's end), so a verified entry is N of the module doc of `lpm`,
//! and no verified entry with every probe missing means N is the root.

use super::Lpm;
use crate::table::slots::hash;
use crate::table::words::{masked_level, significant_bits, words, Words};

/// IDs per group: enough independent misses to keep the core's miss
/// buffers busy. Measured with `cargo bench --bench table` on the 2-vCPU
/// dev VM: 8 is clearly slower, 16 and 32 are alike.
pub(crate) const BATCH: usize = 16;

impl Lpm {
    /// `out[i] = self.lookup(&ids[i])` for every i, with the memory reads of
    /// up to [`BATCH`] IDs overlapped. No allocation.
    ///
    /// # Panics
    /// If `out` and `ids` differ in length.
    pub(crate) fn lookup_batch(&self, ids: &[[u8; 32]], out: &mut [Option<u32>]) {
        assert_eq!(ids.len(), out.len(), "one output slot per ID");
        for (ids, out) in ids.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            self.lookup_group(ids, out);
        }
    }

    /// The three stages of the module doc over ≤ [`BATCH`] IDs.
    #[inline(always)]
    fn lookup_group(&self, ids: &[[u8; 32]], out: &mut [Option<u32>]) {
        let mut id = [[0u64; 4]; BATCH];
        let mut levels = [0u16; BATCH];
        let mut top = [0u64; BATCH];
        let mut found = [(0u32, 0usize); BATCH];
        for (i, bytes) in ids.iter().enumerate() {
            id[i] = words(bytes);
            levels[i] = self.candidates[significant_bits(&id[i]) as usize];
            if levels[i] != 0 {
                let k = 15 - levels[i].leading_zeros();
                top[i] = hash(&masked_level(&id[i], k), 32 * k);
                self.slots.prefetch_tags(top[i]);
            }
        }
        for i in 0..ids.len() {
            found[i] = self.longest_present(&id[i], levels[i], top[i]);
            self.slots.prefetch_entry(found[i].1);
        }
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.finish(&id[i], levels[i], found[i]);
        }
    }

    /// The longest level in `levels` whose fingerprint is present for `id`,
    /// and the position `probe` gave; `(0, spare)` if every probe missed.
    /// `top` is the hash of the longest level (stage 1).
    #[inline(always)]
    fn longest_present(&self, id: &Words, mut levels: u16, top: u64) -> (u32, usize) {
        let spare = self.slots.spare();
        let mut h = top;
        while levels != 0 {
            let k = 15 - levels.leading_zeros();
            levels &= !(1 << k);
            let at = self.slots.probe_hashed(h);
            if at != spare {
                return (k, at);
            }
            if levels != 0 {
                let next = 15 - levels.leading_zeros();
                h = hash(&masked_level(id, next), 32 * next);
            }
        }
        (0, spare)
    }

    /// Stage 3: the answer from `longest_present`'s result.
    #[inline(always)]
    fn finish(&self, id: &Words, levels: u16, (k, at): (u32, usize)) -> Option<u32> {
        if at == self.slots.spare() {
            return self.under_node(id, 0, self.root_rule, self.root_sub);
        }
        let node = self.slots.at(at);
        if node.len() != 32 * k || node.key != masked_level(id, k) {
            return self.lookup_general(id, levels);
        }
        self.under_node(id, 32 * k, node.best(), node.sub())
    }
}

#[cfg(test)]
mod tests {
    use super::super::NO_RULE;
    use super::*;
    use crate::table::prefix::ServicePrefix;

    #[test]
    fn batch_matches_single_lookups() {
        let p = |b: u8, len| ServicePrefix::new([b; 32], len).unwrap();
        let items = [(p(1, 32), 0), (p(1, 45), 1), (p(2, 64), 2), (p(0, 0), 3)];
        let lpm = Lpm::build(&items).unwrap();
        let ids: Vec<[u8; 32]> = (0..40u8).map(|i| [i % 4; 32]).collect();
        let mut out = vec![Some(NO_RULE); ids.len()];
        lpm.lookup_batch(&ids, &mut out);
        for (id, got) in ids.iter().zip(&out) {
            assert_eq!(*got, lpm.lookup(id));
        }
        lpm.lookup_batch(&[], &mut []);
    }
}
