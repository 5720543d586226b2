//! Longest-prefix match over 256-bit service IDs: a multibit trie with
//! 32-bit strides whose edges live in one open-addressing hash table.
//!
//! Why this shape: name-derived prefixes are whole labels, i.e. multiples of
//! 32 bits, so a 32-bit stride turns a 256-level binary trie into at most 8
//! levels, and a hash table keyed by `(parent node, 32-bit chunk)` stores each
//! edge in one 16-byte slot (key, child node, child info). The child's rule
//! index and flags sit in the same slot, so one level costs one hash and
//! (usually) one cache line. A slot's *position* comes from a hash of the
//! whole path of chunks from the root (not of the parent's node number), so
//! the positions of all levels are known from the ID alone and their cache
//! misses overlap; the stored key `(parent, chunk)` still makes every match
//! exact, so hash collisions cost probes, never wrong answers.
//!
//! A prefix whose length is not a multiple of 32 ends `r` bits (1..=31) into
//! the chunk below its aligned ancestor node. Those use controlled prefix
//! expansion onto four sub-levels, `L` = 8, 16, 24, 31 bits: a prefix with
//! `r` in (previous level, `L`] is stored as the `2^(L - r)` (≤ 128) values of
//! `L` bits it covers, the longest `r` winning where two overlap. The entries
//! live in a second hash table under `(node, 1 << L | top L bits of the
//! chunk)`; the node's own info word carries a 4-bit mask of the levels
//! present under it, so a lookup probes only those, longest first (≤ 4).
//!
//! Complexity: lookup is at most 8 edge probes (one per label present, plus
//! at most one failed probe), each expected O(1) at load factor ≤ 1/2, plus
//! ≤ 4 sub-level probes at each node with non-aligned prefixes. Build is O(n · 8) expected time
//! for aligned prefixes and O(2^(L - r)) (≤ 128) per non-aligned one; space
//! is 16 bytes × the next power of two ≥ 2 × entries for each of the two
//! tables. Lookups take `&self`, lock nothing and allocate nothing.
//!
//! The hash is a fixed multiply-rotate (Fibonacci hashing) of the path.
//! Lookup keys come from packets but never insert, so an adversary can only
//! choose which existing chains to probe.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::error::TableError;
use super::prefix::{chunk_of, ServicePrefix};

// Info word of a node: bits 0..26 rule index, bit 26 "has children",
// bits 27..31 one bit per sub-level present (see SUB_LEVELS).
/// Rule index meaning "none at this node".
const NO_RULE: u32 = (1 << 26) - 1;
/// Info flag: the node has child edges.
const HAS_CHILDREN: u32 = 1 << 26;
/// First bit of the sub-level mask.
const LEVEL_SHIFT: u32 = 27;
/// Most rules the index can address.
pub const MAX_RULES: usize = NO_RULE as usize;
/// Fibonacci hashing multiplier (2^64 / golden ratio).
const FIB: u64 = 0x9E37_79B9_7F4A_7C15;
/// Bit lengths of the sub-levels a non-aligned prefix is expanded onto.
const SUB_LEVELS: [u32; 4] = [8, 16, 24, 31];

/// One entry. Edge table: `key = parent << 32 | chunk`, `node` = child,
/// `info` = child's info word. Sub table: `key = node << 32 | code`,
/// `node` = 1, `info` = rule index.
/// `node == 0` marks an empty slot (node 0 is the root, never a child).
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Slot {
    key: u64,
    node: u32,
    info: u32,
}

/// A fixed-size open-addressing table with linear probing, load ≤ 1/2.
struct Slots {
    slots: Box<[Slot]>,
    shift: u32,
    wrap: usize,
}

