//! Control frames: building, authenticating, answering and retransmitting.
//!
//! Control sequence numbers (32-bit, wrapping) count the *reliable* control
//! frames of each direction: those with SYN, FIN, or RSYN without ACK. At
//! most one is outstanding; it is retransmitted on its RTO with a fresh MAC
//! counter. Every control frame carries the cumulative control ack, the data
//! ACKNOWLEDGEMENT and, once the key is known, a MAC.

use super::machine::{Flow, Pending, Role, SynInfo};
use super::{Event, Resync, State};
use crate::wire::{ctl, Control, Extensions, Frame, FrameType, OwnedFrame, RstReason};

/// Does a frame with these flags take a control sequence number?
pub(super) fn consumes(flags: u8) -> bool {
    flags & (ctl::SYN | ctl::FIN) != 0 || (flags & ctl::RSYN != 0 && flags & ctl::ACK == 0)
}

/// `a` is before `b` in 32-bit wrapping order.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Flow {
    /// Builds (and signs, if the key is known) a control frame.
    pub(super) fn control_frame(
        &mut self,
        flags: u8,
        seq: u32,
        rst: Option<RstReason>,
    ) -> OwnedFrame {
        let initial_syn = flags == ctl::SYN;
        // SYN, SYN-ACK and RSYN (not RSYN-ACK) advertise our endpoints.
        let advertise = flags & ctl::SYN != 0 || (flags & ctl::RSYN != 0 && flags & ctl::ACK == 0);
        let nonce = if flags & ctl::SYN != 0 {
            self.local_nonce
        } else if flags & ctl::RST != 0 {
            self.peer_nonce // echo: believable to a peer still in SYN-SENT
        } else {
            0
        };
        let mut f = OwnedFrame {
            header: self.header(FrameType::Control, 0),
            ext: Extensions {
                control: Some(Control {
                    flags,
                    seq,
                    ack: self.ctl_rcv_nxt,
                    nonce,
                }),
                service: if initial_syn { self.service } else { None },
                data_seq: (flags & ctl::FIN != 0).then(|| self.snd.end()),
                ack: Some(self.ack_ext()),
                addrs: if advertise { self.local_addrs } else { None },
                rst_reason: rst,
                ..Default::default()
            },
            payload: Vec::new(),
        };
        if let Some(key) = self.key {
            self.mac_counter += 1;
            key.sign(self.dir(), &mut f, self.mac_counter);
        }
        f
    }

    /// Starts a new reliable control frame with `flags` and sends it.
    pub(super) fn start_pending(&mut self, flags: u8) {
        let seq = self.ctl_snd_nxt;
        self.ctl_snd_nxt = seq.wrapping_add(1);
        self.pending = Some(Pending {
            flags,
            seq,
            deadline: self.now + self.cfg.rto_initial_ms,
            rto: self.cfg.rto_initial_ms,
            retries: 0,
        });
        self.transmit_pending();
    }

    fn transmit_pending(&mut self) {
        if self.frozen_until.is_some() {
            return;
        }
        if let Some(p) = self.pending {
            let f = self.control_frame(p.flags, p.seq, None);
            self.send(f);
        }
    }

    /// Sends the pending control frame again now and restarts its timer.
    pub(super) fn retransmit_now(&mut self) {
        if let Some(p) = self.pending.as_mut() {
            p.deadline = self.now + p.rto;
            self.transmit_pending();
        }
    }

    /// Starts (or restarts) our resynchronisation: RSYN, or RSYN+FIN when a
    /// FIN is outstanding (it then replaces the FIN).
    pub(super) fn start_rsyn(&mut self) {
        let flags = match self.pending {
            Some(p) if p.flags & ctl::RSYN != 0 => {
                self.retransmit_now();
                return;
            }
            Some(p) if p.flags & ctl::FIN != 0 => ctl::RSYN | ctl::FIN,
            _ => ctl::RSYN,
        };
        if self.resync == Resync::Idle {
            self.resync = Resync::RsynSent;
        }
        self.start_pending(flags);
    }

    /// Control retransmission timer.
    pub(super) fn tick_control(&mut self) {
        let Some(mut p) = self.pending else { return };
        if self.now < p.deadline {
            return;
        }
        p.retries += 1;
        if p.retries > self.cfg.max_retries {
            self.reset(RstReason::Timeout, false, true);
            return;
        }
        p.rto = (p.rto * 2).min(self.cfg.rto_max_ms);
        p.deadline = self.now + p.rto;
        self.pending = Some(p);
        self.transmit_pending();
    }

    /// Owed RSYN-ACK or control ACK (unreliable answers).
    pub(super) fn send_control_answers(&mut self) {
        if self.key.is_none() || !self.is_synchronised() {
            self.rsyn_ack_owed = false;
            self.ctl_ack_owed = false;
            return;
        }
        let flags = if self.rsyn_ack_owed {
            ctl::RSYN | ctl::ACK
        } else if self.ctl_ack_owed {
            ctl::ACK
        } else {
            return;
        };
        self.rsyn_ack_owed = false;
        self.ctl_ack_owed = false;
        let f = self.control_frame(flags, self.ctl_snd_nxt, None);
        self.send(f);
    }

    /// Verifies MAC and counter freshness; counts failures.
    fn authentic(&mut self, frame: &Frame<'_>) -> bool {
        let (Some(key), Some(mac)) = (self.key, frame.ext.mac) else {
            self.stats.bad_mac += 1;
            return false;
        };
        if !key.verify(self.peer_dir(), frame) {
            self.stats.bad_mac += 1;
            return false;
        }
        if mac.counter <= self.peer_mac_counter {
            self.stats.replayed += 1;
            return false;
        }
        self.peer_mac_counter = mac.counter;
        true
    }

    pub(super) fn on_control(&mut self, frame: &Frame<'_>) {
        let Some(c) = frame.ext.control else { return };
        let h = frame.header;
        if h.dst_flow != self.local_flow {
            self.on_repeated_syn(frame);
        } else if self.state == State::SynSent {
            self.on_control_syn_sent(frame, c);
        } else if h.src_flow != self.peer_flow || !self.authentic(frame) {
            self.stats.ignored += u64::from(h.src_flow != self.peer_flow);
        } else {
            self.on_authentic_control(frame, c);
        }
    }

    /// A SYN repeated by our initiator (its SYN-ACK was lost).
    fn on_repeated_syn(&mut self, frame: &Frame<'_>) {
        match SynInfo::parse(frame) {
            Some(syn)
                if self.role == Role::Acceptor
                    && syn.peer_flow == self.peer_flow
                    && syn.nonce == self.peer_nonce =>
            {
                if self.state == State::SynReceived {
                    self.retransmit_now();
                }
            }
            _ => self.stats.ignored += 1,
        }
    }

    fn on_control_syn_sent(&mut self, frame: &Frame<'_>, c: Control) {
        let src = frame.header.src_flow;
        if c.flags & ctl::RST != 0 && c.nonce == self.local_nonce {
            let reason = frame.ext.rst_reason.unwrap_or(RstReason::Unspecified);
            self.reset(reason, true, false);
            return;
        }
        if c.flags != ctl::SYN | ctl::ACK || c.ack != self.ctl_snd_nxt || src == 0 {
            self.stats.ignored += 1;
            return;
        }
        let key = super::FlowKey::derive(self.local_nonce, c.nonce, self.local_flow, src);
        self.key = Some(key);
        self.peer_flow = src;
        if !self.authentic(frame) {
            self.key = None;
            self.peer_flow = 0;
            return;
        }
        self.peer_nonce = c.nonce;
        if frame.ext.addrs.is_some() {
            self.peer_addrs = frame.ext.addrs;
        }
        self.ctl_rcv_nxt = c.seq.wrapping_add(1);
        self.pending = None;
        self.state = State::Established;
        self.event(Event::Established);
        if let Some(a) = frame.ext.ack {
            self.on_ack_ext(a);
        }
        self.ctl_ack_owed = true;
    }

    fn on_authentic_control(&mut self, frame: &Frame<'_>, c: Control) {
        if self.state == State::TimeWait {
            self.time_wait_until = Some(self.now + self.cfg.time_wait_ms);
        }
        if let Some(a) = frame.ext.ack {
            self.on_ack_ext(a);
        }
        if let Some(p) = self.pending {
            let acks_it = seq_lt(p.seq, c.ack) && !seq_lt(self.ctl_snd_nxt, c.ack);
            if acks_it {
                self.on_pending_acked(p.flags);
            }
        }
        if c.flags & ctl::RST != 0 {
            let reason = frame.ext.rst_reason.unwrap_or(RstReason::Unspecified);
            self.reset(reason, true, false);
            return;
        }
        if !consumes(c.flags) || !self.is_synchronised() {
            return;
        }
        let is_new = !seq_lt(c.seq, self.ctl_rcv_nxt);
        let is_rsyn = c.flags & ctl::RSYN != 0;
        if is_new {
            self.ctl_rcv_nxt = c.seq.wrapping_add(1);
            if is_rsyn {
                if frame.ext.addrs.is_some() {
                    self.peer_addrs = frame.ext.addrs;
                }
                self.accept_peer_rsyn();
            }
            if c.flags & ctl::FIN != 0 {
                self.on_peer_fin(frame.ext.data_seq);
            }
        }
        if is_rsyn {
            self.rsyn_ack_owed = true;
        } else {
            self.ctl_ack_owed = true;
        }
    }

    fn on_pending_acked(&mut self, flags: u8) {
        self.pending = None;
        if flags & ctl::SYN != 0 && self.state == State::SynReceived {
            self.state = State::Established;
            self.event(Event::Established);
        }
        if flags & ctl::RSYN != 0 {
            self.resync = Resync::Idle;
            self.snd.rewind();
            self.restart_data_timer();
            self.event(Event::MigrationDone);
        }
        if flags & ctl::FIN != 0 {
            self.fin_acked = true;
        }
    }

    /// The peer proved the flow key on a new path: follow it and resume
    /// from its acknowledged byte.
    fn accept_peer_rsyn(&mut self) {
        self.frozen_until = None;
        self.event(Event::PeerMigrated);
        if self.resync == Resync::RsynSent {
            self.resync = Resync::RsynSentRecv;
        }
        self.snd.rewind();
        self.restart_data_timer();
        self.retransmit_now();
    }

    fn on_peer_fin(&mut self, fin_at: Option<u64>) {
        match (fin_at, self.rcv.fin_at) {
            (Some(at), None) if at >= self.rcv.nxt => self.rcv.fin_at = Some(at),
            _ => self.stats.ignored += 1,
        }
    }
}
