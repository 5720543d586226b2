//! The host agent's compact registry mirror and its desired service table.
//! Pure: no I/O, no clock, no Python.
//!
//! Why in Rust: the agent follows the whole registry. As Python objects (one
//! `Instance` per registered instance, then one `Rule` + `Target` per
//! service per pass) 100,000 entries cost ~2 kB each; here a service with
//! one instance costs one 56-byte hash-table slot if its name has at most
//! four labels, else 72 bytes (~75 bytes per service at the table's load
//! with 100,000 services, see [`Services`]; no heap block when its
//! addresses and ID fit `INLINE` bytes) and the rules are built straight
//! into the service table (`ServiceTable::apply`), never as Python objects.
//!
//! What is kept: only *SAL-capable* instances (a SAL port), keyed by the
//! 256-bit ID of their service name and their instance ID, with what the
//! table needs: addresses, SAL port, weight and the base table tier (the
//! registry tier and the locality rank, computed once at `put` from the
//! agent's fixed [`Locality`]). A `put` of an instance that is not
//! SAL-capable removes it. Services are keyed by the ID bytes alone (two
//! names with equal ID bytes would need a SHA-256 label collision).
//!
//! [`Desired::rules`] has exactly the semantics of the Python reference
//! `hostagent/agent/desired.py::desired_rules` (its module docstring is the
//! contract; `tests/unit/test_agent_desired_native.py` checks both agree).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::service_id::{service_id, ServiceId, ID_BYTES};
use crate::table::{Rule, ServicePrefix, Target};

/// Locality ranks per registry tier (same zone, same region, elsewhere).
pub const LOCALITY_RANKS: u32 = 3;
/// Address ranks per locality rank (an instance's first address, its others).
pub const ADDRESS_RANKS: u32 = 2;
/// Cap of a merged target's weight (the registry's `MAX_WEIGHT` × 16).
pub const MAX_TARGET_WEIGHT: u32 = 10_000 * 16;

/// Where this agent runs; empty strings mean unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub zone: String,
    pub region: String,
}

impl Locality {
    /// 0 = same zone (and not a different region), 1 = same region, 2 =
    /// elsewhere or unknown (as `desired.locality_rank`).
    pub fn rank(&self, zone: &str, region: &str) -> u32 {
        let same_region = !self.region.is_empty() && region == self.region;
        let region_compatible = same_region || self.region.is_empty() || region.is_empty();
        if !self.zone.is_empty() && zone == self.zone && region_compatible {
            0
        } else if same_region {
            1
        } else {
            2
        }
    }
}

/// One registered instance as the registry streams it (borrowed input of `put`).
#[derive(Clone, Copy, Debug)]
pub struct InstanceInput<'a> {
    pub service: &'a str,
    pub instance_id: &'a str,
    pub addresses: &'a [IpAddr],
    /// `None` if the instance is not SAL-capable.
    pub sal_port: Option<u16>,
    pub weight: u32,
    pub tier: u32,
    pub zone: &'a str,
    pub region: &'a str,
}

/// A kept instance: 40 bytes, its addresses and ID packed (count, then per
/// address a family byte and 4 or 16 bytes, then the ID's UTF-8 bytes)
/// inline when they fit in `INLINE` bytes (one IPv4 address and an ID of
/// up to 16 bytes), else in one heap block.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Inst {
    packed: Packed,
    port: u16,
    /// Prefix length of the service's ID: a property of the service, kept
    /// in each of its instances (equal in all, set from the first) because
    /// it fits in what would be padding here, while a field beside the
    /// instances would add 8 bytes to every map slot.
    service_bits: u16,
    weight: u32,
    /// `(registry tier × LOCALITY_RANKS + locality rank) × ADDRESS_RANKS`.
    tier: u32,
}

/// Packed bytes kept inline (so `Packed` is 24 bytes, as large as its
/// `Heap` form plus a tag): saves the 32-byte allocation of most instances.
const INLINE: usize = 22;

/// The packed addresses and ID of an instance (unused inline bytes are zero,
/// so equal content compares equal).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Packed {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Packed {
    fn as_slice(&self) -> &[u8] {
        match self {
            Packed::Inline { len, bytes } => &bytes[..*len as usize],
            Packed::Heap(bytes) => bytes,
        }
    }
}

