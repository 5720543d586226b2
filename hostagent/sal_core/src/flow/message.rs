//! Message mode (datagram flows with UDP semantics) and the SAL keep-alive.
//!
//! A flow in message mode (`Config::messages`) keeps the whole control half
//! of the machine — SYN / SYN-ACK / ACK set-up with retransmission, the
//! authenticated RSYN, FIN and RST — and replaces the byte stream by
//! messages:
//!
//! - [`Flow::send_message`] sends one DATA frame whose DATA SEQUENCE is the
//!   message number (per sender, from 0) and whose payload is the message.
//!   Nothing is buffered, acknowledged or retransmitted.
//! - A received DATA frame for this flow is delivered as one
//!   [`Effect::Deliver`](super::Effect) (one message), at once, in arrival
//!   order; a message number seen before, or more than [`REPLAY_WINDOW`]
//!   below the highest seen, is dropped (`Stats::duplicates`), so each
//!   message is delivered at most once. Loss is not repaired.
//! - FIN carries offset 0 (no stream bytes), so a peer's FIN ends its
//!   direction at once (`PeerClosed`).
//!
//! The keep-alive (any mode, on when `keepalive_idle_ms > 0`): after
//! `keepalive_idle_ms` without an accepted frame from the peer the flow
//! sends an ACK frame with ACK_NOW (the peer answers with an ACK), then
//! again every `keepalive_interval_ms`; after `keepalive_probes`
//! unanswered probes it is reset with `Timeout` (RST sent).

use super::machine::Flow;
use super::{Effect, State, Stats};
use crate::wire::{Extensions, Frame, FrameType, OwnedFrame, FLAG_ACK_NOW};

/// Largest message one DATA frame carries over UDP: the largest IPv4 UDP
/// payload (65 507 bytes) minus the DATA frame's SAL header (28-byte fixed
/// header + 12-byte DATA SEQUENCE extension).
pub const MAX_MESSAGE: usize = 65_507 - 40;

/// How far below the highest message number a late message is still
/// accepted (reordering tolerance of the duplicate filter).
pub const REPLAY_WINDOW: u64 = 64;

/// Why [`Flow::send_message`] did not send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// The flow is not in message mode.
    NotMessageFlow,
    /// Set-up not finished, our side closed, frozen, or the flow is gone.
    NotOpen,
    /// Zero-length messages are not carried.
    Empty,
    /// Longer than the flow's largest message.
    TooLarge { len: usize, max: usize },
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::NotMessageFlow => f.write_str("not a message flow"),
            MessageError::NotOpen => f.write_str("flow not open for sending"),
            MessageError::Empty => f.write_str("empty message"),
            MessageError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds {max}")
            }
        }
    }
}

impl std::error::Error for MessageError {}

/// Message numbering, the duplicate filter and keep-alive state.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MsgState {
    next_seq: u64,
    /// Highest message number received, and a bitmap of the
    /// [`REPLAY_WINDOW`] numbers at and below it (bit 0 = `top`).
    top: Option<u64>,
    seen: u64,
    /// When we last accepted a frame from the peer.
    pub last_heard: u64,
    /// Keep-alive probes sent since then.
    pub probes: u32,
}

impl MsgState {
    /// Records `seq`; false if it is a duplicate or too old to tell.
    fn fresh(&mut self, seq: u64) -> bool {
        let Some(top) = self.top else {
            self.top = Some(seq);
            self.seen = 1;
            return true;
        };
        if seq > top {
            let shift = seq - top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            } | 1;
            self.top = Some(seq);
            return true;
        }
        let back = top - seq;
        if back >= REPLAY_WINDOW || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

impl Flow {
    /// Sends `msg` as one DATA frame (message mode only). Best effort: the
    /// frame goes out now or never. Allowed once set-up finished on this
    /// end, until our side closes; not while the path is frozen.
    pub fn send_message(&mut self, msg: &[u8], now: u64) -> Result<(), MessageError> {
        self.now = self.now.max(now);
        let max = self.max_message();
        if !self.cfg.messages {
            return Err(MessageError::NotMessageFlow);
        }
        if msg.is_empty() {
            return Err(MessageError::Empty);
        }
        if msg.len() > max {
            return Err(MessageError::TooLarge {
                len: msg.len(),
                max,
            });
        }
        let open = matches!(self.state, State::Established | State::CloseWait);
        if !open || self.frozen_until.is_some() {
            return Err(MessageError::NotOpen);
        }
        let seq = self.msg.next_seq;
        self.msg.next_seq += 1;
        let f = OwnedFrame {
            header: self.header(FrameType::Data, 0),
            ext: Extensions {
                data_seq: Some(seq),
                ..Default::default()
            },
            payload: msg.to_vec(),
        };
        self.send(f);
        Ok(())
    }

