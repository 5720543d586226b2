//! One task per datagram flow: app seqpacket fd ↔ flow machine (message
//! mode) ↔ UDP.
//!
//! Contract:
//! - App → peer: each message read from the app is one DATA frame sent at
//!   once to the peer's current address (`dest`); oversized messages
//!   (> `Flow::max_message`, at most `flow::MAX_MESSAGE`) and messages
//!   while the flow cannot send are dropped and counted. App EOF → FIN.
//! - Peer → app: each delivered message is queued (at most
//!   `Dgram::app_queue` messages; beyond: dropped, counted) and written as
//!   one seqpacket message. Peer FIN → the app reads end of stream once
//!   the queue is written. Reset / close → the app's fd is closed.
//! - Migration: `dest` changes only on the machine's `PeerMigrated` (an
//!   authentic RSYN): to the address that RSYN came from. When the local
//!   address this flow sends from is removed, the flow moves to another
//!   socket if one fits (specific binds) and sends an RSYN — to `dest` and
//!   to every endpoint the peer advertised. RSYNs that fail authentication
//!   are counted in `rsyn_rejected`.
//! - Keep-alive and control retransmission are the machine's timers.
//!
//! Longer than most files: the driver's inputs, the order in which it
//! performs the machine's effects, and migration belong together.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::dgram::{DgramCmd, FlowTx, Inbound, FLOW_QUEUE};
use super::events::{lock, Event as DpEvent};
use super::policy;
use super::seqpacket::{AppMsgFd, AppRead};
use super::stats::Stats;
use super::Dgram;
use crate::flow::{Effect, Event, Flow, MessageError, State};
use crate::wire::{self, ctl, FrameType, OwnedFrame, RstReason};

/// The receiving ends of a registered flow's queues.
pub(crate) struct Rx {
    pub frames: mpsc::Receiver<Inbound>,
    pub cmds: mpsc::UnboundedReceiver<DgramCmd>,
}

/// Registers flow `id` for routing; None if the ID is taken.
pub(crate) fn register(dg: &Dgram, id: u64) -> Option<Rx> {
    let (ftx, frames) = mpsc::channel(FLOW_QUEUE);
    let (ctx, cmds) = mpsc::unbounded_channel();
    let mut flows = lock(&dg.flows);
    if flows.contains_key(&id) {
        return None;
    }
    flows.insert(
        id,
        FlowTx {
            frames: ftx,
            cmds: ctx,
        },
    );
    Some(Rx { frames, cmds })
}

/// Removes flow `id` (and its SYN index entry) from routing.
pub(crate) fn unregister(dg: &Dgram, id: u64, syn_key: Option<(u64, u64)>) {
    lock(&dg.flows).remove(&id);
    if let Some(k) = syn_key {
        lock(&dg.syns).remove(&k);
    }
}

/// Encodes `f` and sends it to `dest` on socket `via`; an RSYN also goes to
/// every other endpoint the peer advertised (`peer_addrs`).
pub(crate) fn send_frame(
    dg: &Dgram,
    f: &OwnedFrame,
    via: usize,
    dest: SocketAddr,
    peer_addrs: &[SocketAddr],
) {
    let mut out = Vec::new();
    if wire::encode(&f.as_frame(), &mut out).is_err() {
        return;
    }
    let sent = dg.send_to(via, &out, dest);
    if f.header.frame_type == FrameType::Data && !sent {
        Dgram::bump(&dg.stats.dgram_dropped);
    }
    let rsyn = f
        .ext
        .control
        .is_some_and(|c| c.flags & ctl::RSYN != 0 && c.flags & ctl::ACK == 0);
    if rsyn {
        let also = policy::reconnect_targets(Some(dest), peer_addrs);
        for a in also.into_iter().filter(|a| *a != dest) {
            let s = dg.pick_socket(a, None).unwrap_or(via);
            dg.send_to(s, &out, a);
        }
    }
}

/// Sends the machine's frames; returns the other effects (set-up only:
/// nothing there depends on their order).
pub(crate) fn send_frames(
    dg: &Dgram,
    flow: &mut Flow,
    via: usize,
    dest: SocketAddr,
) -> Vec<Effect> {
    let mut rest = Vec::new();
    for e in flow.take_effects() {
        match e {
            Effect::Send(f) => send_frame(dg, &f, via, dest, flow.peer_addrs()),
            e => rest.push(e),
        }
    }
    rest
}

