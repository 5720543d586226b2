//! Rules as the control plane states them: one [`Rule`] per prefix.
//!
//! - FORWARD: a set of [`Target`]s. Each has a weight and a priority *tier*;
//!   the LOWER tier number is preferred. Only the best tier that has a target of
//!   non-zero weight is eligible; higher-numbered tiers are failover. Weight 0
//!   means drained: the target stays listed (and keeps its counters) but is
//!   never chosen, so a tier of only weight-0 targets counts as empty.
//!   Targets are identified by address; the same address twice in one rule is
//!   a [`TableError::DuplicateTarget`] even with different weight or tier.
//! - DEMUX: hand the set-up to a local listener (an opaque `u64` id).
//! - DELAY: hold the set-up and ask the control plane (see `DelayQueue`).
//! - DROP: discard.
//!
//! DEMUX, DELAY and DROP carry no targets; the type makes that impossible and
//! [`Rule::from_parts`] refuses it with a typed error for loosely typed input.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::error::TableError;
use super::prefix::ServicePrefix;

/// One FORWARD destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Where to send. IPv6 `flowinfo` is cleared when a rule is validated;
    /// the scope id is kept and is part of the target's identity.
    pub addr: SocketAddr,
    /// Relative share of flows within its tier; 0 = drained.
    pub weight: u32,
    /// Priority tier; lower is preferred.
    pub tier: u32,
}

impl Target {
    /// A target with the given weight and tier.
    pub fn new(addr: SocketAddr, weight: u32, tier: u32) -> Self {
        Target { addr, weight, tier }
    }
}

/// A [`Target`] packed for storage in a rule entry: 32 bytes instead of 40
/// (a `SocketAddr` is 32 bytes, most of it padding and IPv6 flowinfo, which
/// canonical targets never carry). Converts back to the equal `Target`:
/// `PackedTarget::new(t).target() == t` for every canonical `t` (flowinfo 0).
/// Its family byte leaves a niche, so an enum holding it needs no extra tag
/// (see `Action::ForwardOne`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedTarget {
    /// IPv6 octets, or IPv4 octets followed by zeros.
    ip: [u8; 16],
    /// IPv6 scope id (0 for IPv4).
    scope_id: u32,
    weight: u32,
    tier: u32,
    port: u16,
    family: Family,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl PackedTarget {
    /// Packs `t`; its IPv6 flowinfo is dropped (canonical targets have none).
    pub fn new(t: Target) -> Self {
        let mut ip = [0; 16];
        let (family, scope_id) = match t.addr {
            SocketAddr::V4(a) => {
                ip[..4].copy_from_slice(&a.ip().octets());
                (Family::V4, 0)
            }
            SocketAddr::V6(a) => {
                ip = a.ip().octets();
                (Family::V6, a.scope_id())
            }
        };
        PackedTarget {
            ip,
            scope_id,
            weight: t.weight,
            tier: t.tier,
            port: t.addr.port(),
            family,
        }
    }

    /// The address (IPv6 flowinfo 0).
    #[inline]
    pub fn addr(&self) -> SocketAddr {
        match self.family {
            Family::V4 => {
                let [a, b, c, d, ..] = self.ip;
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), self.port))
            }
            Family::V6 => SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(self.ip),
                self.port,
                0,
                self.scope_id,
            )),
        }
    }

    /// The target, unpacked.
    #[inline]
    pub fn target(&self) -> Target {
        Target::new(self.addr(), self.weight, self.tier)
    }
}

/// The four rule kinds, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Forward,
    Demux,
    Delay,
    Drop,
}

impl RuleKind {
    /// Parses `forward`, `demux`, `delay` or `drop` (ASCII case-insensitive).
    pub fn parse(name: &str) -> Result<Self, TableError> {
        match name.to_ascii_lowercase().as_str() {
            "forward" => Ok(RuleKind::Forward),
            "demux" => Ok(RuleKind::Demux),
            "delay" => Ok(RuleKind::Delay),
            "drop" => Ok(RuleKind::Drop),
            _ => Err(TableError::UnknownRuleKind(name.to_string())),
        }
    }

    /// Lower-case name, as accepted by [`RuleKind::parse`].
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::Forward => "forward",
            RuleKind::Demux => "demux",
            RuleKind::Delay => "delay",
            RuleKind::Drop => "drop",
        }
    }
}

/// What to do with a set-up whose service ID matches a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    Forward(Vec<Target>),
    Demux(u64),
    Delay,
    Drop,
}

