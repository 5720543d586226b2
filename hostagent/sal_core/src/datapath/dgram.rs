//! Datagram flows (UDP semantics) over UDP between agents: the UDP
//! sockets, their receive loops, and the acceptor's SYN handling.
//!
//! - One UDP socket per SAL listening address, bound to the same
//!   `ip:port` as the TCP listener, so a FORWARD target serves both kinds.
//! - Every datagram is one SAL frame (`wire::decode_datagram`). A frame
//!   with a destination flow ID goes to that datagram flow's task (bounded
//!   queue: dropped and counted when full) — never by address. A SYN
//!   (destination 0) repeated by a known initiator goes to its flow; a new
//!   SYN is resolved in the table: DEMUX to a *datagram* listener accepts
//!   it (a seqpacket socketpair, `Accepted`), anything else is refused with
//!   an RST (`NoService`). Undecodable datagrams are dropped and counted.
//! - The flow machines run in message mode (`flow::Config::message()`);
//!   the per-flow task is [`super::dgram_flow`], set-up by name
//!   [`super::dgram_connect`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::dgram_flow;
use super::events::{lock, Event as DpEvent};
use super::seqpacket::seqpacket_pair;
use super::shared::{random_u64, Shared};
use super::stats::Stats;
use crate::flow::{self, SynInfo};
use crate::table::Verdict;
use crate::wire::{self, ctl, RstReason};

/// Frames queued per datagram flow before its task reads them (beyond:
/// dropped and counted, as a full socket buffer would).
pub(crate) const FLOW_QUEUE: usize = 512;
/// Largest datagram read (a SAL frame over UDP).
const RECV_BUF: usize = 65_536;

/// A datagram for one flow: its bytes, where it came from, which socket.
pub(crate) struct Inbound {
    pub bytes: Vec<u8>,
    pub from: SocketAddr,
    pub via: usize,
}

/// A command for one datagram flow's task.
pub(crate) enum DgramCmd {
    AddressRemoved(IpAddr),
    AddressAdded,
}

pub(crate) struct FlowTx {
    pub frames: mpsc::Sender<Inbound>,
    pub cmds: mpsc::UnboundedSender<DgramCmd>,
}

/// Datagram counters (names as in the contract).
#[derive(Debug, Default)]
pub(crate) struct DgramStats {
    /// Messages written to local apps.
    pub dgram_in: AtomicU64,
    /// Messages read from local apps and sent.
    pub dgram_out: AtomicU64,
    /// Messages dropped: app queue full, flow not open, send failed, flow
    /// queue full, oversized.
    pub dgram_dropped: AtomicU64,
    /// Of those, messages larger than one datagram can carry.
    pub dgram_oversized: AtomicU64,
    /// Datagrams that did not decode or matched no flow.
    pub dgram_stray: AtomicU64,
    /// Flows ended by the keep-alive (peer silent).
    pub dgram_keepalive_timeouts: AtomicU64,
}

/// State of the datagram half of a data path.
pub(crate) struct Dgram {
    pub sh: Arc<Shared>,
    pub socks: Vec<Arc<UdpSocket>>,
    pub local: Vec<SocketAddr>,
    pub flows: Mutex<HashMap<u64, FlowTx>>,
    /// (initiator flow, initiator nonce) → our flow, for repeated SYNs.
    pub syns: Mutex<HashMap<(u64, u64), u64>>,
    pub listeners: Mutex<HashSet<u64>>,
    pub cfg: flow::Config,
    /// Messages queued toward an app that does not read (beyond: dropped).
    pub app_queue: usize,
    pub stats: DgramStats,
}

impl Dgram {
    /// Binds one UDP socket per address (std sockets, non-blocking; call
    /// [`Dgram::start`] inside the runtime).
    pub(crate) fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<std::net::UdpSocket>> {
        addrs
            .iter()
            .map(|a| {
                let s = std::net::UdpSocket::bind(a)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect()
    }

    /// Registers the sockets with the runtime and spawns their receive loops.
    pub(crate) fn start(
        sh: Arc<Shared>,
        socks: Vec<std::net::UdpSocket>,
        cfg: flow::Config,
        app_queue: usize,
    ) -> std::io::Result<Arc<Dgram>> {
        let mut local = Vec::new();
        let mut tokio_socks = Vec::new();
        for s in socks {
            local.push(s.local_addr()?);
            tokio_socks.push(Arc::new(UdpSocket::from_std(s)?));
        }
        let dg = Arc::new(Dgram {
            sh,
            socks: tokio_socks,
            local,
            flows: Mutex::new(HashMap::new()),
            syns: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashSet::new()),
            cfg,
            app_queue: app_queue.max(1),
            stats: DgramStats::default(),
        });
        for via in 0..dg.socks.len() {
            tokio::spawn(recv_loop(dg.clone(), via));
        }
        Ok(dg)
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// A fresh flow ID unused by stream and datagram flows.
    pub(crate) fn new_flow_id(&self) -> u64 {
        loop {
            let id = self.sh.new_flow_id();
            if !lock(&self.flows).contains_key(&id) {
                return id;
            }
        }
    }

    /// Sends `cmd` to every datagram flow.
    pub(crate) fn tell_all(&self, mk: impl Fn() -> DgramCmd) {
        for tx in lock(&self.flows).values() {
            let _ = tx.cmds.send(mk());
        }
    }

    pub(crate) fn active(&self) -> usize {
        lock(&self.flows).len()
    }

    /// Counter snapshot, appended to the data path's `stats()`.
    pub(crate) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Relaxed);
        vec![
            ("dgram_in", g(&s.dgram_in)),
            ("dgram_out", g(&s.dgram_out)),
            ("dgram_dropped", g(&s.dgram_dropped)),
            ("dgram_oversized", g(&s.dgram_oversized)),
            ("dgram_stray", g(&s.dgram_stray)),
            ("dgram_keepalive_timeouts", g(&s.dgram_keepalive_timeouts)),
            ("dgram_flows_active", self.active() as u64),
        ]
    }

