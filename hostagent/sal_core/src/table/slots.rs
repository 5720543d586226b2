//! The one open-addressing hash table behind the LPM index (the 256-bit
//! word arithmetic it uses is in `words`).
//!
//! Contract: a [`Slots`] table maps `(masked 256-bit key, length)` to one
//! [`Slot`]; it is filled once at build time (`entry`) and then only read
//! (`probe`, `find`), so lookups take `&self`, lock nothing and allocate
//! nothing. The tag array's capacity is a power of two ≥ 8/7 × the most
//! entries the builder announced (load ≤ ⅞, as SwissTable; it was ¾, which
//! doubled the index of a 100k-rule table for no lookup rate measurable on
//! the dev VM), probing is linear, and every
//! hit compares the full key and length, so hash collisions (of position or
//! fingerprint) cost probes, never wrong answers.
//!
//! The hash is a fixed multiply–xorshift mix of the four words and the length
//! (service IDs are SHA-256 output, so a light mix spreads them; zero-tailed
//! keys still mix because every word is multiplied and the high product bits
//! are folded down before the final multiply). Lookup keys come from packets
//! but never insert, so an adversary can only choose which chains to probe.

use super::pages::{Zeroable, ZeroedSlice};
use super::words::{masked, Words};

/// Rule index meaning "none"; the largest index a [`Slot`] holds.
pub(crate) const NO_RULE: u32 = (1 << 26) - 1;

/// One entry, 40 bytes (it was 48), kept in a dense array (no empty
/// entries): the key and four values packed in two words, read through the
/// accessors below. The packing rests on two facts: a rule entry's best
/// match is its own rule, so one 26-bit index is the `rule` of a rule entry
/// and the `best` of a marker (flagged); and only aligned entries have
/// remainders (`sub`), while only the others have a length that is not a
/// multiple of 32.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct Slot {
    /// The prefix, masked to `len()` bits.
    pub(crate) key: Words,
    /// Bits 0..26: the rule stored for exactly this prefix or, in a marker,
    /// the best matching rule (`NO_RULE` if none); bit 26: marker (no rule
    /// here); bits 27..31: `len / 32`.
    head: u32,
    /// Aligned entries (`len % 32 == 0`): `sub` (its bit 0 is never set).
    /// Others: `(len % 32) << 1 | 1`.
    tail: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Slot>() == 40);

/// The marker flag in `Slot::head`.
const MARKER: u32 = 1 << 26;
/// Where `len / 32` starts in `Slot::head`.
const LEVEL_SHIFT: u32 = 27;

// SAFETY: integers only, and the derived default is all zeros (the spare
// entry: length 0, which no key has).
unsafe impl Zeroable for Slot {}

impl Slot {
    /// A marker of `(key, len)` with no best rule and no remainders.
    fn new(key: Words, len: u32) -> Slot {
        let r = len % 32;
        Slot {
            key,
            head: NO_RULE | MARKER | (len / 32) << LEVEL_SHIFT,
            tail: if r == 0 { 0 } else { r << 1 | 1 },
        }
    }

    /// 1..=256 (`/0` is never stored: the index keeps the root apart); 0
    /// for the all-zero spare entry.
    #[inline(always)]
    pub(crate) fn len(&self) -> u32 {
        let r = if self.tail & 1 != 0 {
            self.tail >> 1
        } else {
            0
        };
        32 * (self.head >> LEVEL_SHIFT) + r
    }

    /// Rule stored for exactly this prefix, or `NO_RULE` (a marker).
    #[inline(always)]
    pub(crate) fn rule(&self) -> u32 {
        if self.head & MARKER != 0 {
            NO_RULE
        } else {
            self.head & NO_RULE
        }
    }

    /// Best matching rule of the key among prefixes of length ≤ `len()`.
    #[inline(always)]
    pub(crate) fn best(&self) -> u32 {
        self.head & NO_RULE
    }

    /// Aligned nodes: bit `r` (1..=31) set if a prefix of length `len + r`
    /// extends this key. Zero for other entries.
    #[inline(always)]
    pub(crate) fn sub(&self) -> u32 {
        if self.tail & 1 != 0 {
            0
        } else {
            self.tail
        }
    }

    /// Stores `rule` (< `NO_RULE`) for exactly this prefix; it is also the
    /// best match. Keeps `sub`.
    pub(crate) fn set_rule(&mut self, rule: u32) {
        debug_assert!(rule < NO_RULE);
        self.head = self.head & !(NO_RULE | MARKER) | rule;
    }

    /// Sets the best match of a marker.
    pub(crate) fn set_best(&mut self, best: u32) {
        debug_assert!(self.head & MARKER != 0 && best <= NO_RULE);
        self.head = self.head & !NO_RULE | best;
    }

    /// Notes a prefix of length `len() + r` (r in 1..=31) under this aligned
    /// entry.
    pub(crate) fn add_sub(&mut self, r: u32) {
        debug_assert!(self.tail & 1 == 0 && (1..32).contains(&r));
        self.tail |= 1 << r;
    }
}

