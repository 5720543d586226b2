//! Data and ACK frames: sending from the send buffer, in-order delivery,
//! acknowledgements, windows and (for datagram flows) go-back-N retransmission.

use super::machine::{DataTimer, Flow};
use super::{Effect, State};
use crate::wire::{Extensions, Frame, FrameType, OwnedFrame, RstReason, FLAG_ACK_NOW};

impl Flow {
    pub(super) fn on_data(&mut self, frame: &Frame<'_>) {
        if self.cfg.messages {
            return self.on_message(frame);
        }
        let h = frame.header;
        if h.dst_flow != self.local_flow || h.src_flow != self.peer_flow || !self.is_synchronised()
        {
            self.stats.ignored += 1;
            return;
        }
        if let Some(a) = frame.ext.ack {
            self.on_ack_ext(a);
        }
        let (Some(seq), FrameType::Data) = (frame.ext.data_seq, h.frame_type) else {
            return;
        };
        if frame.payload.is_empty() {
            return;
        }
        if let Some(r) = self.rcv.accept(seq, frame.payload.len()) {
            self.effects
                .push(Effect::Deliver(frame.payload[r].to_vec()));
        }
        // New data or a duplicate: either way tell the sender where we are.
        self.ack_owed = true;
        if self.state == State::TimeWait {
            self.time_wait_until = Some(self.now + self.cfg.time_wait_ms);
        }
    }

    /// A cumulative data acknowledgement and window from the peer.
    pub(super) fn on_ack_ext(&mut self, a: crate::wire::Ack) {
        let believable = a.ack >= self.snd.una && a.ack <= self.snd.max_sent;
        if !believable {
            return;
        }
        if self.snd.ack(a.ack) {
            self.restart_data_timer();
        }
        self.peer_window = a.window;
    }

    /// Restarts (or stops) the data timer after progress.
    pub(super) fn restart_data_timer(&mut self) {
        self.data_timer = self.needs_data_timer().then_some(DataTimer {
            deadline: self.now + self.cfg.rto_initial_ms,
            rto: self.cfg.rto_initial_ms,
            retries: 0,
        });
    }

    fn needs_data_timer(&self) -> bool {
        let zero_window_wait = self.peer_window == 0 && self.snd.nxt < self.snd.end();
        self.cfg.data_retransmit && (self.snd.in_flight() > 0 || zero_window_wait)
    }

    /// Sends unsent bytes within the peer's window.
    pub(super) fn pump_data(&mut self) {
        if self.state == State::TimeWait {
            return;
        }
        loop {
            let room = u64::from(self.peer_window).saturating_sub(self.snd.in_flight());
            let max = (room.min(self.cfg.max_payload as u64)) as usize;
            let Some((seq, chunk)) = self.snd.take_chunk(max) else {
                break;
            };
            let f = OwnedFrame {
                header: self.header(FrameType::Data, 0),
                ext: Extensions {
                    data_seq: Some(seq),
                    ack: Some(self.ack_ext()),
                    ..Default::default()
                },
                payload: chunk,
            };
            self.send(f);
            self.ack_owed = false;
        }
        if self.data_timer.is_none() {
            self.restart_data_timer();
        }
    }

    /// Sends FIN once the application closed and every byte was sent.
    pub(super) fn maybe_send_fin(&mut self) {
        if self.fin_wanted
            && !self.fin_sent
            && self.snd.nxt == self.snd.end()
            && self.pending.is_none()
        {
            self.fin_sent = true;
            self.start_pending(crate::wire::ctl::FIN);
        }
    }

    pub(super) fn ack_frame(&self, flags: u8) -> OwnedFrame {
        OwnedFrame {
            header: self.header(FrameType::Ack, flags),
            ext: Extensions {
                ack: Some(self.ack_ext()),
                ..Default::default()
            },
            payload: Vec::new(),
        }
    }

    /// Data retransmission (datagram flows): go back to the oldest
    /// unacknowledged byte, or probe a zero window with ACK_NOW.
    pub(super) fn tick_data(&mut self) {
        let Some(mut t) = self.data_timer else { return };
        if self.now < t.deadline {
            return;
        }
        if !self.needs_data_timer() {
            self.data_timer = None;
            return;
        }
        t.retries += 1;
        if t.retries > self.cfg.max_retries {
            self.reset(RstReason::Timeout, false, true);
            return;
        }
        t.rto = (t.rto * 2).min(self.cfg.rto_max_ms);
        t.deadline = self.now + t.rto;
        self.data_timer = Some(t);
        if self.snd.in_flight() > 0 {
            self.snd.rewind();
        } else {
            let probe = self.ack_frame(FLAG_ACK_NOW);
            self.send(probe);
        }
    }
}