impl Inst {
    fn pack(addrs: &[IpAddr], id: &str) -> Packed {
        let mut out = Vec::with_capacity(1 + addrs.len() * 17 + id.len());
        out.push(addrs.len().min(255) as u8);
        for addr in addrs.iter().take(255) {
            match addr {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
        }
        out.extend_from_slice(id.as_bytes());
        if out.len() > INLINE {
            return Packed::Heap(out.into_boxed_slice());
        }
        let mut bytes = [0; INLINE];
        bytes[..out.len()].copy_from_slice(&out);
        Packed::Inline {
            len: out.len() as u8,
            bytes,
        }
    }

    /// The addresses, in registration order.
    fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let packed = self.packed.as_slice();
        let mut at = 1;
        (0..packed[0]).map(move |_| {
            let len = if packed[at] == 4 { 4 } else { 16 };
            let bytes = &packed[at + 1..at + 1 + len];
            at += 1 + len;
            match <[u8; 4]>::try_from(bytes) {
                Ok(v4) => IpAddr::from(v4),
                Err(_) => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
            }
        })
    }

    fn address_count(&self) -> u8 {
        self.packed.as_slice()[0]
    }

    fn id(&self) -> &[u8] {
        let packed = self.packed.as_slice();
        let mut at = 1;
        for _ in 0..packed[0] {
            at += 1 + if packed[at] == 4 { 4 } else { 16 };
        }
        &packed[at..]
    }
}

/// The instances of one service; one inline (the common case), or several.
/// 40 bytes (the `Many` tag lives in a niche of `Packed`'s tag).
#[derive(Debug)]
enum Insts {
    One(Inst),
    Many(Vec<Inst>),
}

impl Insts {
    fn as_slice(&self) -> &[Inst] {
        match self {
            Insts::One(inst) => std::slice::from_ref(inst),
            Insts::Many(insts) => insts,
        }
    }

    /// The prefix length of the service's ID (see `Inst::service_bits`).
    fn bits(&self) -> u32 {
        u32::from(self.as_slice()[0].service_bits)
    }

    fn position(&self, id: &[u8]) -> Option<usize> {
        self.as_slice().iter().position(|i| i.id() == id)
    }

    fn slot(&mut self, at: usize) -> &mut Inst {
        match self {
            Insts::One(inst) => inst,
            Insts::Many(insts) => &mut insts[at],
        }
    }

    fn push(&mut self, inst: Inst) {
        let many = match std::mem::replace(self, Insts::Many(Vec::new())) {
            Insts::One(first) => vec![first, inst],
            Insts::Many(mut insts) => {
                insts.push(inst);
                insts.shrink_to_fit();
                insts
            }
        };
        *self = Insts::Many(many);
    }

    /// Removes the instance at `at`; false if none is left.
    fn remove(&mut self, at: usize) -> bool {
        let Insts::Many(insts) = self else {
            return false;
        };
        insts.swap_remove(at);
        if insts.len() == 1 {
            *self = Insts::One(insts.pop().expect("one left"));
        } else {
            insts.shrink_to_fit();
        }
        true
    }
}

/// Bytes of a short service ID key (see [`Services`]).
const SHORT: usize = 16;

/// Services by ID, in two hash maps: an ID whose last 16 bytes are zero
/// (a name of up to four labels, 32 bits each: nearly every name) is kept
/// under its first 16 bytes, any other under all 32. The same content as
/// one map keyed by the 32 bytes, in 56-byte slots instead of 72 for the
/// short ones: one slot + a control byte per service at the maps' load
/// (7/16 just after growth, ≤ 7/8), ~75 B per service at 100,000 (131,072
/// slots; it was ~106 B with 80-byte slots).
#[derive(Default)]
struct Services {
    short: HashMap<[u8; SHORT], Insts>,
    long: HashMap<[u8; ID_BYTES], Insts>,
}

/// The first 16 bytes of `id` if the rest are zero.
fn short_key(id: &[u8; ID_BYTES]) -> Option<[u8; SHORT]> {
    let (head, tail) = id.split_at(SHORT);
    let head: [u8; SHORT] = head.try_into().expect("16 bytes");
    tail.iter().all(|b| *b == 0).then_some(head)
}

impl Services {
    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    fn contains(&self, id: &[u8; ID_BYTES]) -> bool {
        match short_key(id) {
            Some(key) => self.short.contains_key(&key),
            None => self.long.contains_key(id),
        }
    }

    fn get_mut(&mut self, id: &[u8; ID_BYTES]) -> Option<&mut Insts> {
        match short_key(id) {
            Some(key) => self.short.get_mut(&key),
            None => self.long.get_mut(id),
        }
    }

    fn insert(&mut self, id: [u8; ID_BYTES], insts: Insts) {
        match short_key(&id) {
            Some(key) => self.short.insert(key, insts),
            None => self.long.insert(id, insts),
        };
    }

