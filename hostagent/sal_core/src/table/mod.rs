//! The service table: longest-prefix match over 256-bit service IDs to
//! FORWARD / DEMUX / DELAY / DROP rules, with weighted, deterministic target
//! choice (Maglev) and lock-free reads of whole, versioned tables.
//!
//! Pure core: no sockets, no clock, no randomness. Data flow:
//! the control plane builds a [`TableConfig`] (generation + rules) and calls
//! [`ServiceTable::apply`]; the data path calls [`ServiceTable::resolve`] (or
//! [`Table::lookup`] on a [`ServiceTable::load`]ed version) per set-up and
//! acts on the [`Verdict`]; DELAY verdicts park the set-up in a
//! [`DelayQueue`] until the control plane settles it.
//!
//! Modules: `prefix` (IDs and prefixes), `rules` (config form), `lpm` (the
//! index, with its batched lookup in `lpm/batch.rs`), `slots` (its hash
//! table), `words` (256-bit arithmetic), `pages` (huge-page memory), `hrw`
//! and `maglev` (consistent hashing), `forward` (tiers and choice),
//! `counters`, `version` (one immutable table), `build` (config → version),
//! `handle` (atomic swap), `delay` (pending set-ups), `error`.

mod build;
mod counters;
mod delay;
mod error;
mod forward;
mod handle;
mod hrw;
mod lpm;
mod maglev;
mod pages;
mod prefix;
mod rules;
mod slots;
mod version;
mod words;

pub use build::TableConfig;
pub use counters::{Counter, CountersSnapshot, RuleCounts, TargetCounts};
pub use delay::{DelayQueue, DelayVerdict, DEFAULT_DELAY_LIMIT};
pub use error::TableError;
pub use forward::{ForwardSet, TargetState};
pub use handle::{ApplyOutcome, ApplySummary, ServiceTable};
pub use lpm::MAX_RULES;
pub use maglev::{flow_key_from_bytes, splitmix64, MAX_TARGETS};
pub use prefix::{ServicePrefix, ID_BITS};
pub use rules::{canonical_addr, PackedTarget, Rule, RuleKind, Target};
pub use version::{Action, RuleEntry, Table, Verdict, LOOKUP_BATCH};
