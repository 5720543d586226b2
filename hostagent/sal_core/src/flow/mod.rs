//! SAL flow state machine: set-up, data, resynchronisation, close.
//!
//! Pure (sans-IO): no sockets, no clock, no randomness. Every input method
//! takes the current time in milliseconds; flow IDs and nonces are passed in.
//! Outputs accumulate as [`Effect`]s that the caller drains with
//! [`Flow::take_effects`] after each input and performs in order (send a
//! frame on the flow's current path, hand bytes to the application, report
//! an event). Specified in `docs/sal-flow.md`.
//!
//! - [`machine`]: the [`Flow`] and its inputs.
//! - [`control`]: control frames (SYN, RSYN, FIN, RST), their
//!   authentication and retransmission.
//! - [`data`]: data frames, acknowledgements, windows.
//! - [`buffers`]: send buffer and in-order receive accounting.
//! - [`auth`]: flow key derivation and control-frame MACs.
//! - [`message`]: message mode (datagram flows with UDP semantics) and
//!   the SAL keep-alive.

pub mod auth;
mod buffers;
mod control;
mod data;
pub mod machine;
mod message;

#[cfg(test)]
mod message_tests;
#[cfg(test)]
mod test_net;
#[cfg(test)]
mod tests;

pub use auth::{Direction, FlowKey};
pub use machine::{accept, accept_advertising, refuse, Flow, SynInfo};
pub use message::{MessageError, MAX_MESSAGE};

use crate::wire::{OwnedFrame, RstReason};

/// Tunables of one flow. Times are milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most unacknowledged + unsent bytes buffered (back-pressure beyond).
    pub send_buffer: usize,
    /// Most delivered-but-unread bytes (the advertised receive window).
    pub recv_window: u32,
    /// Largest payload per data frame (at most `wire::MAX_PAYLOAD`). Over TCP the
    /// largest size: fewer frames and acknowledgements per byte.
    pub max_payload: usize,
    /// First retransmission timeout of a control frame (and of data, see
    /// `data_retransmit`); doubles per retry up to `rto_max_ms`.
    pub rto_initial_ms: u64,
    pub rto_max_ms: u64,
    /// Retransmissions before the flow is aborted with `RstReason::Timeout`.
    pub max_retries: u32,
    /// Time in TIME-WAIT before the flow is closed.
    pub time_wait_ms: u64,
    /// How long a flow whose path was lost waits for a resynchronisation.
    pub resync_timeout_ms: u64,
    /// Retransmit unacknowledged data on a timer (go-back-N): for flows over
    /// datagrams. Over a reliable byte stream, data is only resent after a
    /// resynchronisation, so leave it off.
    pub data_retransmit: bool,
    /// Message mode (datagram flows with UDP semantics, `message.rs`): each
    /// [`Flow::send_message`] is one DATA frame, delivered at most once, in
    /// any order, never retransmitted; the byte-stream half is unused.
    pub messages: bool,
    /// SAL keep-alive: after this long without hearing an authentic frame
    /// from the peer, probe it (ACK_NOW); 0 = off (stream flows rely on TCP).
    pub keepalive_idle_ms: u64,
    /// Time between unanswered probes.
    pub keepalive_interval_ms: u64,
    /// Unanswered probes before the flow is reset with `Timeout`.
    pub keepalive_probes: u32,
}

impl Config {
    /// Defaults for a flow over a reliable byte stream (TCP between agents).
    pub fn stream() -> Self {
        Config {
            send_buffer: 1 << 20,
            recv_window: 1 << 20,
            max_payload: 64 * 1024,
            rto_initial_ms: 1000,
            rto_max_ms: 60_000,
            max_retries: 8,
            time_wait_ms: 10_000,
            resync_timeout_ms: 60_000,
            data_retransmit: false,
            messages: false,
            keepalive_idle_ms: 0,
            keepalive_interval_ms: 5_000,
            keepalive_probes: 3,
        }
    }

    /// Defaults for a datagram flow with UDP semantics (message mode) over
    /// UDP: control frames retransmitted (500 ms doubling to 8 s, 6 tries),
    /// data never; keep-alive after 15 s idle, 3 probes 5 s apart.
    pub fn message() -> Self {
        Config {
            max_payload: MAX_MESSAGE,
            rto_initial_ms: 500,
            rto_max_ms: 8_000,
            max_retries: 6,
            time_wait_ms: 2_000,
            messages: true,
            keepalive_idle_ms: 15_000,
            ..Config::stream()
        }
    }

    /// Defaults for a flow over UDP datagrams (one frame per datagram).
    pub fn datagram() -> Self {
        Config {
            max_payload: 1200,
            data_retransmit: true,
            ..Config::stream()
        }
    }
}

/// Connection state (mirrors TCP's, but for the SAL flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    CloseWait,
    LastAck,
    Closed,
}

/// Resynchronisation sub-state, orthogonal to [`State`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resync {
    /// No resynchronisation in progress.
    Idle,
    /// Our RSYN is outstanding.
    RsynSent,
    /// Our RSYN is outstanding and we also accepted the peer's (both moved).
    RsynSentRecv,
}

/// Something the caller must do, in order.
// Frames are held inline (the address list is stored inline, ~450 bytes);
// boxing would add an allocation per frame for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this frame on the flow's current path.
    Send(OwnedFrame),
    /// Hand these bytes (the next ones of the peer's stream) to the application.
    Deliver(Vec<u8>),
    Event(Event),
}

/// What happened to the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Set-up completed.
    Established,
    /// The peer sent all its bytes and FIN (end of stream).
    PeerClosed,
    /// Orderly close finished; the flow can be removed.
    Closed,
    /// The flow was aborted (by us when `remote` is false).
    Reset { reason: RstReason, remote: bool },
    /// An authenticated RSYN arrived: from now on send this flow's frames on
    /// the path that RSYN came from. Emitted before the RSYN-ACK.
    PeerMigrated,
    /// Our own RSYN was acknowledged; resynchronisation finished.
    MigrationDone,
}

/// Counters of frames that did not move the flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Control frames without a MAC, or whose MAC did not verify.
    pub bad_mac: u64,
    /// Authentic MAC but a counter not above the last accepted one.
    pub replayed: u64,
    /// Frames with wrong flow IDs or unexpected in the current state.
    pub ignored: u64,
    /// Message mode: messages dropped as duplicates or too old to tell.
    pub duplicates: u64,
}
