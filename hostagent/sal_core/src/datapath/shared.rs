//! State shared by the data path's tasks and its API: the service table,
//! listeners, the flow registry, local addresses, held (DELAY) set-ups,
//! events, counters and the stop signal. Locks are held only for map
//! operations, never across an await.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::events::{lock, Event, EventQueue};
use super::policy;
use super::stats::Stats;
use super::DatapathConfig;
use crate::table::{DelayQueue, DelayVerdict, ServiceTable};
use crate::wire::AddrList;

/// A command for one flow's driver.
pub(crate) enum FlowCmd {
    /// A new connection whose first bytes (in `buf`) are an RSYN for this flow.
    IncomingPath {
        stream: TcpStream,
        buf: Vec<u8>,
    },
    /// Fault injection: reset the current connection (as if it broke).
    BreakPath,
    AddressRemoved(IpAddr),
    AddressAdded,
    /// A reconnection attempt of this flow succeeded.
    Reconnected(TcpStream),
}

/// Set-ups held by DELAY rules: the bounded queue and request → ticket.
#[derive(Default)]
pub(crate) struct Held {
    pub queue: DelayQueue<oneshot::Sender<bool>>,
    pub tickets: HashMap<u64, u64>,
}

pub(crate) struct Shared {
    pub cfg: DatapathConfig,
    pub table: ServiceTable,
    /// listener id → expose address (None: hand flows to the app).
    pub listeners: Mutex<HashMap<u64, Option<SocketAddr>>>,
    /// local flow id → its driver's command channel.
    pub flows: Mutex<HashMap<u64, mpsc::UnboundedSender<FlowCmd>>>,
    pub local_ips: Mutex<BTreeSet<IpAddr>>,
    /// Addresses the control plane said are gone (until re-added): no new
    /// path of a flow is accepted on them (see `listener::incoming`).
    pub removed_ips: Mutex<BTreeSet<IpAddr>>,
    pub sal_addrs: Vec<SocketAddr>,
    pub held: Mutex<Held>,
    pub events: EventQueue,
    pub stats: Stats,
    pub stop: watch::Sender<bool>,
    epoch: Instant,
}

impl Shared {
    pub(crate) fn new(cfg: DatapathConfig, sal_addrs: Vec<SocketAddr>) -> Self {
        let local: BTreeSet<IpAddr> = sal_addrs
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let held = Held {
            queue: DelayQueue::with_limit(cfg.delay_limit.max(1)).unwrap_or_default(),
            tickets: HashMap::new(),
        };
        Shared {
            events: EventQueue::new(cfg.event_queue),
            cfg,
            table: ServiceTable::new(),
            listeners: Mutex::new(HashMap::new()),
            flows: Mutex::new(HashMap::new()),
            local_ips: Mutex::new(local),
            removed_ips: Mutex::new(BTreeSet::new()),
            sal_addrs,
            held: Mutex::new(held),
            stats: Stats::default(),
            stop: watch::channel(false).0,
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the data path started (the flow machines' clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The instant of a flow-machine time.
    pub(crate) fn instant(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + std::time::Duration::from_millis(ms))
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub(crate) fn emit(&self, ev: Event) {
        self.events.push(ev);
    }

    /// Our SAL endpoints as an ADDRESS LIST (None if there are none).
    pub(crate) fn advertised(&self) -> Option<AddrList> {
        let ips = lock(&self.local_ips).clone();
        let eps = policy::advertised_endpoints(&self.sal_addrs, &ips);
        (!eps.is_empty())
            .then(|| AddrList::new(&eps).ok())
            .flatten()
    }

    /// A fresh local flow ID: random, non-zero, not in use.
    pub(crate) fn new_flow_id(&self) -> u64 {
        let flows = lock(&self.flows);
        loop {
            let id = random_u64();
            if id != 0 && !flows.contains_key(&id) {
                return id;
            }
        }
    }

    /// Sends `cmd` to flow `id`'s driver; false if there is no such flow.
    pub(crate) fn tell(&self, id: u64, cmd: FlowCmd) -> bool {
        lock(&self.flows)
            .get(&id)
            .is_some_and(|tx| tx.send(cmd).is_ok())
    }

    pub(crate) fn tell_all(&self, mk: impl Fn() -> FlowCmd) {
        for tx in lock(&self.flows).values() {
            let _ = tx.send(mk());
        }
    }

    /// Settles a held set-up; false if `request_id` is not held.
    pub(crate) fn settle(&self, request_id: u64, release: bool) -> bool {
        let mut held = lock(&self.held);
        let Some(ticket) = held.tickets.remove(&request_id) else {
            return false;
        };
        let verdict = if release {
            DelayVerdict::Release
        } else {
            DelayVerdict::Drop
        };
        if let Ok(Some(tx)) = held.queue.settle(ticket, verdict) {
            let _ = tx.send(true);
        }
        true
    }
}

/// 64 random bits from the OS CSPRNG (flow IDs, nonces, flow keys, jitter).
pub(crate) fn random_u64() -> u64 {
    // The OS generator failing is not recoverable for a security-relevant ID.
    getrandom::u64().expect("OS random number generator")
}
