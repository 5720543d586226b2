//! Longest-prefix match over 256-bit service IDs by exact-match probing of
//! the prefix lengths present, in one open-addressing table (see `slots`).
//!
//! **Shape.** Every prefix is one entry keyed by (masked prefix, length).
//! Lengths that are multiples of 32 (*aligned*: whole labels, what
//! name-derived IDs use) are probed directly, longest first. A prefix of any
//! other length `32k + r` (r in 1..=31) is found through its *aligned parent*
//! `32k`: the parent's entry (a *marker* if no rule sits there) carries a
//! 31-bit mask `sub` of the remainders present under it, and every aligned
//! entry carries `best`, the best matching rule of its own key among prefixes
//! no longer than itself (Waldvogel et al.'s markers with precomputed best
//! match). The root (`/0` and the remainders under it) is kept apart.
//! Why not probe every distinct length: a table with non-aligned prefixes
//! easily holds dozens of distinct lengths (the benchmark's: ~90), and the
//! slack bound below cannot rule most of them out, so an ID would cost tens
//! of probes; through the parent it costs one probe per remainder actually
//! present under the matching node.
//!
//! **Slack bound.** Let sig(x) be the bits of x up to its last 1 bit. For an
//! aligned entry K/len, slack = len − sig(K) ≥ 0; `slack[k]` is the largest
//! slack at level k. If K/len matches an ID with sig(ID) = s < len, the ID's
//! bits beyond s are zero, so K's are too, so sig(K) ≤ s, so len ≤ s +
//! slack. Hence a level with 32k > s + slack[k] holds no match and is not
//! probed; `candidates[s]` is the precomputed set of levels worth probing.
//! IDs are hash output zero-padded after the last label, so slack is small
//! (trailing zeros of a random label) and an ID usually costs one probe (its
//! own service is registered) or two (it is deeper than the registered
//! prefix); the two longest candidates are probed together, so their cache
//! misses overlap.
//!
//! **Lookup, and why it is exact.** N = the longest aligned entry matching
//! the ID (the root if none). Probe N's remainders longest first; the first
//! hit is the answer, else N.best. Proof: let Q be the longest matching
//! prefix. If Q is aligned, |Q| ≤ |N|; no remainder of N matches (it would be
//! longer than N ≥ Q); Q is a prefix of N's key, so N.best = Q. If |Q| = 32k +
//! r, Q's parent (level k) is an entry matching the ID, so |N| ≥ 32k; if |N| =
//! 32k, Q is the longest remainder of N that matches; if |N| > 32k, N is no
//! rule (it would beat Q), its remainders cannot match (longer than Q) and Q
//! is a prefix of N's key, so N.best = Q. A miss means no entry matched.
//!
//! **Complexity.** Lookup: ≤ 8 aligned probes (usually 1–2) + one probe per
//! remainder under N (usually 0–1), each expected O(1) at load ≤ ⅞; no locks,
//! no allocation (`batch`: the same lookup over many IDs with their cache
//! misses overlapped). `find_exact`: one probe. Build: O(n) expected, plus one
//! bounded lookup per marker. Space: 42 bytes (40-byte entry + 2-byte tag)
//! × the next power of two ≥ 8/7 × (entries + markers), i.e. 48–96 bytes
//! per prefix, plus 514 bytes (it was 50 bytes, 57–115 per prefix, before
//! the entry's values were packed: see `slots::Slot`).

mod batch;

pub(crate) use batch::BATCH;

use super::error::TableError;
use super::prefix::ServicePrefix;
use super::slots::{Slots, NO_RULE};
use super::words::{masked, masked_level, significant_bits, words, Words};

/// Most rules the index can address.
pub const MAX_RULES: usize = NO_RULE as usize;
/// Levels: aligned lengths 32k for k in 1..=8 (k = 0 is the root).
const LEVELS: u32 = 8;

