//! The per-flow driver: one task per flow owns its flow machine, its app
//! fd and its agent-to-agent connections, and moves bytes between them —
//! app fd ↔ `Flow` ↔ TCP, with no Python involved.
//!
//! This is the data path's heart and its longest file: the loop, the
//! effects it performs and the migration policy read together.
//!
//! Order per wake-up: one input (a command, frames from a connection, app
//! bytes read or written, the flow's timer, the stop signal) → the machine
//! → its effects in order (frames batched per connection, bytes queued for
//! the app, events). Back-pressure: the app is read only while the flow's
//! send buffer has room; delivered bytes count against the flow's receive
//! window until written to the app (`read_done`), so a slow app closes the
//! window and the peer stops sending.
//!
//! Paths: frames from every attached connection go to the machine (flows are
//! demultiplexed by flow ID, not by connection); frames are sent on the
//! *current* one. Only the current connection's end is a path loss:
//! `path_lost` freezes the flow and a reconnection task dials the peer's
//! SAL endpoints (initiator at once, acceptor after a wait; jittered
//! backoff) until the machine's resync timeout resets the flow. A new
//! connection becomes current and carries our RSYN; an incoming connection
//! whose first frame is an authentic RSYN (the listener routes it here by
//! destination flow ID) becomes current too, as `PeerMigrated` asks.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::appfd::AppFd;
use super::appfd::AppQueue;
use super::conn::{self, Conn, ConnEvent, Outgoing};
use super::events::{lock, Event as DpEvent};
use super::policy;
use super::shared::{random_u64, FlowCmd, Shared};
use super::stats::Stats;
use crate::flow::{Effect, Event, Flow, State};
use crate::wire::{self, Decoded, RstReason};

/// Most bytes per read of the app fd (then cut into frames of `max_payload`).
const READ_CHUNK: usize = 256 * 1024;
/// Attached connections kept per flow (current + spares from races).
const MAX_CONNS: usize = 3;

/// What woke the driver.
enum Wake {
    Cmd(Option<FlowCmd>),
    Conn(ConnEvent),
    AppRead(io::Result<usize>),
    AppWrote(io::Result<usize>),
    Timer,
    Stop,
}

/// Starts the driver of an accepted or established flow: registers it
/// under its local flow ID (so RSYNs find it) and spawns its task.
/// `known_peer`: the SAL endpoint the flow was set up to (initiator).
/// `greeting`: written to the app before any delivered byte (not counted
/// as flow data: neither `bytes_in` nor the receive window).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    sh: Arc<Shared>,
    flow: Flow,
    initiator: bool,
    app_fd: OwnedFd,
    stream: TcpStream,
    leftover: Vec<u8>,
    known_peer: Option<SocketAddr>,
    greeting: Vec<u8>,
) {
    let id = flow.local_flow();
    let greeting_left = greeting.len();
    let mut app_out = AppQueue::default();
    app_out.push(greeting);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (conn_tx, conn_rx) = mpsc::channel(64);
    lock(&sh.flows).insert(id, cmd_tx.clone());
    let d = Driver {
        sh,
        id,
        flow,
        initiator,
        app: None,
        app_eof: false,
        close_when_established: false,
        app_out,
        greeting_left,
        peer_closed: false,
        app_wr_shut: false,
        conns: Vec::new(),
        current: None,
        next_conn: 0,
        conn_tx,
        conn_rx,
        cmd_tx,
        cmd_rx,
        known_peer,
        reconnect: None,
        reported: true,
        ended: false,
        stopped: false,
        draining: false,
    };
    tokio::spawn(d.run(app_fd, stream, leftover));
}

struct Driver {
    sh: Arc<Shared>,
    id: u64,
    flow: Flow,
    initiator: bool,
    app: Option<AppFd>,
    app_eof: bool,
    /// The app's EOF arrived before set-up completed (see `handle`).
    close_when_established: bool,
    /// Delivered bytes not yet written to the app.
    app_out: AppQueue,
    /// Bytes of the greeting (the front of `app_out`) not yet written.
    greeting_left: usize,
    peer_closed: bool,
    app_wr_shut: bool,
    conns: Vec<Conn>,
    current: Option<u64>,
    next_conn: u64,
    conn_tx: mpsc::Sender<ConnEvent>,
    conn_rx: mpsc::Receiver<ConnEvent>,
    cmd_tx: mpsc::UnboundedSender<FlowCmd>,
    cmd_rx: mpsc::UnboundedReceiver<FlowCmd>,
    known_peer: Option<SocketAddr>,
    reconnect: Option<JoinHandle<()>>,
    /// A `Migrated` event was emitted for the current resynchronisation.
    reported: bool,
    ended: bool,
    stopped: bool,
    /// Closed in order; only `app_out` is still being written (see
    /// `closed_in_order`).
    draining: bool,
}