/// Starts the task of an established (or SYN-RECEIVED) flow.
pub(crate) fn spawn(
    dg: Arc<Dgram>,
    flow: Flow,
    app_fd: OwnedFd,
    rx: Rx,
    dest: SocketAddr,
    via: usize,
    syn_key: Option<(u64, u64)>,
) {
    tokio::spawn(async move {
        let id = flow.local_flow();
        let reason = match AppMsgFd::new(app_fd) {
            Ok(app) => {
                let mut d = Driver::new(dg.clone(), flow, app, dest, via);
                d.run(rx).await
            }
            Err(e) => format!("reset: app fd: {e}"),
        };
        unregister(&dg, id, syn_key);
        dg.sh.stats.flow_ended();
        dg.sh.emit(DpEvent::FlowClosed {
            flow_id: id,
            reason,
        });
    });
}

struct Driver {
    dg: Arc<Dgram>,
    flow: Flow,
    app: Option<AppMsgFd>,
    dest: SocketAddr,
    via: usize,
    /// The local address we send from (None: unknown, e.g. no route).
    src: Option<IpAddr>,
    /// A move is owed: our address went away and no other one was usable.
    stranded: bool,
    to_app: VecDeque<Vec<u8>>,
    /// The message being written to the app (taken from `to_app`).
    app_out: Option<Vec<u8>>,
    app_eof: bool,
    peer_closed: bool,
    done: Option<String>,
}

impl Driver {
    fn new(dg: Arc<Dgram>, flow: Flow, app: AppMsgFd, dest: SocketAddr, via: usize) -> Self {
        let mut d = Driver {
            dg,
            flow,
            app: Some(app),
            dest,
            via,
            src: None,
            stranded: false,
            to_app: VecDeque::new(),
            app_out: None,
            app_eof: false,
            peer_closed: false,
            done: None,
        };
        d.src = d.source_ip();
        d
    }

    async fn run(&mut self, mut rx: Rx) -> String {
        let sh = self.dg.sh.clone();
        let mut stop = sh.stop.subscribe();
        let mut buf = vec![0u8; crate::flow::MAX_MESSAGE + 1];
        if sh.stopping() {
            self.flow.abort(RstReason::Aborted, sh.now_ms());
        }
        self.perform(None);
        while self.done.is_none() {
            let deadline = self.flow.next_deadline().map(|t| sh.instant(t));
            let can_send = matches!(self.flow.state(), State::Established | State::CloseWait);
            let read = !self.app_eof && can_send && self.app.is_some();
            if self.app_out.is_none() {
                self.app_out = self.to_app.pop_front();
            }
            tokio::select! {
                Some(inb) = rx.frames.recv() => self.on_inbound(inb),
                Some(cmd) = rx.cmds.recv() => self.on_cmd(cmd),
                r = recv_opt(self.app.as_ref(), &mut buf), if read => self.on_app(r, &buf),
                r = send_opt(self.app.as_ref(), self.app_out.as_deref()), if self.app_out.is_some() => {
                    self.app_out = None;
                    if r.is_ok() {
                        Dgram::bump(&self.dg.stats.dgram_in);
                    } else {
                        Dgram::bump(&self.dg.stats.dgram_dropped);
                    }
                    self.settle_app();
                }
                _ = sleep_opt(deadline), if deadline.is_some() => {
                    self.flow.tick(sh.now_ms());
                    self.perform(None);
                }
                _ = stop.changed() => {
                    self.flow.abort(RstReason::Aborted, sh.now_ms());
                    self.perform(None);
                }
            }
        }
        self.done.take().unwrap_or_default()
    }

    fn on_inbound(&mut self, inb: Inbound) {
        let Ok(frame) = wire::decode_datagram(&inb.bytes) else {
            return;
        };
        let before = self.flow.stats();
        self.flow.on_frame(&frame, self.dg.sh.now_ms());
        let after = self.flow.stats();
        let rsyn = frame.ext.control.is_some_and(|c| c.flags & ctl::RSYN != 0);
        if rsyn && (after.bad_mac > before.bad_mac || after.replayed > before.replayed) {
            Stats::bump(&self.dg.sh.stats.rsyn_rejected);
        }
        self.perform(Some((inb.from, inb.via)));
    }

    fn on_cmd(&mut self, cmd: DgramCmd) {
        match cmd {
            DgramCmd::AddressRemoved(ip) => {
                if self.src.map_or(true, |s| s == ip) {
                    self.move_away(Some(ip));
                }
            }
            DgramCmd::AddressAdded => {
                if self.stranded {
                    self.move_away(None);
                }
            }
        }
    }

    /// Our source address went away: switch socket if ours was bound to it,
    /// then resynchronise (RSYN) from wherever we now send.
    fn move_away(&mut self, removed: Option<IpAddr>) {
        let bound = self.dg.local.get(self.via).map(SocketAddr::ip);
        if removed.is_some() && bound == removed {
            match self.dg.pick_socket(self.dest, removed) {
                Some(v) => self.via = v,
                None => {
                    self.stranded = true;
                    return;
                }
            }
        }
        self.src = self.source_ip();
        self.stranded = self.src.is_none() || self.src == removed;
        self.flow.resync(self.dg.sh.now_ms());
        self.perform(None);
    }

