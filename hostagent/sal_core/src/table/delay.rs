//! The bounded queue of set-ups held by DELAY rules until the control plane
//! answers (Serval's delay queue, limit 1024 by default).
//!
//! Contract: the data path `push`es a held item (e.g. a SYN) with the service
//! ID it was resolving and gets a ticket; it tells the control plane about
//! the ID. The control plane's verdict comes back through `settle` (one
//! ticket) or `settle_service` (every item held for one ID):
//! [`DelayVerdict::Release`] hands the items back to re-resolve against the
//! (by then updated) table, [`DelayVerdict::Drop`] discards them. A full
//! queue refuses new items with [`TableError::DelayQueueFull`]; it never
//! evicts. The queue has no clock: expiring old items is the caller's job
//! (`oldest` returns the lowest ticket; tickets increase in push order).
//! Not thread-safe by itself: one owner (the data-path loop) holds it.

use std::collections::BTreeMap;

use super::error::TableError;
use crate::service_id::ID_BYTES;

/// Serval's default limit of pending set-ups.
pub const DEFAULT_DELAY_LIMIT: usize = 1024;

/// The control plane's answer for a held set-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayVerdict {
    /// Give the item back to be resolved again.
    Release,
    /// Discard the item.
    Drop,
}

/// Set-ups waiting for a control-plane verdict, bounded by `limit`.
#[derive(Debug)]
pub struct DelayQueue<T> {
    limit: usize,
    next_ticket: u64,
    pending: BTreeMap<u64, ([u8; ID_BYTES], T)>,
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        DelayQueue {
            limit: DEFAULT_DELAY_LIMIT,
            next_ticket: 0,
            pending: BTreeMap::new(),
        }
    }
}

impl<T> DelayQueue<T> {
    /// A queue holding at most `limit` items (at least 1).
    pub fn with_limit(limit: usize) -> Result<Self, TableError> {
        if limit == 0 {
            return Err(TableError::ZeroDelayLimit);
        }
        Ok(DelayQueue {
            limit,
            ..Self::default()
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Holds `item`, resolving `service_id`; returns its ticket, or
    /// `DelayQueueFull` (the item is not taken; the caller drops it).
    pub fn push(&mut self, service_id: [u8; ID_BYTES], item: T) -> Result<u64, TableError> {
        if self.pending.len() >= self.limit {
            return Err(TableError::DelayQueueFull(self.limit));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.insert(ticket, (service_id, item));
        Ok(ticket)
    }

    /// Applies `verdict` to one ticket: `Some(item)` on Release, `None` on
    /// Drop; `UnknownTicket` if it is not pending.
    pub fn settle(&mut self, ticket: u64, verdict: DelayVerdict) -> Result<Option<T>, TableError> {
        let (_, item) = self
            .pending
            .remove(&ticket)
            .ok_or(TableError::UnknownTicket(ticket))?;
        Ok(match verdict {
            DelayVerdict::Release => Some(item),
            DelayVerdict::Drop => None,
        })
    }

    /// Applies `verdict` to every item held for `service_id`; returns the
    /// released items in push order (empty on Drop) and how many were settled.
    pub fn settle_service(
        &mut self,
        service_id: &[u8; ID_BYTES],
        verdict: DelayVerdict,
    ) -> (Vec<T>, usize) {
        let tickets: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (id, _))| id == service_id)
            .map(|(t, _)| *t)
            .collect();
        let mut released = Vec::new();
        for ticket in &tickets {
            if let Some((_, item)) = self.pending.remove(ticket) {
                if verdict == DelayVerdict::Release {
                    released.push(item);
                }
            }
        }
        (released, tickets.len())
    }

    /// The oldest pending ticket and its service ID.
    pub fn oldest(&self) -> Option<(u64, &[u8; ID_BYTES])> {
        self.pending.iter().next().map(|(t, (id, _))| (*t, id))
    }
}