async fn read_opt(app: Option<&AppFd>, buf: &mut [u8]) -> io::Result<usize> {
    match app {
        Some(a) => a.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_opt(app: Option<&AppFd>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match app {
        Some(a) if !bufs.is_empty() => a.write_vectored(bufs).await,
        _ => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, app_fd: OwnedFd, stream: TcpStream, leftover: Vec<u8>) {
        match AppFd::new(app_fd) {
            Ok(a) => self.app = Some(a),
            Err(_) => self.flow.abort(RstReason::Resources, self.sh.now_ms()),
        }
        self.current = self.attach(stream, leftover);
        self.perform(None);
        let mut stop = self.sh.stop.subscribe();
        while !self.ended {
            let wake = self.wait(&mut stop).await;
            self.handle(wake);
            self.perform(None);
            self.settle_app();
            if self.draining && self.app_out.is_empty() {
                self.finish("fin".into(), false);
            }
        }
    }

    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) -> Wake {
        let deadline = self.flow.next_deadline().map(|ms| self.sh.instant(ms));
        let room = self.flow.writable().min(READ_CHUNK);
        let can_read = self.app.is_some() && !self.app_eof && room > 0;
        // App bytes are read straight into the flow's send buffer.
        let space = if can_read {
            self.flow.write_space(room)
        } else {
            &mut []
        };
        let out = self.app_out.slices();
        let app = self.app.as_ref();
        if !self.stopped && *stop.borrow() {
            // Stopped before this driver subscribed (or between two waits):
            // `changed()` will not fire for a value already seen.
            return Wake::Stop;
        }
        let stopped = self.stopped;
        tokio::select! {
            c = self.cmd_rx.recv() => Wake::Cmd(c),
            Some(e) = self.conn_rx.recv() => Wake::Conn(e),
            r = write_opt(app, &out) => Wake::AppWrote(r),
            r = read_opt(app, space), if can_read => Wake::AppRead(r),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => Wake::Timer,
            _ = stop.changed(), if !stopped => Wake::Stop,
            else => Wake::Stop,
        }
    }

    fn handle(&mut self, wake: Wake) {
        let now = self.sh.now_ms();
        match wake {
            Wake::Cmd(Some(cmd)) => self.on_cmd(cmd),
            Wake::Cmd(None) => {}
            Wake::Conn(ConnEvent::Frames(cid, frames)) => {
                self.flow.on_frames(conn::frames(&frames), now);
                self.perform(Some(cid));
            }
            Wake::Conn(ConnEvent::Down(cid, _why)) => self.conn_down(cid),
            Wake::AppRead(Ok(0)) => {
                self.app_eof = true;
                // Before set-up completes the machine can only abort; an
                // exposed server that writes and closes at once must not
                // lose its bytes, so its FIN waits for `Established`.
                if matches!(self.flow.state(), State::SynSent | State::SynReceived) {
                    self.close_when_established = true;
                } else {
                    self.flow.close(now);
                }
            }
            Wake::AppRead(Ok(n)) => {
                self.flow.commit_write(n, now);
                Stats::add(&self.sh.stats.bytes_out, n as u64);
            }
            Wake::AppWrote(Ok(n)) => self.app_wrote(n, now),
            Wake::AppRead(Err(_)) | Wake::AppWrote(Err(_)) if self.draining => {
                self.finish("reset: app closed before reading every byte".into(), true);
            }
            Wake::AppRead(Err(_)) | Wake::AppWrote(Err(_)) => {
                self.flow.abort(RstReason::Aborted, now);
            }
            Wake::Timer => self.flow.tick(now),
            Wake::Stop if self.draining => {
                self.stopped = true;
                self.finish(policy::reset_text(RstReason::Aborted, false), true);
            }
            Wake::Stop => {
                self.stopped = true;
                self.flow.abort(RstReason::Aborted, now);
            }
        }
    }

    fn app_wrote(&mut self, n: usize, now: u64) {
        self.app_out.consume(n);
        let own = n.min(self.greeting_left);
        self.greeting_left -= own;
        let n = (n - own) as u64;
        if n > 0 {
            Stats::add(&self.sh.stats.bytes_in, n);
            self.flow.read_done(n, now);
        }
    }

    fn on_cmd(&mut self, cmd: FlowCmd) {
        match cmd {
            FlowCmd::IncomingPath { stream, buf } => self.incoming_path(stream, buf),
            FlowCmd::Reconnected(stream) => self.reconnected(stream),
            FlowCmd::BreakPath => {
                if let Some(c) = self.take_conn(self.current) {
                    c.abort();
                    self.path_broken(None);
                }
            }
            FlowCmd::AddressRemoved(ip) => {
                self.flow.set_local_addrs(self.sh.advertised());
                let gone: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|c| c.local.ip() == ip)
                    .map(|c| c.id)
                    .collect();
                let lost_current = gone.contains(&self.current.unwrap_or(u64::MAX));
                for cid in gone {
                    if let Some(c) = self.take_conn(Some(cid)) {
                        c.abort();
                    }
                }
                if lost_current {
                    self.path_broken(Some(0));
                }
            }
            FlowCmd::AddressAdded => {
                self.flow.set_local_addrs(self.sh.advertised());
                if self.reconnect.is_some() && self.flow.is_frozen() {
                    self.schedule_reconnect(0);
                }
            }
        }
    }

    /// Performs the machine's effects in order. `source`: the connection
    /// the last input came from (a `PeerMigrated` makes it current).
    fn perform(&mut self, source: Option<u64>) {
        let mut out = Outgoing::default();
        loop {
            let effects = self.flow.take_effects();
            if effects.is_empty() {
                break;
            }
            let mut discard = 0u64;
            for e in effects {
                match e {
                    Effect::Send(f) => out.push(f),
                    Effect::Deliver(b) if self.app.is_some() => self.app_out.push(b),
                    Effect::Deliver(b) => discard += b.len() as u64,
                    Effect::Event(ev) => {
                        self.flush(&mut out);
                        self.on_event(ev, source);
                    }
                }
            }
            self.flush(&mut out);
            if discard > 0 {
                self.flow.read_done(discard, self.sh.now_ms());
            }
        }
    }

    fn flush(&mut self, out: &mut Outgoing) {
        if out.bufs.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut out.bufs);
        let sent = self
            .conns
            .iter()
            .find(|c| Some(c.id) == self.current)
            .map(|c| c.send(bytes));
        if sent == Some(false) {
            if let Some(c) = self.take_conn(self.current) {
                c.abort();
            }
            self.path_broken(None);
        }
    }

    fn on_event(&mut self, ev: Event, source: Option<u64>) {
        match ev {
            Event::Established => {
                if std::mem::take(&mut self.close_when_established) {
                    self.flow.close(self.sh.now_ms());
                }
            }
            Event::PeerClosed => self.peer_closed = true,
            Event::Closed => self.closed_in_order(),
            Event::Reset { reason, remote } => {
                self.finish(policy::reset_text(reason, remote), true)
            }
            Event::PeerMigrated => {
                if let Some(s) = source.filter(|s| self.conns.iter().any(|c| c.id == *s)) {
                    self.current = Some(s);
                }
                if let Some(r) = self.reconnect.take() {
                    r.abort();
                }
                self.report_migration();
            }
            Event::MigrationDone => {
                if !self.reported {
                    self.report_migration();
                }
            }
        }
    }

    fn report_migration(&mut self) {
        self.reported = true;
        let Some(c) = self.conns.iter().find(|c| Some(c.id) == self.current) else {
            return;
        };
        Stats::bump(&self.sh.stats.migrations);
        self.sh.emit(DpEvent::Migrated {
            flow_id: self.id,
            local: c.local,
            remote: c.remote,
        });
    }

    /// Shuts the app's write side once the peer's stream ended and every
    /// byte was written; closes the app fd once both directions are done.
    fn settle_app(&mut self) {
        if self.app.is_none() || !self.app_out.is_empty() {
            return;
        }
        if self.peer_closed && !self.app_wr_shut {
            if let Some(a) = &self.app {
                a.shutdown_write();
            }
            self.app_wr_shut = true;
        }
        if self.app_eof && self.app_wr_shut {
            self.app = None;
        }
    }

    /// The flow ended in order (FIN both ways). Bytes it delivered (and
    /// acknowledged) may still wait in `app_out` for a slow app: the driver
    /// then stays, without paths, until they are written (or the app fails
    /// or the data path stops), like a kernel socket's receive buffer.
    fn closed_in_order(&mut self) {
        if self.app.is_none() || self.app_out.is_empty() {
            return self.finish("fin".into(), false);
        }
        self.draining = true;
        for c in self.conns.drain(..) {
            c.close();
        }
        self.current = None;
        if let Some(r) = self.reconnect.take() {
            r.abort();
        }
    }

    fn finish(&mut self, reason: String, reset: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        lock(&self.sh.flows).remove(&self.id);
        self.sh.stats.flow_ended();
        if let Some(a) = self.app.take() {
            if reset {
                a.abort();
            }
        }
        for c in self.conns.drain(..) {
            c.close();
        }
        if let Some(r) = self.reconnect.take() {
            r.abort();
        }
        self.sh.emit(DpEvent::FlowClosed {
            flow_id: self.id,
            reason,
        });
    }

    // ---- paths ----

    fn attach(&mut self, stream: TcpStream, initial: Vec<u8>) -> Option<u64> {
        let id = self.next_conn;
        self.next_conn += 1;
        let c = Conn::spawn(stream, initial, id, self.conn_tx.clone()).ok()?;
        self.conns.push(c);
        while self.conns.len() > MAX_CONNS {
            let Some(pos) = self.conns.iter().position(|c| Some(c.id) != self.current) else {
                break;
            };
            self.conns.remove(pos).close();
        }
        Some(id)
    }

    fn take_conn(&mut self, id: Option<u64>) -> Option<Conn> {
        let pos = self.conns.iter().position(|c| Some(c.id) == id)?;
        if self.current == id {
            self.current = None;
        }
        Some(self.conns.remove(pos))
    }

    fn conn_down(&mut self, cid: u64) {
        let was_current = self.current == Some(cid);
        drop(self.take_conn(Some(cid)));
        if was_current {
            self.path_broken(None);
        }
    }

    /// The current path is gone. During set-up the flow is abandoned (the
    /// initiator's connect logic retries elsewhere); afterwards it freezes
    /// and reconnects (`delay`: override of the role's first delay).
    fn path_broken(&mut self, delay: Option<u64>) {
        self.current = None;
        let now = self.sh.now_ms();
        match self.flow.state() {
            State::Closed => {}
            State::SynSent | State::SynReceived => self.flow.abort(RstReason::Timeout, now),
            state => {
                self.flow.path_lost(now);
                if state != State::TimeWait {
                    let cfg = &self.sh.cfg;
                    let first = policy::first_reconnect_delay(
                        self.initiator,
                        cfg.acceptor_reconnect_wait_ms,
                        cfg.reconnect_initial_ms,
                        random_u64(),
                    );
                    self.schedule_reconnect(delay.unwrap_or(first));
                }
            }
        }
    }

    fn schedule_reconnect(&mut self, first_delay_ms: u64) {
        if let Some(r) = self.reconnect.take() {
            r.abort();
        }
        let targets = policy::reconnect_targets(self.known_peer, self.flow.peer_addrs());
        if targets.is_empty() {
            return; // nothing to dial: wait for the peer's RSYN
        }
        let task = conn::redial(
            self.sh.clone(),
            targets,
            first_delay_ms,
            self.cmd_tx.clone(),
        );
        self.reconnect = Some(tokio::spawn(task));
    }

    fn reconnected(&mut self, stream: TcpStream) {
        self.reconnect = None;
        let state = self.flow.state();
        if state == State::Closed || (!self.flow.is_frozen() && self.current.is_some()) {
            return; // the peer moved us meanwhile, or the flow ended
        }
        self.current = self.attach(stream, Vec::new());
        if self.current.is_some() {
            self.reported = false;
            self.flow.resync(self.sh.now_ms());
        } else {
            self.path_broken(None);
        }
    }

    /// A connection routed here by the listener: adopt it iff its first
    /// frame (an RSYN) is authentic and fresh; otherwise drop it.
    fn incoming_path(&mut self, stream: TcpStream, buf: Vec<u8>) {
        let used = match wire::decode_stream(&buf) {
            Ok(Decoded::Frame(frame, used)) => {
                let before = self.flow.stats();
                self.flow.on_frame(&frame, self.sh.now_ms());
                (self.flow.stats() == before).then_some(used)
            }
            _ => None,
        };
        let Some(used) = used else {
            Stats::bump(&self.sh.stats.rsyn_rejected);
            let _ = self.flow.take_effects(); // a rejected frame has none
            return;
        };
        let cid = self.attach(stream, buf[used..].to_vec());
        if cid.is_some() {
            self.current = cid;
        }
        self.perform(cid);
    }
}

impl Drop for Driver {
    /// A driver that did not finish normally (its task panicked, or the
    /// runtime stopped) still leaves the registry and the counters right.
    fn drop(&mut self) {
        if !self.ended {
            self.finish("reset: data path stopped".into(), true);
        }
    }
}
