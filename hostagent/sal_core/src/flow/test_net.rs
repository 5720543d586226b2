//! The simulated network of the flow tests (`tests.rs`, `message_tests.rs`):
//! two flows joined by two frame queues, frames travelling encoded.

use std::collections::VecDeque;

use super::*;
use crate::service_id::ServiceId;
use crate::wire::{self, FrameType};

pub(super) const SID: ServiceId = ServiceId {
    bytes: [0x42; 32],
    prefix_bits: 256,
};
pub(super) const FLOW_A: u64 = 0xA1A1_A1A1_A1A1_A1A1;
pub(super) const FLOW_B: u64 = 0xB2B2_B2B2_B2B2_B2B2;
pub(super) const NONCE_A: u64 = 0x1111_2222_3333_4444;
pub(super) const NONCE_B: u64 = 0x5555_6666_7777_8888;

/// One end of the simulated network: its flow and what it produced.
#[derive(Default)]
pub(super) struct End {
    pub(super) flow: Option<Flow>,
    pub(super) inbox: VecDeque<Vec<u8>>,
    /// Every delivered byte, in order (stream flows).
    pub(super) got: Vec<u8>,
    /// Every `Deliver` effect, one entry each (message flows).
    pub(super) msgs: Vec<Vec<u8>>,
    /// Bytes written (stream flows) / messages sent (message flows) by the
    /// app side of this end, for the invariants.
    pub(super) written: Vec<u8>,
    pub(super) sent: Vec<Vec<u8>>,
    pub(super) events: Vec<Event>,
    /// Control frames this end already processed (for replays).
    pub(super) seen_control: Vec<Vec<u8>>,
    /// Frames this end sent.
    pub(super) frames_out: usize,
}

/// Two flows joined by two frame queues (frames travel encoded).
pub(super) struct Net {
    pub(super) ends: [End; 2],
    pub(super) now: u64,
    /// Datagram network: frames may be lost, duplicated, reordered. When
    /// false (byte stream), an undecodable frame breaks the connection.
    pub(super) lossy: bool,
}

pub(super) const A: usize = 0;
pub(super) const B: usize = 1;

impl Net {
    pub(super) fn new(cfg: Config) -> Self {
        let mut n = Net {
            ends: [End::default(), End::default()],
            now: 0,
            lossy: cfg.data_retransmit,
        };
        n.ends[A].flow = Some(Flow::connect(cfg, SID, FLOW_A, NONCE_A, 0));
        n.ends[B].flow = None;
        n.collect(A);
        n
    }

    /// Connected pair, both ESTABLISHED, queues empty.
    pub(super) fn established(cfg: Config) -> Self {
        let mut n = Net::new(cfg);
        n.accept_next(cfg);
        n.settle();
        assert_eq!(n.state(A), State::Established);
        assert_eq!(n.state(B), State::Established);
        n.ends[A].events.clear();
        n.ends[B].events.clear();
        n
    }

    pub(super) fn f(&mut self, side: usize) -> &mut Flow {
        self.ends[side].flow.as_mut().expect("flow exists")
    }

    pub(super) fn state(&self, side: usize) -> State {
        self.ends[side]
            .flow
            .as_ref()
            .map_or(State::Closed, Flow::state)
    }

    /// Moves `side`'s effects: frames to the other end's inbox.
    pub(super) fn collect(&mut self, side: usize) {
        let Some(flow) = self.ends[side].flow.as_mut() else {
            return;
        };
        for e in flow.take_effects() {
            match e {
                Effect::Send(frame) => {
                    let mut v = Vec::new();
                    wire::encode(&frame.as_frame(), &mut v).expect("flow frames encode");
                    self.ends[side].frames_out += 1;
                    self.ends[1 - side].inbox.push_back(v);
                }
                Effect::Deliver(bytes) => {
                    self.ends[side].got.extend_from_slice(&bytes);
                    self.ends[side].msgs.push(bytes);
                }
                Effect::Event(ev) => self.ends[side].events.push(ev),
            }
        }
    }

    /// B accepts the SYN at the front of its inbox.
    pub(super) fn accept_next(&mut self, cfg: Config) {
        let bytes = self.ends[B].inbox.pop_front().expect("a SYN");
        let frame = wire::decode_datagram(&bytes).unwrap();
        let syn = SynInfo::parse(&frame).expect("a SYN");
        self.ends[B].flow = Some(accept(cfg, &syn, FLOW_B, NONCE_B, self.now));
        self.collect(B);
    }

    /// Delivers raw bytes to `side` (decode errors drop them).
    pub(super) fn deliver_bytes(&mut self, side: usize, bytes: &[u8]) {
        let Ok(frame) = wire::decode_datagram(bytes) else {
            return;
        };
        let now = self.now;
        if let Some(flow) = self.ends[side].flow.as_mut() {
            flow.on_frame(&frame, now);
            if frame.header.frame_type == FrameType::Control {
                self.ends[side].seen_control.push(bytes.to_vec());
            }
        }
        self.collect(side);
    }

    /// Delivers the next frame queued for `side`.
    pub(super) fn deliver(&mut self, side: usize) -> bool {
        match self.ends[side].inbox.pop_front() {
            Some(bytes) => {
                self.deliver_bytes(side, &bytes);
                true
            }
            None => false,
        }
    }

    /// Delivers until both inboxes are empty (bounded).
    pub(super) fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.deliver(A) && !self.deliver(B) {
                return;
            }
        }
        panic!("no quiescence");
    }

    pub(super) fn tick(&mut self, dt: u64) {
        self.now += dt;
        let now = self.now;
        for side in [A, B] {
            if let Some(f) = self.ends[side].flow.as_mut() {
                f.tick(now);
            }
            self.collect(side);
        }
    }

    pub(super) fn input(&mut self, side: usize, op: impl FnOnce(&mut Flow, u64)) {
        let now = self.now;
        op(self.f(side), now);
        self.collect(side);
    }
}
