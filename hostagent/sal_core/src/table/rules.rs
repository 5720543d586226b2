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

use std::net::SocketAddr;

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