/// The immutable LPM index; maps IDs to rule indices given at build time.
pub(crate) struct Lpm {
    slots: Slots,
    /// Bit k set: level k is worth probing for an ID of that sig (0..=256).
    candidates: Box<[u16; 257]>,
    root_rule: u32,
    root_sub: u32,
}

impl Lpm {
    /// Builds the index of `(prefix, rule index)` pairs. Prefixes must be
    /// distinct (the caller checks); rule indices must be below [`MAX_RULES`].
    pub(crate) fn build(items: &[(ServicePrefix, u32)]) -> Result<Lpm, TableError> {
        if items.len() >= MAX_RULES {
            return Err(TableError::TooManyRules(items.len()));
        }
        let odd = items.iter().filter(|(p, _)| p.len() % 32 != 0).count();
        let mut lpm = Lpm {
            slots: Slots::with_room(items.len() + odd),
            candidates: Box::new([0; 257]),
            root_rule: NO_RULE,
            root_sub: 0,
        };
        let mut slack = [None::<u32>; LEVELS as usize + 1];
        let mut markers = Vec::new();
        for (prefix, rule) in items {
            lpm.insert(prefix, *rule, &mut slack, &mut markers);
        }
        for (s, set) in lpm.candidates.iter_mut().enumerate() {
            *set = candidate_levels(s as u32, &slack);
        }
        lpm.fill_markers(markers);
        Ok(lpm)
    }

    /// Index of the rule of the longest prefix matching `id`, if any.
    #[inline]
    pub(crate) fn lookup(&self, id: &[u8; 32]) -> Option<u32> {
        let id = words(id);
        let levels = self.candidates[significant_bits(&id) as usize];
        self.lookup_within(&id, levels)
    }

    /// Index of the rule stored for exactly `prefix`, if any. One probe.
    pub(crate) fn find_exact(&self, prefix: &ServicePrefix) -> Option<u32> {
        let rule = match prefix.len() {
            0 => self.root_rule,
            len => self.slots.find(&words(prefix.bytes()), len)?.rule(),
        };
        (rule != NO_RULE).then_some(rule)
    }