    fn remove(&mut self, id: &[u8; ID_BYTES]) {
        match short_key(id) {
            Some(key) => self.short.remove(&key),
            None => self.long.remove(id),
        };
    }

    /// Every service: its full ID and instances, in no particular order.
    fn iter(&self) -> impl Iterator<Item = ([u8; ID_BYTES], &Insts)> {
        let short = self.short.iter().map(|(key, insts)| {
            let mut id = [0; ID_BYTES];
            id[..SHORT].copy_from_slice(key);
            (id, insts)
        });
        short.chain(self.long.iter().map(|(id, insts)| (*id, insts)))
    }
}

/// The mirror: SAL-capable instances by service ID. Not thread-safe by
/// itself (the binding wraps it in a mutex).
#[derive(Default)]
pub struct Desired {
    here: Locality,
    services: Services,
    instances: usize,
    /// Bumped by every effective change (a `put` of identical content, or a
    /// `remove` of an unknown instance, changes nothing).
    version: u64,
}

impl Desired {
    /// An empty mirror for an agent at `here`.
    pub fn new(here: Locality) -> Self {
        Desired {
            here,
            ..Desired::default()
        }
    }

    /// Instances kept (SAL-capable ones only).
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// Services with at least one kept instance.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Change counter: equal values mean equal content.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Forgets everything (a new snapshot follows).
    pub fn clear(&mut self) {
        if self.instances > 0 {
            self.version += 1;
        }
        self.services = Services::default();
        self.instances = 0;
    }

    /// Adds or replaces an instance; removes it if it is not SAL-capable.
    /// An invalid service name is ignored (the registry validates names).
    pub fn put(&mut self, input: &InstanceInput<'_>) {
        let Some(port) = input.sal_port.filter(|p| *p != 0) else {
            self.remove(input.service, input.instance_id);
            return;
        };
        let Ok(sid) = service_id(input.service) else {
            return;
        };
        let rank = self.here.rank(input.zone, input.region);
        let mut inst = Inst {
            packed: Inst::pack(input.addresses, input.instance_id),
            port,
            // An ID is at most 256 bits.
            service_bits: sid.prefix_bits.min(256) as u16,
            weight: input.weight,
            // The registry caps tiers at 15; saturate rather than wrap on anything else.
            tier: (input.tier.saturating_mul(LOCALITY_RANKS) + rank).saturating_mul(ADDRESS_RANKS),
        };
        match self.services.get_mut(&sid.bytes) {
            None => {
                self.services.insert(sid.bytes, Insts::One(inst));
                self.instances += 1;
            }
            Some(insts) => {
                // Equal ID bytes, so the same service: its first prefix length stays.
                inst.service_bits = insts.as_slice()[0].service_bits;
                match insts.position(input.instance_id.as_bytes()) {
                    Some(at) if *insts.slot(at) == inst => return,
                    Some(at) => *insts.slot(at) = inst,
                    None => {
                        insts.push(inst);
                        self.instances += 1;
                    }
                }
            }
        }
        self.version += 1;
    }

    /// Removes an instance; false if it was not kept.
    pub fn remove(&mut self, service: &str, instance_id: &str) -> bool {
        let Ok(sid) = service_id(service) else {
            return false;
        };
        let Some(insts) = self.services.get_mut(&sid.bytes) else {
            return false;
        };
        let Some(at) = insts.position(instance_id.as_bytes()) else {
            return false;
        };
        if !insts.remove(at) {
            self.services.remove(&sid.bytes);
        }
        self.instances -= 1;
        self.version += 1;
        true
    }

    /// True if a service whose ID bytes are `id` has a kept instance.
    pub fn knows(&self, id: &[u8; ID_BYTES]) -> bool {
        self.services.contains(id)
    }

    /// Number of rules [`Desired::rules`] would return (without building them).
    pub fn rule_count(&self, listeners: &[(u64, String)], exclude: &[String]) -> usize {
        let demux = demux_ids(listeners);
        let skipped = ids(exclude)
            .iter()
            .filter(|id| !demux.contains_key(*id))
            .chain(demux.keys())
            .filter(|id| self.services.contains(id))
            .count();
        self.services.len() - skipped + demux.len()
    }