impl Slots {
    /// A table holding `entries`, each `(path hash, slot)`.
    fn from_entries(entries: impl ExactSizeIterator<Item = (u64, Slot)>) -> Slots {
        let cap = (2 * entries.len()).next_power_of_two().max(2);
        let mut table = Slots {
            slots: vec![Slot::default(); cap].into_boxed_slice(),
            shift: 64 - cap.trailing_zeros(),
            wrap: cap - 1,
        };
        for (hash, entry) in entries {
            let mut i = table.home(hash);
            while table.slots[i].node != 0 {
                i = (i + 1) & table.wrap;
            }
            table.slots[i] = entry;
        }
        table
    }

    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    #[inline(always)]
    /// The slot holding `key`, probing from the home of `hash`.
    fn get(&self, hash: u64, key: u64) -> Option<&Slot> {
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.node == 0 {
                return None;
            }
            if slot.key == key {
                return Some(slot);
            }
            i = (i + 1) & self.wrap;
        }
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

/// The immutable LPM index; maps IDs to rule indices given at build time.
pub(crate) struct Lpm {
    edges: Slots,
    subs: Slots,
    root_info: u32,
    /// Non-aligned prefixes and their rules, sorted, for exact finds only.
    unaligned: Box<[(ServicePrefix, u32)]>,
}

impl Lpm {
    /// Builds the index of `(prefix, rule index)` pairs. Prefixes must be
    /// distinct (the caller checks); rule indices must be below [`MAX_RULES`].
    pub(crate) fn build(items: &[(ServicePrefix, u32)]) -> Result<Lpm, TableError> {
        if items.len() >= MAX_RULES {
            return Err(TableError::TooManyRules(items.len()));
        }
        let mut edges: HashMap<u64, u32, Fib> = HashMap::default();
        let mut infos: Vec<u32> = vec![NO_RULE]; // node 0 = root
        let mut keys: Vec<u64> = vec![0];
        let mut paths: Vec<u64> = vec![ROOT_PATH];
        // (node, code) → (r, rule, node's path hash); the longest r wins.
        let mut subs: HashMap<u64, (u32, u32, u64), Fib> = HashMap::default();
        let mut unaligned = Vec::new();
        for &(prefix, rule) in items {
            let full = (prefix.len() / 32) as usize;
            let mut node = 0u32;
            for level in 0..full {
                let key = join(node, prefix.chunk(level));
                let path = step(paths[node as usize], prefix.chunk(level));
                infos[node as usize] |= HAS_CHILDREN;
                node = *edges.entry(key).or_insert_with(|| {
                    infos.push(NO_RULE);
                    keys.push(key);
                    paths.push(path);
                    (infos.len() - 1) as u32
                });
            }
            match prefix.len() % 32 {
                0 => infos[node as usize] = (infos[node as usize] & !NO_RULE) | rule,
                rest => {
                    unaligned.push((prefix, rule));
                    let (index, level) = sub_level(rest);
                    infos[node as usize] |= 1 << (LEVEL_SHIFT + index);
                    let first = prefix.chunk(full) >> (32 - level);
                    for value in first..first + (1 << (level - rest)) {
                        let slot = subs.entry(join(node, (1 << level) | value)).or_default();
                        if slot.0 < rest {
                            *slot = (rest, rule, paths[node as usize]);
                        }
                    }
                }
            }
        }
        let edge_slots = (1..keys.len()).map(|n| {
            (
                paths[n],
                Slot {
                    key: keys[n],
                    node: n as u32,
                    info: infos[n],
                },
            )
        });
        let sub_slots = subs
            .into_iter()
            .map(|(key, (_, info, path))| (step(path, key as u32), Slot { key, node: 1, info }));
        Ok(Lpm {
            edges: Slots::from_entries(edge_slots),
            subs: Slots::from_entries(sub_slots),
            root_info: infos[0],
            unaligned: {
                unaligned.sort_unstable_by_key(|e| e.0);
                unaligned.into_boxed_slice()
            },
        })
    }