    /// The socket to reach `target` from: same family; loopback-bound only
    /// for loopback targets; not bound to `avoid`. `None` if there is none.
    pub(crate) fn pick_socket(&self, target: SocketAddr, avoid: Option<IpAddr>) -> Option<usize> {
        let fits = |a: &SocketAddr| {
            a.is_ipv4() == target.is_ipv4()
                && Some(a.ip()) != avoid
                && (a.ip().is_unspecified() || a.ip().is_loopback() == target.ip().is_loopback())
        };
        self.local.iter().position(fits)
    }

    /// Sends `bytes` to `to` on socket `via` without waiting (best effort).
    pub(crate) fn send_to(&self, via: usize, bytes: &[u8], to: SocketAddr) -> bool {
        self.socks
            .get(via)
            .is_some_and(|s| s.try_send_to(bytes, to).is_ok())
    }
}

async fn recv_loop(dg: Arc<Dgram>, via: usize) {
    let mut stop = dg.sh.stop.subscribe();
    let sock = dg.socks[via].clone();
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => route(&dg, &buf[..n], from, via),
                // ICMP errors surface here on Linux (ECONNREFUSED): ignore.
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Routes one received datagram (see the module documentation).
fn route(dg: &Arc<Dgram>, bytes: &[u8], from: SocketAddr, via: usize) {
    let Ok(frame) = wire::decode_datagram(bytes) else {
        Dgram::bump(&dg.stats.dgram_stray);
        return;
    };
    let dst = frame.header.dst_flow;
    let target = if dst != 0 {
        Some(dst)
    } else {
        let Some(syn) = SynInfo::parse(&frame) else {
            Dgram::bump(&dg.stats.dgram_stray);
            return;
        };
        let known = lock(&dg.syns).get(&(syn.peer_flow, syn.nonce)).copied();
        if known.is_none() {
            return on_syn(dg, syn, from, via);
        }
        known
    };
    let inbound = Inbound {
        bytes: bytes.to_vec(),
        from,
        via,
    };
    let sent = target.and_then(|id| {
        lock(&dg.flows)
            .get(&id)
            .map(|tx| tx.frames.try_send(inbound).is_ok())
    });
    match sent {
        Some(true) => {}
        Some(false) => Dgram::bump(&dg.stats.dgram_dropped),
        None => {
            let rsyn = frame
                .ext
                .control
                .is_some_and(|c| c.flags & ctl::RSYN != 0 && c.flags & ctl::ACK == 0);
            let c = if rsyn {
                &dg.sh.stats.rsyn_rejected
            } else {
                &dg.stats.dgram_stray
            };
            Stats::bump(c);
        }
    }
}

/// A new SYN: DEMUX to a datagram listener → accept; else refuse.
fn on_syn(dg: &Arc<Dgram>, syn: SynInfo, from: SocketAddr, via: usize) {
    let verdict = if dg.sh.stopping() {
        Verdict::Drop
    } else {
        dg.sh.table.resolve(&syn.service.bytes, random_u64(), &[])
    };
    let listener = match verdict {
        Verdict::Demux(l) if lock(&dg.listeners).contains(&l) => Some(l),
        _ => None,
    };
    let Some(listener_id) = listener else {
        return refuse(dg, &syn, RstReason::NoService, from, via);
    };
    let Ok((ours, theirs)) = seqpacket_pair() else {
        return refuse(dg, &syn, RstReason::Resources, from, via);
    };
    let id = dg.new_flow_id();
    let f = flow::accept_advertising(
        dg.cfg,
        &syn,
        id,
        random_u64(),
        dg.sh.advertised(),
        dg.sh.now_ms(),
    );
    let Some(rx) = dgram_flow::register(dg, id) else {
        return refuse(dg, &syn, RstReason::Resources, from, via);
    };
    lock(&dg.syns).insert((syn.peer_flow, syn.nonce), id);
    Stats::bump(&dg.sh.stats.flows_accepted);
    Stats::bump(&dg.sh.stats.flows_active);
    dg.sh.emit(DpEvent::Accepted {
        listener_id,
        flow_id: id,
        app_fd: theirs,
        peer: from,
    });
    dgram_flow::spawn(
        dg.clone(),
        f,
        ours,
        rx,
        from,
        via,
        Some((syn.peer_flow, syn.nonce)),
    );
}

fn refuse(dg: &Dgram, syn: &SynInfo, reason: RstReason, to: SocketAddr, via: usize) {
    Stats::bump(&dg.sh.stats.flows_refused);
    let mut out = Vec::new();
    if wire::encode(&flow::refuse(syn, reason).as_frame(), &mut out).is_ok() {
        dg.send_to(via, &out, to);
    }
}