    /// The whole desired table: one DEMUX rule per name with a local
    /// listener (the lowest listener id), one FORWARD rule per other kept
    /// service not in `exclude`, in prefix order. Invalid listener or
    /// exclude names are ignored (the caller validated them).
    pub fn rules(
        &self,
        listeners: &[(u64, String)],
        exclude: &[String],
    ) -> Vec<(ServicePrefix, Rule)> {
        let demux = demux_ids(listeners);
        let exclude = ids(exclude);
        let mut rules = Vec::with_capacity(self.services.len() + demux.len());
        for (bytes, (bits, listener)) in &demux {
            rules.push((prefix(bytes, *bits), Rule::Demux(*listener)));
        }
        for (bytes, insts) in self.services.iter() {
            if demux.contains_key(&bytes) || exclude.contains(&bytes) {
                continue;
            }
            rules.push((prefix(&bytes, insts.bits()), forward(insts.as_slice())));
        }
        rules.sort_unstable_by_key(|r| r.0);
        rules
    }
}

fn prefix(bytes: &[u8; ID_BYTES], bits: u32) -> ServicePrefix {
    ServicePrefix::new(*bytes, bits).expect("a service ID is a valid prefix")
}

/// Service ID bytes → (prefix bits, lowest listener id).
fn demux_ids(listeners: &[(u64, String)]) -> HashMap<[u8; ID_BYTES], (u32, u64)> {
    let mut demux = HashMap::new();
    for (listener, name) in listeners {
        let Ok(ServiceId { bytes, prefix_bits }) = service_id(name) else {
            continue;
        };
        let slot = demux.entry(bytes).or_insert((prefix_bits, *listener));
        slot.1 = slot.1.min(*listener);
    }
    demux
}

fn ids(names: &[String]) -> HashSet<[u8; ID_BYTES]> {
    names
        .iter()
        .filter_map(|n| service_id(n).ok())
        .map(|s| s.bytes)
        .collect()
}