/// An open-addressing table (linear probing, load ≤ ⅞) in two parallel
/// arrays, as in SwissTable: 2-byte tags (a non-zero 16-bit fingerprint of
/// the hash; 0 = empty) and the 40-byte entries at the same positions. A
/// probe scans tags (32 per cache line, 0.5 MiB per 256k slots, so they stay
/// in cache) and reads an entry only when the fingerprint agrees — so a
/// lookup usually reads one entry, and a failed probe none. `probe` checks
/// [`GROUP`] tags at once (SWAR), so its common case has no data-dependent
/// branch and the CPU can overlap consecutive lookups.
pub(crate) struct Slots {
    /// `cap + GROUP - 1` tags: the first `GROUP - 1` are mirrored at the end
    /// so a group read at any position needs no wrap-around.
    tags: ZeroedSlice<u16>,
    /// `cap + 1` entries; the last one is a spare that stays all-zero.
    entries: ZeroedSlice<Slot>,
    shift: u32,
    wrap: usize,
}

impl Slots {
    /// An empty table with room for `entries`. O(capacity) at worst (large
    /// arrays are fresh zero pages, huge pages if the kernel agrees).
    pub(crate) fn with_room(entries: usize) -> Slots {
        let cap = (entries + entries.div_ceil(7)).next_power_of_two().max(2);
        Slots {
            tags: ZeroedSlice::new(cap + GROUP - 1),
            entries: ZeroedSlice::new(cap + 1),
            shift: 64 - cap.trailing_zeros(),
            wrap: cap - 1,
        }
    }

    /// The entry of `(key, len)`, inserted as a marker (`rule` and `best` =
    /// `NO_RULE`, `sub` = 0) if absent. `len` must be 1..=256 and `key`
    /// masked; the caller must not insert more entries than announced (the
    /// probe would never end on a full table).
    pub(crate) fn entry(&mut self, key: &Words, len: u32) -> &mut Slot {
        let h = hash(key, len);
        let mut i = self.home(h);
        while self.tags[i] != 0 {
            let e = &self.entries[i];
            if self.tags[i] == fingerprint(h) && e.len() == len && e.key == *key {
                return &mut self.entries[i];
            }
            i = (i + 1) & self.wrap;
        }
        self.tags[i] = fingerprint(h);
        if i < GROUP - 1 {
            self.tags[self.wrap + 1 + i] = fingerprint(h);
        }
        self.entries[i] = Slot::new(*key, len);
        &mut self.entries[i]
    }

    /// The position of the first entry along the probe chain of `(key,
    /// len)` whose fingerprint agrees — almost always the entry of `(key,
    /// len)` if stored — or the spare position (an all-zero entry
    /// that matches no key, its `len()` being 0) when the chain ends first.
    /// Reads tags only; the caller verifies the entry ([`Slots::at`]), and on
    /// a fingerprint-only match falls back to [`Slots::find`]. Expected O(1).
    #[inline(always)]
    pub(crate) fn probe(&self, key: &Words, len: u32) -> usize {
        self.probe_hashed(hash(key, len))
    }

    /// `probe` given `h = hash(key, len)` (see [`hash`]).
    #[inline(always)]
    pub(crate) fn probe_hashed(&self, h: u64) -> usize {
        let home = self.home(h);
        let t = &self.tags[home..home + GROUP];
        let group =
            u64::from(t[0]) | u64::from(t[1]) << 16 | u64::from(t[2]) << 32 | u64::from(t[3]) << 48;
        // Lowest matching and lowest empty lane (64 if none); exact, see `zero_lanes`.
        let hit = zero_lanes(group ^ (u64::from(fingerprint(h)) * LANES)).trailing_zeros();
        let empty = zero_lanes(group).trailing_zeros();
        if hit == 64 && empty == 64 {
            return self.probe_beyond(h, home);
        }
        if hit < empty {
            (home + hit as usize / 16) & self.wrap
        } else {
            self.spare()
        }
    }

    /// The entry at a position returned by `probe`.
    #[inline(always)]
    pub(crate) fn at(&self, position: usize) -> &Slot {
        &self.entries[position]
    }

    /// The position of the spare all-zero entry.
    #[inline(always)]
    pub(crate) fn spare(&self) -> usize {
        self.entries.len() - 1
    }

    /// `probe` when the first group decides nothing (all its tags taken,
    /// none matching): a scalar scan onward from the group's end.
    #[inline(never)]
    fn probe_beyond(&self, h: u64, home: usize) -> usize {
        let mut i = (home + GROUP) & self.wrap;
        loop {
            match self.tags[i] {
                0 => return self.spare(),
                tag if tag == fingerprint(h) => return i,
                _ => i = (i + 1) & self.wrap,
            }
        }
    }