    /// Bytes held by the index.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.slots.memory_bytes() + std::mem::size_of_val(&*self.candidates)
    }

    /// The lookup restricted to the aligned levels in `levels` (bit k).
    ///
    /// Fast path (the common case, written to keep branches predictable so
    /// the CPU overlaps consecutive lookups): probe the tags of the two
    /// longest levels unconditionally, take the longer level whose
    /// fingerprint is present, and verify that one entry. Anything else (a
    /// fingerprint-only match, neither level present — the match may then be
    /// shorter) takes the general path, which is always correct.
    #[inline(always)]
    fn lookup_within(&self, id: &Words, levels: u16) -> Option<u32> {
        if levels == 0 {
            return self.lookup_general(id, levels);
        }
        let k1 = 15 - levels.leading_zeros();
        let below = levels & !(1 << k1);
        let k2 = if below == 0 {
            k1
        } else {
            15 - below.leading_zeros()
        };
        let (len1, len2) = (32 * k1, 32 * k2);
        let (key1, key2) = (masked_level(id, k1), masked_level(id, k2));
        // Decide from the tags (cache-resident) which level to take, then
        // read and verify that one entry; the verification almost always
        // passes, so its branch predicts well.
        let (at1, at2) = (self.slots.probe(&key1, len1), self.slots.probe(&key2, len2));
        let first = at1 != self.slots.spare();
        let (at, len, key) = if first {
            (at1, len1, key1)
        } else {
            (at2, len2, key2)
        };
        let node = self.slots.at(at);
        if node.len() != len || node.key != key {
            return self.lookup_general(id, levels);
        }
        self.under_node(id, len, node.best(), node.sub())
    }

    /// The answer given N (module doc): the longest remainder `base + r`
    /// (r in `sub`) matching `id`, else `best`.
    #[inline(always)]
    fn under_node(&self, id: &Words, base: u32, best: u32, sub: u32) -> Option<u32> {
        if sub != 0 {
            if let Some(rule) = self.match_remainder(id, base, sub) {
                return Some(rule);
            }
        }
        (best != NO_RULE).then_some(best)
    }

    /// The longest entry of length `base + r` (r in `sub`) matching `id`.
    #[inline(never)]
    fn match_remainder(&self, id: &Words, base: u32, mut sub: u32) -> Option<u32> {
        while sub != 0 {
            let r = 31 - sub.leading_zeros();
            sub &= !(1 << r);
            if let Some(entry) = self.slots.find(id, base + r) {
                return Some(entry.rule());
            }
        }
        None
    }

    /// The lookup restricted to `levels`, by the plain algorithm of the
    /// module doc (longest aligned entry, then its remainders).
    #[inline(never)]
    fn lookup_general(&self, id: &Words, mut levels: u16) -> Option<u32> {
        let (mut best, mut sub, mut base) = (self.root_rule, self.root_sub, 0);
        while levels != 0 {
            let k = 15 - levels.leading_zeros();
            levels &= !(1 << k);
            if let Some(node) = self.slots.find(id, 32 * k) {
                (best, sub, base) = (node.best(), node.sub(), 32 * k);
                break;
            }
        }
        self.under_node(id, base, best, sub)
    }

    /// Adds one prefix: aligned → its own entry; otherwise an entry for it
    /// and a remainder bit on its aligned parent (a marker if new).
    fn insert(
        &mut self,
        prefix: &ServicePrefix,
        rule: u32,
        slack: &mut [Option<u32>],
        markers: &mut Vec<(u32, Words)>,
    ) {
        let (key, len) = (words(prefix.bytes()), prefix.len());
        let (level, r) = (len / 32, len % 32);
        if len == 0 {
            self.root_rule = rule;
        } else if r == 0 {
            self.slots.entry(&key, len).set_rule(rule);
            note_slack(slack, level, len - significant_bits(&key));
        } else {
            self.slots.entry(&key, len).set_rule(rule);
            let parent = masked(&key, 32 * level);
            if level == 0 {
                self.root_sub |= 1 << r;
                return;
            }
            let node = self.slots.entry(&parent, 32 * level);
            if node.sub() == 0 && node.rule() == NO_RULE {
                markers.push((32 * level, parent));
            }
            node.add_sub(r);
            note_slack(slack, level, 32 * level - significant_bits(&parent));
        }
    }

    /// Sets `best` of every marker (aligned entry without a rule): the
    /// lookup of its key restricted to shorter levels. Shorter markers first,
    /// so the entries that lookup reads are already final.
    fn fill_markers(&mut self, mut markers: Vec<(u32, Words)>) {
        markers.sort_unstable_by_key(|m| m.0);
        for (len, key) in markers {
            if self
                .slots
                .find(&key, len)
                .is_some_and(|s| s.rule() != NO_RULE)
            {
                continue; // a rule arrived after the marker was noted
            }
            let shorter =
                self.candidates[significant_bits(&key) as usize] & ((1 << (len / 32)) - 1);
            let best = self.lookup_within(&key, shorter).unwrap_or(NO_RULE);
            self.slots.entry(&key, len).set_best(best);
        }
    }
}

/// Raises level `k`'s slack to `value`.
fn note_slack(slack: &mut [Option<u32>], k: u32, value: u32) {
    let s = &mut slack[k as usize];
    *s = Some(s.map_or(value, |old| old.max(value)));
}

/// Levels present whose length is within reach of an ID of sig `s`.
fn candidate_levels(s: u32, slack: &[Option<u32>]) -> u16 {
    (1..=LEVELS)
        .filter(|&k| slack[k as usize].is_some_and(|sl| 32 * k <= s + sl))
        .fold(0, |set, k| set | (1 << k))
}
