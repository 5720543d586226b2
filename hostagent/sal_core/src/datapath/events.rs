//! Data-path events and their bounded queue (pulled by the control plane).
//!
//! Contract: producers (data-path tasks) never block: [`EventQueue::push`]
//! drops the event when the queue is full and counts it; once a pull made
//! room, exactly one [`Event::Overflow`] carrying the number dropped since
//! the last one is queued (after every event that was queued before the
//! drops), so the control plane knows to resynchronise. A dropped
//! [`Event::Accepted`] closes its fd (the peer's flow then ends).
//! [`EventQueue::poll`] blocks the calling thread (never a runtime thread)
//! up to a timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Something the control plane should know; see `docs/agent-datapath.md`.
#[derive(Debug)]
pub enum Event {
    /// The flow is established; the app fd now carries its bytes.
    Connected {
        request_id: u64,
        flow_id: u64,
        target: SocketAddr,
    },
    /// No target could be reached before the deadline (the app fd is closed).
    ConnectFailed {
        request_id: u64,
        reason: String,
        tried: Vec<(SocketAddr, String)>,
    },
    /// A remote flow for a local listener; the receiver owns `app_fd`.
    Accepted {
        listener_id: u64,
        flow_id: u64,
        app_fd: OwnedFd,
        peer: SocketAddr,
    },
    /// A DELAY rule matched; answer with `settle_delay(request_id, ..)`.
    Delayed {
        request_id: u64,
        service_id: [u8; 32],
    },
    /// The flow moved to a new agent-to-agent connection.
    Migrated {
        flow_id: u64,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// A target refused or was unreachable while `request_id` was set up.
    TargetFailed {
        request_id: u64,
        target: SocketAddr,
        reason: String,
    },
    /// A flow ended: `fin`, `timeout` or `reset: <reason>`.
    FlowClosed { flow_id: u64, reason: String },
    /// This many events were dropped because the queue was full.
    Overflow { dropped: u64 },
}

/// The queue's state; pure (no locking, no clock), tested directly.
#[derive(Debug)]
pub(crate) struct QueueState {
    cap: usize,
    items: VecDeque<Event>,
    /// Dropped since the last `Overflow` was queued.
    pending_dropped: u64,
    total_dropped: u64,
}

impl QueueState {
    pub(crate) fn new(cap: usize) -> Self {
        QueueState {
            cap: cap.max(1),
            items: VecDeque::new(),
            pending_dropped: 0,
            total_dropped: 0,
        }
    }

    /// Queues `ev`, or drops (and counts) it when full. True if queued.
    pub(crate) fn push(&mut self, ev: Event) -> bool {
        self.flush_overflow();
        if self.items.len() >= self.cap {
            self.pending_dropped += 1;
            self.total_dropped += 1;
            return false;
        }
        self.items.push_back(ev);
        true
    }

    /// Takes up to `max` events, oldest first; then reports drops if room.
    pub(crate) fn pop(&mut self, max: usize) -> Vec<Event> {
        let n = max.min(self.items.len());
        let out = self.items.drain(..n).collect();
        self.flush_overflow();
        out
    }

    fn flush_overflow(&mut self) {
        if self.pending_dropped > 0 && self.items.len() < self.cap {
            let dropped = std::mem::take(&mut self.pending_dropped);
            self.items.push_back(Event::Overflow { dropped });
        }
    }

    pub(crate) fn total_dropped(&self) -> u64 {
        self.total_dropped
    }
}

/// Thread-safe wrapper: producers push, one or more pollers block.
#[derive(Debug)]
pub(crate) struct EventQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

impl EventQueue {
    pub(crate) fn new(cap: usize) -> Self {
        EventQueue {
            state: Mutex::new(QueueState::new(cap)),
            ready: Condvar::new(),
        }
    }

    pub(crate) fn push(&self, ev: Event) {
        let queued = lock(&self.state).push(ev);
        if queued {
            self.ready.notify_one();
        }
    }

    /// Up to `max` events; waits up to `timeout` while the queue is empty.
    pub(crate) fn poll(&self, max: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        while st.items.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return Vec::new();
            }
            st = match self.ready.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        st.pop(max)
    }

    pub(crate) fn total_dropped(&self) -> u64 {
        lock(&self.state).total_dropped()
    }
}

/// Locks, ignoring poisoning (a panicking task must not wedge the data path).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(i: u64) -> Event {
        Event::FlowClosed {
            flow_id: i,
            reason: "fin".into(),
        }
    }

    fn ids(evs: &[Event]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                Event::FlowClosed { flow_id, .. } => format!("c{flow_id}"),
                Event::Overflow { dropped } => format!("o{dropped}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn overflow_is_counted_and_reported_once_when_room() {
        let mut q = QueueState::new(3);
        for i in 0..6 {
            q.push(closed(i));
        }
        assert_eq!(q.total_dropped(), 3);
        // Pulling one makes room: the overflow follows the kept events.
        assert_eq!(ids(&q.pop(1)), ["c0"]);
        assert_eq!(ids(&q.pop(10)), ["c1", "c2", "o3"]);
        assert!(q.pop(10).is_empty());
        q.push(closed(9));
        assert_eq!(ids(&q.pop(10)), ["c9"]);
    }

    #[test]
    fn drops_while_the_overflow_waits_are_summed() {
        let mut q = QueueState::new(1);
        q.push(closed(0));
        q.push(closed(1));
        q.push(closed(2));
        assert_eq!(ids(&q.pop(1)), ["c0"]);
        // The overflow took the free slot; this one is dropped too.
        q.push(closed(3));
        assert_eq!(ids(&q.pop(5)), ["o2"]);
        assert_eq!(ids(&q.pop(5)), ["o1"]);
        assert_eq!(q.total_dropped(), 3);
    }

    #[test]
    fn poll_times_out_empty_and_wakes_on_push() {
        let q = std::sync::Arc::new(EventQueue::new(4));
        assert!(q.poll(10, Duration::from_millis(10)).is_empty());
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.poll(10, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        q.push(closed(7));
        assert_eq!(ids(&t.join().unwrap()), ["c7"]);
    }
}
