//! The flow: its state and the caller's inputs.
//!
//! This is the heart of the SAL and the longest file of the module: the
//! inputs and the per-input "finish" step that decides what to send live
//! together so that their order can be read in one place. Frame handling is
//! split into `control.rs` and `data.rs`.

use super::auth::{Direction, FlowKey};
use super::buffers::{RecvState, SendBuf};
use super::message::MsgState;
use super::{Config, Effect, Event, Resync, State, Stats};
use crate::service_id::ServiceId;
use crate::wire::{
    ctl, Ack, AddrList, Control, Extensions, Frame, FrameType, Header, OwnedFrame, RstReason,
};

/// Role of this end in the set-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Initiator,
    Acceptor,
}

/// The reliable control frame in flight (at most one at a time).
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub flags: u8,
    pub seq: u32,
    pub deadline: u64,
    pub rto: u64,
    pub retries: u32,
}

/// Retransmission timer of unacknowledged data (datagram flows only).
#[derive(Clone, Copy, Debug)]
pub(super) struct DataTimer {
    pub deadline: u64,
    pub rto: u64,
    pub retries: u32,
}

/// One end of a SAL flow. See the module documentation.
#[derive(Debug)]
pub struct Flow {
    pub(super) cfg: Config,
    pub(super) role: Role,
    pub(super) state: State,
    pub(super) resync: Resync,
    pub(super) now: u64,
    /// Set while the path is lost: when the flow gives up waiting.
    pub(super) frozen_until: Option<u64>,
    pub(super) local_flow: u64,
    pub(super) peer_flow: u64,
    pub(super) local_nonce: u64,
    pub(super) peer_nonce: u64,
    pub(super) service: Option<ServiceId>,
    pub(super) key: Option<FlowKey>,
    pub(super) mac_counter: u64,
    pub(super) peer_mac_counter: u64,
    pub(super) ctl_snd_nxt: u32,
    pub(super) ctl_rcv_nxt: u32,
    pub(super) pending: Option<Pending>,
    /// The application closed its side; a FIN goes out once data is sent.
    pub(super) fin_wanted: bool,
    pub(super) fin_sent: bool,
    pub(super) fin_acked: bool,
    pub(super) peer_closed_reported: bool,
    pub(super) snd: SendBuf,
    pub(super) peer_window: u32,
    pub(super) data_timer: Option<DataTimer>,
    pub(super) rcv: RecvState,
    /// Owe the peer a data acknowledgement (an ACK frame if no data goes).
    pub(super) ack_owed: bool,
    /// Owe the peer a control ACK / RSYN-ACK.
    pub(super) ctl_ack_owed: bool,
    pub(super) rsyn_ack_owed: bool,
    pub(super) time_wait_until: Option<u64>,
    /// Our endpoints, advertised in SYN, SYN-ACK and RSYN (ADDRESS LIST).
    pub(super) local_addrs: Option<AddrList>,
    /// The peer's endpoints, from its SYN / SYN-ACK / latest authentic RSYN.
    pub(super) peer_addrs: Option<AddrList>,
    pub(super) stats: Stats,
    /// Message numbering, duplicate filter, keep-alive (`message.rs`).
    pub(super) msg: MsgState,
    pub(super) effects: Vec<Effect>,
}

/// The fields of a valid SYN, for the acceptor's demultiplexing decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynInfo {
    pub service: ServiceId,
    pub peer_flow: u64,
    pub nonce: u64,
    pub ctl_seq: u32,
    pub window: u32,
    /// The initiator's advertised endpoints (ADDRESS LIST), if any.
    pub addrs: Option<AddrList>,
}

impl SynInfo {
    /// The SYN's fields, or `None` if `frame` is not a well-formed SYN
    /// (CONTROL with exactly the SYN flag, SERVICE ID, destination flow 0,
    /// non-zero source flow).
    pub fn parse(frame: &Frame<'_>) -> Option<Self> {
        let c = frame.ext.control?;
        let h = frame.header;
        if h.frame_type != FrameType::Control
            || c.flags != ctl::SYN
            || h.dst_flow != 0
            || h.src_flow == 0
        {
            return None;
        }
        Some(SynInfo {
            service: frame.ext.service?,
            peer_flow: h.src_flow,
            nonce: c.nonce,
            ctl_seq: c.seq,
            window: frame.ext.ack.map_or(0, |a| a.window),
            addrs: frame.ext.addrs,
        })
    }
}