    /// Largest message [`Flow::send_message`] accepts.
    pub fn max_message(&self) -> usize {
        self.cfg.max_payload.min(MAX_MESSAGE)
    }

    /// A DATA or ACK frame in message mode.
    pub(super) fn on_message(&mut self, frame: &Frame<'_>) {
        let h = frame.header;
        let setup_done = self.is_synchronised() || self.state == State::SynReceived;
        if h.dst_flow != self.local_flow || h.src_flow != self.peer_flow || !setup_done {
            self.stats.ignored += 1;
            return;
        }
        let (Some(seq), FrameType::Data) = (frame.ext.data_seq, h.frame_type) else {
            return;
        };
        let open = !matches!(self.state, State::TimeWait | State::Closed);
        if frame.payload.is_empty() || !open || self.rcv.fin_at.is_some() {
            return;
        }
        if !self.msg.fresh(seq) {
            self.stats.duplicates += 1;
            return;
        }
        self.effects.push(Effect::Deliver(frame.payload.to_vec()));
    }

    /// After a frame was processed: if it was addressed to us and moved no
    /// failure counter, the peer is alive.
    pub(super) fn note_heard(&mut self, frame: &Frame<'_>, before: Stats) {
        let h = frame.header;
        let ours = h.dst_flow == self.local_flow && h.src_flow == self.peer_flow;
        let st = self.stats;
        let clean = st.bad_mac == before.bad_mac
            && st.replayed == before.replayed
            && st.ignored == before.ignored;
        if ours && clean && self.peer_flow != 0 {
            self.msg.last_heard = self.now;
            self.msg.probes = 0;
        }
    }

    fn keepalive_on(&self) -> bool {
        self.cfg.keepalive_idle_ms > 0
            && self.is_synchronised()
            && self.state != State::TimeWait
            && self.frozen_until.is_none()
    }

    /// When the next keep-alive probe (or give-up) is due.
    pub(super) fn keepalive_deadline(&self) -> Option<u64> {
        self.keepalive_on().then(|| {
            self.msg.last_heard
                + self.cfg.keepalive_idle_ms
                + u64::from(self.msg.probes) * self.cfg.keepalive_interval_ms
        })
    }

    /// Keep-alive timer: probe, or give up after `keepalive_probes`.
    pub(super) fn tick_keepalive(&mut self) {
        match self.keepalive_deadline() {
            Some(t) if self.now >= t => {}
            _ => return,
        }
        if self.msg.probes >= self.cfg.keepalive_probes {
            self.reset(crate::wire::RstReason::Timeout, false, true);
            return;
        }
        self.msg.probes += 1;
        let probe = self.ack_frame(FLAG_ACK_NOW);
        self.send(probe);
    }

    /// Set-up just finished: the keep-alive idle time starts now.
    pub(super) fn keepalive_start(&mut self) {
        self.msg.last_heard = self.now;
        self.msg.probes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::MsgState;

    #[test]
    fn duplicate_filter_accepts_each_number_once_within_the_window() {
        let mut m = MsgState::default();
        assert!(m.fresh(5));
        assert!(!m.fresh(5));
        assert!(m.fresh(3)); // late but new
        assert!(!m.fresh(3));
        assert!(m.fresh(70));
        assert!(!m.fresh(6)); // 64 below the top: too old to tell
        assert!(m.fresh(7));
        assert!(m.fresh(1000));
        assert!(!m.fresh(70));
    }
}