    fn on_app(&mut self, r: std::io::Result<AppRead>, buf: &[u8]) {
        let now = self.dg.sh.now_ms();
        match r {
            Ok(AppRead::Message(n)) if n < buf.len() => {
                match self.flow.send_message(&buf[..n], now) {
                    Ok(()) => Dgram::bump(&self.dg.stats.dgram_out),
                    Err(e) => self.dropped(e),
                }
            }
            Ok(AppRead::Message(n)) => self.dropped(MessageError::TooLarge {
                len: n,
                max: self.flow.max_message(),
            }),
            Ok(AppRead::Empty) => {}
            Ok(AppRead::Eof) | Err(_) => {
                self.app_eof = true;
                self.flow.close(now);
            }
        }
        self.perform(None);
    }

    fn dropped(&self, e: MessageError) {
        Dgram::bump(&self.dg.stats.dgram_dropped);
        if matches!(e, MessageError::TooLarge { .. }) {
            Dgram::bump(&self.dg.stats.dgram_oversized);
        }
    }

    /// Performs the machine's effects in order (a `PeerMigrated` changes
    /// where the RSYN-ACK after it goes); `from`: where the input came from.
    fn perform(&mut self, from: Option<(SocketAddr, usize)>) {
        for e in self.flow.take_effects() {
            self.on_effect(e, from);
        }
        self.settle_app();
    }

    fn on_effect(&mut self, e: Effect, from: Option<(SocketAddr, usize)>) {
        match e {
            Effect::Send(f) => {
                send_frame(&self.dg, &f, self.via, self.dest, self.flow.peer_addrs());
            }
            Effect::Deliver(m) => {
                if self.to_app.len() < self.dg.app_queue && self.app.is_some() && !self.app_eof {
                    self.to_app.push_back(m);
                } else {
                    Dgram::bump(&self.dg.stats.dgram_dropped);
                }
            }
            Effect::Event(Event::PeerMigrated) => {
                if let Some((addr, via)) = from {
                    self.dest = addr;
                    self.via = via;
                    self.src = self.source_ip();
                }
                self.report_migration();
            }
            Effect::Event(Event::MigrationDone) => self.report_migration(),
            Effect::Event(Event::PeerClosed) => self.peer_closed = true,
            Effect::Event(Event::Closed) => self.done = Some("fin".into()),
            Effect::Event(Event::Reset { reason, remote }) => {
                if reason == RstReason::Timeout && !remote {
                    Dgram::bump(&self.dg.stats.dgram_keepalive_timeouts);
                }
                self.done = Some(policy::reset_text(reason, remote));
            }
            Effect::Event(Event::Established) => {}
        }
    }

    fn report_migration(&self) {
        Stats::bump(&self.dg.sh.stats.migrations);
        let local = self.dg.local.get(self.via).copied();
        let local = match (local, self.src) {
            (Some(l), Some(ip)) if l.ip().is_unspecified() => SocketAddr::new(ip, l.port()),
            (Some(l), _) => l,
            (None, _) => self.dest,
        };
        self.dg.sh.emit(DpEvent::Migrated {
            flow_id: self.flow.local_flow(),
            local,
            remote: self.dest,
        });
    }

    /// End of the peer's direction once its messages were written; the
    /// app's fd goes when the flow is done.
    fn settle_app(&mut self) {
        if self.done.is_some() {
            self.app = None;
            return;
        }
        if self.peer_closed && self.to_app.is_empty() && self.app_out.is_none() {
            if let Some(app) = &self.app {
                app.shutdown_write();
            }
        }
    }

    /// The address the kernel sends from on our socket toward `dest`.
    fn source_ip(&self) -> Option<IpAddr> {
        let bound = self.dg.local.get(self.via)?.ip();
        if !bound.is_unspecified() {
            return Some(bound);
        }
        super::conn::kernel_source(self.dest)
    }
}

async fn recv_opt(app: Option<&AppMsgFd>, buf: &mut [u8]) -> std::io::Result<AppRead> {
    match app {
        Some(a) => a.recv(buf).await,
        None => std::future::pending().await,
    }
}

async fn send_opt(app: Option<&AppMsgFd>, msg: Option<&[u8]>) -> std::io::Result<()> {
    match (app, msg) {
        (Some(a), Some(m)) => a.send(m).await,
        _ => Err(std::io::Error::other("no app")),
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