/// Accepts a SYN (the caller decided to DEMUX it to a local listener):
/// returns the new flow in SYN-RECEIVED with the SYN-ACK as its first effect.
/// `local_flow` must be non-zero and random; `nonce` random.
pub fn accept(cfg: Config, syn: &SynInfo, local_flow: u64, nonce: u64, now: u64) -> Flow {
    accept_advertising(cfg, syn, local_flow, nonce, None, now)
}

/// [`accept`], advertising `addrs` (our endpoints) in the SYN-ACK and any
/// later RSYN; the SYN's list becomes [`Flow::peer_addrs`].
pub fn accept_advertising(
    cfg: Config,
    syn: &SynInfo,
    local_flow: u64,
    nonce: u64,
    addrs: Option<AddrList>,
    now: u64,
) -> Flow {
    let mut f = Flow::new(
        cfg,
        Role::Acceptor,
        State::SynReceived,
        local_flow,
        nonce,
        now,
    );
    f.peer_flow = syn.peer_flow;
    f.peer_nonce = syn.nonce;
    f.service = Some(syn.service);
    f.peer_window = syn.window;
    f.local_addrs = addrs;
    f.peer_addrs = syn.addrs;
    f.ctl_rcv_nxt = syn.ctl_seq.wrapping_add(1);
    f.key = Some(FlowKey::derive(syn.nonce, nonce, syn.peer_flow, local_flow));
    f.start_pending(ctl::SYN | ctl::ACK);
    f.finish();
    f
}

/// The RST that refuses a SYN (no listener, DELAY dropped, overload...).
/// It echoes the SYN's nonce so that the initiator can believe it.
pub fn refuse(syn: &SynInfo, reason: RstReason) -> OwnedFrame {
    OwnedFrame {
        header: Header {
            frame_type: FrameType::Control,
            flags: 0,
            src_flow: 0,
            dst_flow: syn.peer_flow,
        },
        ext: Extensions {
            control: Some(Control {
                flags: ctl::RST,
                seq: 0,
                ack: syn.ctl_seq.wrapping_add(1),
                nonce: syn.nonce,
            }),
            rst_reason: Some(reason),
            ..Default::default()
        },
        payload: Vec::new(),
    }
}

impl Flow {
    fn new(cfg: Config, role: Role, state: State, local_flow: u64, nonce: u64, now: u64) -> Self {
        Flow {
            cfg,
            role,
            state,
            resync: Resync::Idle,
            now,
            frozen_until: None,
            local_flow,
            peer_flow: 0,
            local_nonce: nonce,
            peer_nonce: 0,
            service: None,
            key: None,
            mac_counter: 0,
            peer_mac_counter: 0,
            ctl_snd_nxt: 0,
            ctl_rcv_nxt: 0,
            pending: None,
            fin_wanted: false,
            fin_sent: false,
            fin_acked: false,
            peer_closed_reported: false,
            snd: SendBuf::new(cfg.send_buffer),
            peer_window: 0,
            data_timer: None,
            rcv: RecvState::new(cfg.recv_window),
            ack_owed: false,
            ctl_ack_owed: false,
            rsyn_ack_owed: false,
            time_wait_until: None,
            local_addrs: None,
            peer_addrs: None,
            stats: Stats::default(),
            msg: MsgState::default(),
            effects: Vec::new(),
        }
    }

    /// Opens a flow to `service`: returns it in SYN-SENT with the SYN as
    /// its first effect. `local_flow` must be non-zero and random; `nonce` random.
    pub fn connect(cfg: Config, service: ServiceId, local_flow: u64, nonce: u64, now: u64) -> Self {
        Flow::connect_advertising(cfg, service, local_flow, nonce, None, now)
    }