/// The FORWARD rule of one service: every address of every instance is a
/// target; the same endpoint from several instances keeps the best tier and
/// the sum of that tier's weights (capped).
fn forward(insts: &[Inst]) -> Rule {
    if let [only] = insts {
        if only.address_count() == 1 {
            let addr = only.addrs().next().expect("one address");
            let target = Target::new(SocketAddr::new(addr, only.port), only.weight, only.tier);
            return Rule::Forward(vec![target]);
        }
    }
    let mut merged: BTreeMap<SocketAddr, (u32, u32)> = BTreeMap::new();
    for inst in insts {
        for (rank, addr) in inst.addrs().enumerate() {
            let tier = inst
                .tier
                .saturating_add((rank as u32).min(ADDRESS_RANKS - 1));
            let slot = merged
                .entry(SocketAddr::new(addr, inst.port))
                .or_insert((tier, 0));
            if tier < slot.0 {
                *slot = (tier, inst.weight);
            } else if tier == slot.0 {
                slot.1 = (slot.1 + inst.weight).min(MAX_TARGET_WEIGHT);
            }
        }
    }
    let targets = merged
        .into_iter()
        .map(|(addr, (tier, weight))| Target::new(addr, weight, tier))
        .collect();
    Rule::Forward(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn put(d: &mut Desired, service: &str, id: &str, addrs: &[IpAddr], weight: u32, zone: &str) {
        d.put(&InstanceInput {
            service,
            instance_id: id,
            addresses: addrs,
            sal_port: Some(7946),
            weight,
            tier: 0,
            zone,
            region: "",
        });
    }

    fn targets(d: &Desired, service: &str) -> Vec<Target> {
        let sid = service_id(service).unwrap();
        let p = ServicePrefix::new(sid.bytes, sid.prefix_bits).unwrap();
        match d.rules(&[], &[]).into_iter().find(|r| r.0 == p) {
            Some((_, Rule::Forward(t))) => t,
            other => panic!("no forward rule: {other:?}"),
        }
    }

    #[test]
    fn short_instances_pack_inline_long_ones_on_the_heap() {
        assert_eq!(std::mem::size_of::<Inst>(), 40);
        assert_eq!(std::mem::size_of::<Insts>(), 40);
        let short = Inst::pack(&[ip("10.0.0.1")], "i-1234567890abcd");
        assert!(matches!(short, Packed::Inline { len: 22, .. }));
        let long = Inst::pack(&[ip("10.0.0.1")], "i-1234567890abcde");
        assert!(matches!(long, Packed::Heap(_)));
        let six = Inst::pack(&[ip("fd00::1")], "i");
        assert!(matches!(six, Packed::Inline { len: 19, .. }));
        for packed in [short, long, six] {
            let inst = Inst {
                packed,
                port: 1,
                service_bits: 32,
                weight: 1,
                tier: 0,
            };
            assert_eq!(inst.addrs().count(), 1);
            assert!(inst.id().starts_with(b"i"));
        }
    }

    #[test]
    fn merges_endpoints_and_ranks_addresses() {
        let mut d = Desired::new(Locality {
            zone: "z1".into(),
            region: String::new(),
        });
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        put(&mut d, "pay.prod", "i1", &[a, b], 100, "z1");
        put(&mut d, "pay.prod", "i2", &[a], 50, "z1");
        let port = 7946;
        assert_eq!(
            targets(&d, "pay.prod"),
            vec![
                Target::new(SocketAddr::new(a, port), 150, 0),
                Target::new(SocketAddr::new(b, port), 100, 1),
            ]
        );
    }

    #[test]
    fn versions_count_effective_changes_only() {
        let mut d = Desired::new(Locality::default());
        let a = [ip("10.0.0.1")];
        put(&mut d, "a.b", "i1", &a, 100, "");
        let v = d.version();
        put(&mut d, "a.b", "i1", &a, 100, "");
        assert_eq!(d.version(), v);
        assert!(!d.remove("a.b", "nope"));
        assert_eq!(d.version(), v);
        assert!(d.remove("a.b", "i1"));
        assert_eq!((d.services(), d.instances()), (0, 0));
        assert!(d.version() > v);
    }

    #[test]
    fn many_instances_pack_ipv6_and_shrink_back_to_one() {
        let mut d = Desired::new(Locality::default());
        let (a, b) = (ip("fd00::1"), ip("10.0.0.2"));
        put(&mut d, "a.b", "i1", &[a, b], 10, "");
        put(&mut d, "a.b", "i2", &[b], 20, "");
        put(&mut d, "a.b", "i3", &[a], 30, "");
        assert_eq!(d.instances(), 3);
        let port = 7946;
        let far = 2 * ADDRESS_RANKS;
        assert_eq!(
            targets(&d, "a.b"),
            vec![
                Target::new(SocketAddr::new(b, port), 20, far),
                Target::new(SocketAddr::new(a, port), 40, far),
            ]
        );
        assert!(d.remove("a.b", "i2") && d.remove("a.b", "i3"));
        assert_eq!(
            targets(&d, "a.b"),
            vec![
                Target::new(SocketAddr::new(b, port), 10, far + 1),
                Target::new(SocketAddr::new(a, port), 10, far),
            ]
        );
        assert!(d.remove("a.b", "i1") && !d.knows(&service_id("a.b").unwrap().bytes));
    }

    #[test]
    fn long_and_short_names_are_kept_apart_and_alike() {
        let mut d = Desired::new(Locality::default());
        let a = [ip("10.0.0.1")];
        let names = ["a.b", "a.b.c.d", "a.b.c.d.e", "a.b.c.d.e.f.g.h"];
        for name in names {
            put(&mut d, name, "i1", &a, 100, "");
            assert!(d.knows(&service_id(name).unwrap().bytes));
            assert_eq!(targets(&d, name).len(), 1);
        }
        assert_eq!((d.services.short.len(), d.services.long.len()), (2, 2));
        let bits: Vec<u32> = d.rules(&[], &[]).iter().map(|r| r.0.len()).collect();
        assert_eq!(bits.len(), 4);
        assert!(bits.iter().all(|b| [64, 128, 160, 256].contains(b)));
        for name in names {
            assert!(d.remove(name, "i1"));
            assert!(!d.knows(&service_id(name).unwrap().bytes));
        }
        assert_eq!(d.services(), 0);
    }

    #[test]
    fn demux_replaces_forward_and_exclude_drops() {
        let mut d = Desired::new(Locality::default());
        let a = [ip("10.0.0.1")];
        put(&mut d, "a.b", "i1", &a, 100, "");
        put(&mut d, "agents.serval", "h", &a, 100, "");
        put(&mut d, "c.d", "i1", &a, 100, "");
        let listeners = vec![(7, "c.d".to_string()), (3, "c.d".to_string())];
        let exclude = vec!["agents.serval".to_string()];
        let rules = d.rules(&listeners, &exclude);
        assert_eq!(rules.len(), 2);
        assert_eq!(d.rule_count(&listeners, &exclude), 2);
        assert!(rules.iter().any(|r| r.1 == Rule::Demux(3)));
        let not_sal = InstanceInput {
            service: "a.b",
            instance_id: "i1",
            addresses: &a,
            sal_port: None,
            weight: 1,
            tier: 0,
            zone: "",
            region: "",
        };
        d.put(&not_sal);
        assert_eq!(d.rule_count(&listeners, &exclude), 1);
    }
}