impl Rule {
    /// Builds a rule from loosely typed parts (as a binding receives them),
    /// refusing targets or a listener where the kind carries none.
    pub fn from_parts(
        kind: RuleKind,
        targets: Vec<Target>,
        listener: Option<u64>,
    ) -> Result<Rule, TableError> {
        let name = kind.name();
        if kind != RuleKind::Forward && !targets.is_empty() {
            return Err(TableError::TargetsNotAllowed(name));
        }
        if kind != RuleKind::Demux && listener.is_some() {
            return Err(TableError::ListenerNotAllowed(name));
        }
        Ok(match kind {
            RuleKind::Forward => Rule::Forward(targets),
            RuleKind::Demux => Rule::Demux(listener.ok_or(TableError::MissingListener)?),
            RuleKind::Delay => Rule::Delay,
            RuleKind::Drop => Rule::Drop,
        })
    }

    /// The kind of this rule.
    pub fn kind(&self) -> RuleKind {
        match self {
            Rule::Forward(_) => RuleKind::Forward,
            Rule::Demux(_) => RuleKind::Demux,
            Rule::Delay => RuleKind::Delay,
            Rule::Drop => RuleKind::Drop,
        }
    }

    /// Puts the rule in canonical form, in place: FORWARD targets sorted by
    /// address with IPv6 flowinfo cleared. Refuses an empty FORWARD and
    /// duplicate addresses. Equal canonical forms mean equal behaviour.
    pub fn canonicalize(&mut self, prefix: &ServicePrefix) -> Result<(), TableError> {
        let Rule::Forward(targets) = self else {
            return Ok(());
        };
        if targets.is_empty() {
            return Err(TableError::NoTargets(*prefix));
        }
        for t in targets.iter_mut() {
            t.addr = canonical_addr(t.addr);
        }
        targets.sort_unstable_by_key(|t| t.addr);
        if let Some(w) = targets.windows(2).find(|w| w[0].addr == w[1].addr) {
            return Err(TableError::DuplicateTarget(*prefix, w[0].addr));
        }
        Ok(())
    }

    /// Appends a stable byte encoding of this (canonical) rule to `out`; used
    /// for the table's content digest.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Rule::Forward(targets) => {
                out.push(1);
                out.extend_from_slice(&(targets.len() as u64).to_be_bytes());
                for t in targets {
                    encode_addr(&t.addr, out);
                    out.extend_from_slice(&t.weight.to_be_bytes());
                    out.extend_from_slice(&t.tier.to_be_bytes());
                }
            }
            Rule::Demux(listener) => {
                out.push(2);
                out.extend_from_slice(&listener.to_be_bytes());
            }
            Rule::Delay => out.push(3),
            Rule::Drop => out.push(4),
        }
    }
}

/// `addr` with IPv6 flowinfo cleared (it does not name a different host).
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(mut v6) => {
            v6.set_flowinfo(0);
            SocketAddr::V6(v6)
        }
    }
}

/// Stable bytes naming an address: family tag, IP, port, then (IPv6) scope id.
/// Used for the digest and for the Maglev permutation of a target.
pub(crate) fn encode_addr(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.scope_id().to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_targets_round_trip_in_32_bytes() {
        assert_eq!(std::mem::size_of::<PackedTarget>(), 32);
        assert_eq!(std::mem::size_of::<Option<PackedTarget>>(), 32);
        let v6 = SocketAddrV6::new("fe80::1".parse().unwrap(), 7946, 0, 3);
        for (addr, weight, tier) in [
            (SocketAddr::from(([10, 1, 2, 3], 7946)), 100, 0),
            (SocketAddr::from(([0, 0, 0, 0], 0)), 0, u32::MAX),
            (SocketAddr::V6(v6), u32::MAX, 5),
            ("[::ffff:10.1.2.3]:1".parse().unwrap(), 1, 1),
        ] {
            let t = Target::new(addr, weight, tier);
            assert_eq!(PackedTarget::new(t).target(), t);
            assert_eq!(PackedTarget::new(t).addr(), addr);
        }
        let v4 = Target::new(SocketAddr::from(([10, 1, 2, 3], 1)), 1, 1);
        let mapped = Target::new("[::ffff:10.1.2.3]:1".parse().unwrap(), 1, 1);
        assert_ne!(PackedTarget::new(v4), PackedTarget::new(mapped));
    }
}