    /// [`Flow::connect`], advertising `addrs` (our endpoints, e.g. SAL
    /// listening addresses) in the SYN and any later RSYN. Advisory: the
    /// peer may use them to reconnect; only an authenticated RSYN moves a flow.
    pub fn connect_advertising(
        cfg: Config,
        service: ServiceId,
        local_flow: u64,
        nonce: u64,
        addrs: Option<AddrList>,
        now: u64,
    ) -> Self {
        let mut f = Flow::new(cfg, Role::Initiator, State::SynSent, local_flow, nonce, now);
        f.service = Some(service);
        f.local_addrs = addrs;
        f.start_pending(ctl::SYN);
        f.finish();
        f
    }

    // ---- observers ----

    pub fn state(&self) -> State {
        self.state
    }
    pub fn resync_state(&self) -> Resync {
        self.resync
    }
    pub fn local_flow(&self) -> u64 {
        self.local_flow
    }
    pub fn peer_flow(&self) -> u64 {
        self.peer_flow
    }
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// True while the path is lost and no resynchronisation has started.
    pub fn is_frozen(&self) -> bool {
        self.frozen_until.is_some()
    }
    /// The peer's advertised endpoints (empty if it sent none): from its
    /// SYN (acceptor side), its authentic SYN-ACK (initiator side), or the
    /// latest authentic RSYN that carried a list.
    pub fn peer_addrs(&self) -> &[std::net::SocketAddr] {
        self.peer_addrs.as_ref().map_or(&[], AddrList::as_slice)
    }
    /// Changes the endpoints advertised in later SYN-ACK / RSYN frames
    /// (e.g. after a local address was added or removed).
    pub fn set_local_addrs(&mut self, addrs: Option<AddrList>) {
        self.local_addrs = addrs;
    }
    /// Bytes [`Flow::write`] would accept now.
    pub fn writable(&self) -> usize {
        if self.can_write() {
            self.snd.writable()
        } else {
            0
        }
    }
    /// Flow offset up to which the peer acknowledged our bytes.
    pub fn acked(&self) -> u64 {
        self.snd.una
    }
    /// Flow offset up to which the peer's bytes were delivered.
    pub fn delivered(&self) -> u64 {
        self.rcv.nxt
    }
    /// Earliest time a [`Flow::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.pending
                .map(|p| p.deadline)
                .filter(|_| self.frozen_until.is_none()),
            self.data_timer
                .map(|t| t.deadline)
                .filter(|_| self.frozen_until.is_none()),
            self.time_wait_until,
            self.frozen_until,
            self.keepalive_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Takes the effects produced so far, oldest first.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    // ---- inputs ----

    /// A decoded frame addressed to this flow (by destination flow ID, or a
    /// repeated SYN from this flow's initiator).
    pub fn on_frame(&mut self, frame: &Frame<'_>, now: u64) {
        self.on_frames([*frame], now);
    }