    /// The entry of the first `len` bits of `id`, if stored. Expected O(1).
    #[inline(always)]
    pub(crate) fn find(&self, id: &Words, len: u32) -> Option<&Slot> {
        let key = masked(id, len);
        let h = hash(&key, len);
        let mut i = self.home(h);
        loop {
            let tag = self.tags[i];
            if tag == 0 {
                return None;
            }
            let e = &self.entries[i];
            if tag == fingerprint(h) && e.len() == len && e.key == key {
                return Some(e);
            }
            i = (i + 1) & self.wrap;
        }
    }

    /// Asks the CPU to start loading the tags `probe_hashed(h)` reads first.
    #[inline(always)]
    pub(crate) fn prefetch_tags(&self, h: u64) {
        let home = self.home(h);
        prefetch(&self.tags[home..home + GROUP]);
    }

    /// Asks the CPU to start loading the entry at `position` (from `probe`).
    #[inline(always)]
    pub(crate) fn prefetch_entry(&self, position: usize) {
        prefetch(&self.entries[position]);
    }

    /// Bytes held by the table (tags and entries).
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.tags) + std::mem::size_of_val(&*self.entries)
    }

    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize & self.wrap
    }
}

/// Hints the CPU to load every cache line of `item` into L1 (a software
/// prefetch: no effect on results; a no-op on other architectures).
#[inline(always)]
fn prefetch<T: ?Sized>(item: &T) {
    let first = (item as *const T).cast::<i8>();
    let last = first.wrapping_add(std::mem::size_of_val(item).max(1) - 1);
    #[cfg(target_arch = "x86_64")]
    for line in [first, last] {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint: it never faults and has no
        // architectural effect, whatever the address (here: inside `item`).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (first, last);
}

/// Tags read at once by `probe`.
const GROUP: usize = 4;
/// 1 in each 16-bit lane.
const LANES: u64 = 0x0001_0001_0001_0001;

/// Bit 15 of each 16-bit lane of `x` that is zero. Lanes above the lowest
/// zero lane may be flagged spuriously (borrow), but the lowest flagged lane
/// is always a zero lane, which is all `probe` uses.
#[inline(always)]
fn zero_lanes(x: u64) -> u64 {
    x.wrapping_sub(LANES) & !x & (LANES << 15)
}

/// The non-zero 16-bit fingerprint stored in a tag (low hash bits; the home
/// position uses the high ones).
#[inline(always)]
fn fingerprint(hash: u64) -> u16 {
    hash as u16 | 1
}

/// Fixed mix of a masked key and its length (see the module doc).
#[inline(always)]
pub(crate) fn hash(key: &Words, len: u32) -> u64 {
    const K: [u64; 5] = [
        0x9E37_79B9_7F4A_7C15,
        0xC2B2_AE3D_27D4_EB4F,
        0x1656_67B1_9E37_79F9,
        0xD6E8_FEB8_6659_FD93,
        0xFF51_AFD7_ED55_8CCD,
    ];
    let h = (key[0] ^ u64::from(len)).wrapping_mul(K[0])
        ^ key[1].wrapping_mul(K[1])
        ^ key[2].wrapping_mul(K[2])
        ^ key[3].wrapping_mul(K[3]);
    (h ^ (h >> 29)).wrapping_mul(K[4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_full_key_and_length() {
        let mut t = Slots::with_room(3);
        let a = [7 << 60, 0, 0, 0]; // masked at 32 and 64 bits
        t.entry(&a, 32).set_rule(1);
        t.entry(&a, 64).set_rule(2);
        t.entry(&a, 32).add_sub(2); // same entry again
        assert_eq!(t.find(&a, 32).map(|s| (s.rule(), s.sub())), Some((1, 4)));
        assert_eq!(t.find(&a, 64).map(|s| s.rule()), Some(2));
        assert!(t.find(&a, 96).is_none());
        assert!(t.find(&[8 << 60, 0, 0, 0], 32).is_none());
        assert_eq!(t.probe(&[8 << 60, 0, 0, 0], 32), t.spare());
        assert_eq!(t.at(t.probe(&a, 64)).rule(), 2);
        assert_eq!(t.at(t.spare()).len(), 0);
    }

    #[test]
    fn packed_entries_keep_every_length_rule_best_and_remainder() {
        for len in 1..=256 {
            let mut s = Slot::new([0; 4], len);
            assert_eq!(
                (s.len(), s.rule(), s.best(), s.sub()),
                (len, NO_RULE, NO_RULE, 0)
            );
            s.set_best(NO_RULE - 1);
            assert_eq!((s.rule(), s.best()), (NO_RULE, NO_RULE - 1));
            if len % 32 == 0 {
                s.add_sub(1);
                s.add_sub(31);
            }
            s.set_rule(len * 1000);
            let sub = if len % 32 == 0 { 1 << 1 | 1 << 31 } else { 0 };
            assert_eq!(
                (s.len(), s.rule(), s.best(), s.sub()),
                (len, len * 1000, len * 1000, sub)
            );
        }
    }
}