    /// Index of the rule of the longest prefix matching `id`, if any.
    #[inline]
    pub(crate) fn lookup(&self, id: &[u8; 32]) -> Option<u32> {
        let mut info = self.root_info;
        let mut best = info & NO_RULE;
        let (mut node, mut path) = (0u32, ROOT_PATH);
        for level in 0..8 {
            let chunk = chunk_of(id, level);
            if info >> LEVEL_SHIFT != 0 {
                if let Some(rule) = self.match_sub(node, path, info >> LEVEL_SHIFT, chunk) {
                    best = rule;
                }
            }
            if info & HAS_CHILDREN == 0 {
                break;
            }
            // The home slot depends on the ID only, not on the node found
            // one level up, so the CPU can fetch every level in parallel.
            path = step(path, chunk);
            let Some(slot) = self.edges.get(path, join(node, chunk)) else {
                break;
            };
            node = slot.node;
            info = slot.info;
            if info & NO_RULE != NO_RULE {
                best = info & NO_RULE;
            }
        }
        (best != NO_RULE).then_some(best)
    }

    /// Index of the rule stored for exactly `prefix`, if any.
    pub(crate) fn find_exact(&self, prefix: &ServicePrefix) -> Option<u32> {
        let full = (prefix.len() / 32) as usize;
        let mut info = self.root_info;
        if prefix.len() % 32 == 0 {
            let (mut node, mut path) = (0u32, ROOT_PATH);
            for level in 0..full {
                path = step(path, prefix.chunk(level));
                let slot = self.edges.get(path, join(node, prefix.chunk(level)))?;
                (node, info) = (slot.node, slot.info);
            }
        }
        match prefix.len() % 32 {
            0 => (info & NO_RULE != NO_RULE).then_some(info & NO_RULE),
            _ => {
                let i = self.unaligned.binary_search_by_key(prefix, |e| e.0).ok()?;
                Some(self.unaligned[i].1)
            }
        }
    }

    /// Bytes held by the index (both tables).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.edges.memory_bytes()
            + self.subs.memory_bytes()
            + std::mem::size_of_val(&*self.unaligned)
    }

    /// The longest non-aligned prefix under `node` matching `chunk`; `levels`
    /// is the node's sub-level mask.
    #[inline(never)]
    fn match_sub(&self, node: u32, path: u64, levels: u32, chunk: u32) -> Option<u32> {
        (0..SUB_LEVELS.len())
            .rev()
            .filter(|&i| levels & (1 << i) != 0)
            .find_map(|i| {
                let code = sub_code(chunk, SUB_LEVELS[i]);
                self.subs.get(step(path, code), join(node, code))
            })
            .map(|slot| slot.info)
    }
}

/// Path hash of the root.
const ROOT_PATH: u64 = 0x243F_6A88_85A3_08D3;

/// Path hash of a child: the parent's path hash extended by one 32-bit chunk.
/// It depends only on the ID's chunks, so every level's home slot is known
/// before the level above has been probed.
#[inline(always)]
fn step(path: u64, chunk: u32) -> u64 {
    (path.rotate_left(32) ^ u64::from(chunk)).wrapping_mul(FIB)
}

#[inline(always)]
fn join(high: u32, low: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}

/// `(index, bits)` of the sub-level a prefix ending `rest` (1..=31) bits
/// into a chunk expands onto.
fn sub_level(rest: u32) -> (u32, u32) {
    let index = SUB_LEVELS.iter().position(|&l| rest <= l).unwrap_or(3);
    (index as u32, SUB_LEVELS[index])
}

/// `1 << level | top level bits of chunk`: unique per (level, value), never 0.
#[inline(always)]
fn sub_code(chunk: u32, level: u32) -> u32 {
    (1 << level) | (chunk >> (32 - level))
}

/// Build-time hasher for the u64 keys of the temporary maps (Fibonacci
/// hashing; the maps are private and their keys come from the config).
type Fib = BuildHasherDefault<FibHasher>;

#[derive(Default)]
struct FibHasher(u64);

impl Hasher for FibHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIB);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = (self.0 ^ key).wrapping_mul(FIB);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}