    /// Frames that arrived together, in order: as [`Flow::on_frame`] for
    /// each, except that after DATA and ACK frames what to send is decided
    /// once, after the run of them (one acknowledgement for a batch of DATA
    /// frames instead of one each). Control frames are answered one by one.
    pub fn on_frames<'a>(&mut self, frames: impl IntoIterator<Item = Frame<'a>>, now: u64) {
        self.now = self.now.max(now);
        let mut unanswered = false;
        for frame in frames {
            if self.state == State::Closed {
                return;
            }
            self.take_frame(&frame);
            unanswered = frame.header.frame_type != FrameType::Control;
            if !unanswered {
                self.finish();
            }
        }
        if unanswered {
            self.finish();
        }
    }

    fn take_frame(&mut self, frame: &Frame<'_>) {
        let before = self.stats;
        match frame.header.frame_type {
            FrameType::Control => self.on_control(frame),
            FrameType::Data | FrameType::Ack => self.on_data(frame),
        }
        self.note_heard(frame, before);
        if frame.header.flags & crate::wire::FLAG_ACK_NOW != 0 && self.is_synchronised() {
            self.ack_owed = true;
        }
    }

    /// Time passed: retransmissions, give-ups, TIME-WAIT expiry.
    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        if self.state == State::Closed {
            return;
        }
        if let Some(t) = self.frozen_until {
            if self.now >= t {
                self.reset(RstReason::Timeout, false, false);
                return;
            }
        } else {
            self.tick_control();
            if self.state == State::Closed {
                return;
            }
            self.tick_data();
            if self.state == State::Closed {
                return;
            }
            self.tick_keepalive();
            if self.state == State::Closed {
                return;
            }
        }
        if self.time_wait_until.is_some_and(|t| self.now >= t) {
            self.time_wait_until = None;
            self.enter_closed();
            return;
        }
        self.finish();
    }

    /// Application bytes to send; returns how many were taken (the rest
    /// did not fit in the send buffer: try again after acknowledgements).
    pub fn write(&mut self, data: &[u8], now: u64) -> usize {
        self.now = self.now.max(now);
        if !self.can_write() {
            return 0;
        }
        let n = self.snd.push(data);
        self.finish();
        n
    }

    /// Free space of the send buffer for the caller to read application
    /// bytes into directly (saves copying them through [`Flow::write`]): at
    /// most `max` bytes, possibly fewer than [`Flow::writable`] (the space
    /// wraps around the buffer's end), empty when nothing may be written.
    /// Follow with [`Flow::commit_write`].
    pub fn write_space(&mut self, max: usize) -> &mut [u8] {
        if !self.can_write() {
            return &mut [];
        }
        self.snd.spare(max)
    }

    /// The first `n` bytes of the slice the last [`Flow::write_space`]
    /// returned now hold application bytes: as [`Flow::write`] of them.
    /// Panics if `n` exceeds that slice.
    pub fn commit_write(&mut self, n: usize, now: u64) {
        self.now = self.now.max(now);
        if n == 0 {
            return;
        }
        assert!(self.can_write(), "commit_write without write_space");
        self.snd.commit(n);
        self.finish();
    }

    /// The application consumed `n` delivered bytes (opens the window).
    pub fn read_done(&mut self, n: u64, now: u64) {
        self.now = self.now.max(now);
        let was_closed = self.rcv.advertised() == 0;
        self.rcv.unread = self.rcv.unread.saturating_sub(n);
        if was_closed && self.rcv.advertised() > 0 && self.is_synchronised() {
            self.ack_owed = true; // window update
        }
        self.finish();
    }

    /// Orderly close of our direction: FIN once all written bytes are sent.
    /// Before set-up completes this aborts instead.
    pub fn close(&mut self, now: u64) {
        self.now = self.now.max(now);
        match self.state {
            State::SynSent | State::SynReceived => self.abort(RstReason::Aborted, now),
            State::Established => {
                self.fin_wanted = true;
                self.state = State::FinWait1;
                self.finish();
            }
            State::CloseWait => {
                self.fin_wanted = true;
                self.state = State::LastAck;
                self.finish();
            }
            _ => {}
        }
    }

    /// Abort: RST with `reason` (authenticated, when the key is known and a
    /// path exists), then CLOSED.
    pub fn abort(&mut self, reason: RstReason, now: u64) {
        self.now = self.now.max(now);
        if self.state != State::Closed {
            self.reset(reason, false, true);
        }
    }

    /// The underlying connection or address is gone: stop sending until
    /// [`Flow::resync`] or an authenticated RSYN from the peer; give up
    /// after `resync_timeout_ms`.
    pub fn path_lost(&mut self, now: u64) {
        self.now = self.now.max(now);
        if self.state != State::Closed && self.frozen_until.is_none() {
            self.frozen_until = Some(self.now + self.cfg.resync_timeout_ms);
        }
    }

    /// The caller gave this flow a new path: send RSYN on it (after set-up)
    /// or repeat the pending SYN / SYN-ACK (during set-up).
    pub fn resync(&mut self, now: u64) {
        self.now = self.now.max(now);
        if matches!(self.state, State::Closed | State::TimeWait) {
            self.frozen_until = None;
            return;
        }
        self.frozen_until = None;
        if !self.is_synchronised() {
            self.retransmit_now();
        } else {
            self.start_rsyn();
        }
        self.finish();
    }

    // ---- shared helpers ----

    pub(super) fn dir(&self) -> Direction {
        match self.role {
            Role::Initiator => Direction::FromInitiator,
            Role::Acceptor => Direction::FromAcceptor,
        }
    }

    pub(super) fn peer_dir(&self) -> Direction {
        match self.role {
            Role::Initiator => Direction::FromAcceptor,
            Role::Acceptor => Direction::FromInitiator,
        }
    }

    /// Set-up finished on this end (both flow IDs and the key known and confirmed).
    pub(super) fn is_synchronised(&self) -> bool {
        !matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Closed
        )
    }

    fn can_write(&self) -> bool {
        matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Established | State::CloseWait
        )
    }

    pub(super) fn event(&mut self, e: Event) {
        if e == Event::Established {
            self.keepalive_start();
        }
        self.effects.push(Effect::Event(e));
    }

    pub(super) fn send(&mut self, f: OwnedFrame) {
        self.effects.push(Effect::Send(f));
    }

    pub(super) fn header(&self, t: FrameType, flags: u8) -> Header {
        Header {
            frame_type: t,
            flags,
            src_flow: self.local_flow,
            dst_flow: self.peer_flow,
        }
    }

    pub(super) fn ack_ext(&self) -> Ack {
        Ack {
            ack: self.rcv.nxt,
            window: self.rcv.advertised(),
        }
    }

    /// Moves to CLOSED with a Reset event; sends an RST first if `send_rst`.
    pub(super) fn reset(&mut self, reason: RstReason, remote: bool, send_rst: bool) {
        if send_rst && self.key.is_some() && self.frozen_until.is_none() {
            let f = self.control_frame(ctl::RST, self.ctl_snd_nxt, Some(reason));
            self.send(f);
        }
        self.close_down();
        self.event(Event::Reset { reason, remote });
    }

    fn enter_closed(&mut self) {
        self.close_down();
        self.event(Event::Closed);
    }

    fn close_down(&mut self) {
        self.state = State::Closed;
        self.resync = Resync::Idle;
        self.pending = None;
        self.data_timer = None;
        self.time_wait_until = None;
        self.frozen_until = None;
    }

    /// After every input: what to send, then the close-state transitions.
    pub(super) fn finish(&mut self) {
        if self.state == State::Closed || self.frozen_until.is_some() {
            return;
        }
        self.send_control_answers();
        if self.is_synchronised() && self.resync == Resync::Idle {
            self.pump_data();
            self.maybe_send_fin();
        }
        if self.ack_owed && self.is_synchronised() {
            let f = self.ack_frame(0);
            self.send(f);
            self.ack_owed = false;
        }
        self.update_close_state();
    }

    /// FIN/close transitions from "our FIN and all our data acknowledged"
    /// and "the peer's FIN and all its data received".
    pub(super) fn update_close_state(&mut self) {
        let self_done = self.fin_acked && self.snd.una == self.snd.end();
        let peer_done = self.rcv.peer_done();
        if peer_done && !self.peer_closed_reported && self.is_synchronised() {
            self.peer_closed_reported = true;
            self.event(Event::PeerClosed);
        }
        let next = match self.state {
            State::Established if peer_done => State::CloseWait,
            State::FinWait1 if self_done && peer_done => State::TimeWait,
            State::FinWait1 if self_done => State::FinWait2,
            State::FinWait1 if peer_done => State::Closing,
            State::FinWait2 if peer_done => State::TimeWait,
            State::Closing if self_done => State::TimeWait,
            State::LastAck if self_done => {
                self.enter_closed();
                return;
            }
            s => s,
        };
        if next == State::TimeWait && self.state != State::TimeWait {
            self.time_wait_until = Some(self.now + self.cfg.time_wait_ms);
            self.pending = None;
            self.data_timer = None;
        }
        self.state = next;
    }
}
