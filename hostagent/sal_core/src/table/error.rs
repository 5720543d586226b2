//! Typed errors of the service table. Every refusal of a configuration,
//! a prefix text or a delay-queue operation is one of these; nothing in the
//! table panics on bad input.

use std::fmt;
use std::net::SocketAddr;

use super::prefix::ServicePrefix;

/// Why the table refused an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// A prefix length above 256 bits.
    PrefixTooLong(u32),
    /// A prefix text that is not `hex[:bits]` (the message says why).
    BadPrefixText(String),
    /// The same prefix appears twice in one configuration.
    DuplicatePrefix(ServicePrefix),
    /// The same target address appears twice in one FORWARD rule.
    DuplicateTarget(ServicePrefix, SocketAddr),
    /// A FORWARD rule without any target.
    NoTargets(ServicePrefix),
    /// More targets in one tier of a FORWARD rule than a Maglev table can hold.
    TooManyTargets(ServicePrefix, usize),
    /// More rules than the index can address.
    TooManyRules(usize),
    /// An unknown rule kind name (see `RuleKind::parse`).
    UnknownRuleKind(String),
    /// Targets given for a rule kind that carries none (DEMUX, DELAY, DROP).
    TargetsNotAllowed(&'static str),
    /// A listener id given for a rule kind other than DEMUX.
    ListenerNotAllowed(&'static str),
    /// A DEMUX rule without a listener id.
    MissingListener,
    /// A configuration whose generation is not above the current one while its
    /// content differs.
    StaleGeneration { current: u64, offered: u64 },
    /// A delay queue built with a limit of zero.
    ZeroDelayLimit,
    /// The delay queue already holds its limit of pending set-ups.
    DelayQueueFull(usize),
    /// No pending set-up has this ticket (already settled, or never issued).
    UnknownTicket(u64),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TableError::*;
        match self {
            PrefixTooLong(bits) => write!(f, "prefix length {bits} is above 256 bits"),
            BadPrefixText(why) => write!(f, "bad prefix text: {why}"),
            DuplicatePrefix(p) => write!(f, "prefix {p} appears more than once"),
            DuplicateTarget(p, a) => write!(f, "target {a} appears twice in the rule of {p}"),
            NoTargets(p) => write!(f, "FORWARD rule of {p} has no targets"),
            TooManyTargets(p, n) => write!(
                f,
                "FORWARD rule of {p} has {n} targets in one tier, more than {}",
                super::maglev::MAX_TARGETS
            ),
            TooManyRules(n) => write!(f, "{n} rules are more than the table can index"),
            UnknownRuleKind(k) => {
                write!(f, "unknown rule kind {k:?} (forward, demux, delay, drop)")
            }
            TargetsNotAllowed(k) => write!(f, "a {k} rule carries no targets"),
            ListenerNotAllowed(k) => write!(f, "a {k} rule carries no listener"),
            MissingListener => write!(f, "a demux rule needs a listener id"),
            StaleGeneration { current, offered } => write!(
                f,
                "generation {offered} is not above the current {current} and its content differs"
            ),
            ZeroDelayLimit => write!(f, "a delay queue needs a limit of at least 1"),
            DelayQueueFull(limit) => write!(f, "delay queue is full ({limit} pending set-ups)"),
            UnknownTicket(t) => write!(f, "no pending set-up has ticket {t}"),
        }
    }
}

impl std::error::Error for TableError {}
