//! The shared handle: the current table behind an atomic pointer.
//!
//! Concurrency contract: readers call [`ServiceTable::load`] (or the
//! `resolve` shortcut) from any thread without locks; they see either the
//! previous or the new version, never a mix, and an update never blocks them.
//! Writers (`apply`) are serialised by a mutex that readers never touch; a
//! table is built off to the side and then published with one atomic swap.
//! The old version is freed when its last reader drops it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::build::{build, prepare, TableConfig};
use super::counters::CountersSnapshot;
use super::error::TableError;
use super::version::{Table, Verdict};
use crate::service_id::ID_BYTES;

/// Whether an apply changed the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new version with different content was published.
    Applied,
    /// The content equals the current content; nothing was rebuilt.
    NoChange,
}

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplySummary {
    pub outcome: ApplyOutcome,
    /// The generation current after the apply.
    pub generation: u64,
    /// Prefixes new in this version.
    pub added: usize,
    /// Prefixes gone from this version.
    pub removed: usize,
    /// Prefixes kept with a different rule.
    pub changed: usize,
}

/// The service table of one host agent: lock-free reads, serialised applies.
pub struct ServiceTable {
    current: ArcSwap<Table>,
    writer: Mutex<()>,
}

impl Default for ServiceTable {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceTable {
    /// A handle holding the empty table of generation 0.
    pub fn new() -> Self {
        ServiceTable {
            current: ArcSwap::from_pointee(Table::empty()),
            writer: Mutex::new(()),
        }
    }

    /// The current version, cheaply, for a short read (do not hold it long:
    /// it pins the version). Lock-free.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Table>> {
        self.current.load()
    }

    /// The current version as an owned reference, for long reads.
    pub fn snapshot(&self) -> Arc<Table> {
        self.current.load_full()
    }

    /// Generation of the current version.
    pub fn generation(&self) -> u64 {
        self.current.load().generation()
    }

    /// [`Table::resolve`] on the current version.
    #[inline]
    pub fn resolve(&self, id: &[u8; ID_BYTES], flow_key: u64, exclude: &[SocketAddr]) -> Verdict {
        self.current.load().resolve(id, flow_key, exclude)
    }

    /// Counters of the current version.
    pub fn counters(&self) -> CountersSnapshot {
        self.current.load().counters()
    }

    /// Makes `config` the current table.
    ///
    /// - Invalid content → a typed error; the current table stays.
    /// - Content equal to the current content (by canonical digest, whatever
    ///   the order of rules or targets) → `NoChange`, nothing is rebuilt; if
    ///   `config.generation` is higher, the current generation is raised to it
    ///   (never lowered).
    /// - Different content with a generation not above the current one →
    ///   [`TableError::StaleGeneration`].
    /// - Otherwise a new version is built (see `build` for counter
    ///   carry-over) and swapped in atomically; `Applied` with the diff.
    pub fn apply(&self, config: TableConfig) -> Result<ApplySummary, TableError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let prepared = prepare(config.rules)?;
        let old = self.current.load_full();
        if prepared.digest == *old.digest() {
            return Ok(self.raise_generation(&old, config.generation));
        }
        if config.generation <= old.generation() {
            return Err(TableError::StaleGeneration {
                current: old.generation(),
                offered: config.generation,
            });
        }
        let (table, diff) = build(prepared, config.generation, &old)?;

        self.current.store(Arc::new(table));
        Ok(ApplySummary {
            outcome: ApplyOutcome::Applied,
            generation: config.generation,
            added: diff.added,
            removed: diff.removed,
            changed: diff.changed,
        })
    }

    /// `NoChange`, publishing the same content under `generation` if higher.
    fn raise_generation(&self, old: &Table, generation: u64) -> ApplySummary {
        let current = old.generation().max(generation);
        if current != old.generation() {
            let same = Table {
                generation: current,
                content: Arc::clone(&old.content),
            };
            self.current.store(Arc::new(same));
        }
        ApplySummary {
            outcome: ApplyOutcome::NoChange,
            generation: current,
            added: 0,
            removed: 0,
            changed: 0,
        }
    }
}
