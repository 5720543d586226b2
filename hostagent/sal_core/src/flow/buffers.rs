//! Send and receive byte accounting of a flow (flow-level byte offsets).

use std::collections::VecDeque;

/// Bytes written by the application and not yet acknowledged by the peer.
///
/// Offsets: `una` <= `nxt` <= `end`; the buffer holds `una..end`. `nxt` is
/// the next byte to (re)send; it moves back to `una` on a resynchronisation
/// or a go-back-N retransmission. `max_sent` is the highest `nxt` ever, the
/// limit for a believable acknowledgement.
#[derive(Debug)]
pub(super) struct SendBuf {
    bytes: VecDeque<u8>,
    cap: usize,
    pub una: u64,
    pub nxt: u64,
    pub max_sent: u64,
}

impl SendBuf {
    pub fn new(cap: usize) -> Self {
        SendBuf {
            bytes: VecDeque::new(),
            cap,
            una: 0,
            nxt: 0,
            max_sent: 0,
        }
    }

    pub fn end(&self) -> u64 {
        self.una + self.bytes.len() as u64
    }

    /// Space left for [`SendBuf::push`].
    pub fn writable(&self) -> usize {
        self.cap - self.bytes.len()
    }

    /// Appends as much of `data` as fits; returns the bytes taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.writable());
        self.bytes.extend(&data[..n]);
        n
    }

    /// Releases bytes up to `ack` if it is a believable new acknowledgement.
    /// Returns true when `una` advanced.
    pub fn ack(&mut self, ack: u64) -> bool {
        if ack <= self.una || ack > self.max_sent {
            return false;
        }
        self.bytes.drain(..(ack - self.una) as usize);
        self.una = ack;
        self.nxt = self.nxt.max(ack);
        true
    }

    /// Copies the next unsent chunk of at most `max` bytes and advances `nxt`.
    pub fn take_chunk(&mut self, max: usize) -> Option<(u64, Vec<u8>)> {
        let avail = (self.end() - self.nxt) as usize;
        let n = avail.min(max);
        if n == 0 {
            return None;
        }
        let start = (self.nxt - self.una) as usize;
        let (a, b) = self.bytes.as_slices();
        let mut chunk = Vec::with_capacity(n);
        if start < a.len() {
            let first = &a[start..a.len().min(start + n)];
            chunk.extend_from_slice(first);
            chunk.extend_from_slice(&b[..n - first.len()]);
        } else {
            chunk.extend_from_slice(&b[start - a.len()..start - a.len() + n]);
        }
        let seq = self.nxt;
        self.nxt += n as u64;
        self.max_sent = self.max_sent.max(self.nxt);
        Some((seq, chunk))
    }

    /// Go back to the oldest unacknowledged byte (resend everything after it).
    pub fn rewind(&mut self) {
        self.nxt = self.una;
    }

    pub fn in_flight(&self) -> u64 {
        self.nxt - self.una
    }
}

/// In-order receive state: everything before `nxt` was delivered exactly once.
#[derive(Debug)]
pub(super) struct RecvState {
    pub nxt: u64,
    /// Delivered bytes the application has not reported read.
    pub unread: u64,
    pub window: u32,
    /// Stream length announced by the peer's FIN.
    pub fin_at: Option<u64>,
}

impl RecvState {
    pub fn new(window: u32) -> Self {
        RecvState {
            nxt: 0,
            unread: 0,
            window,
            fin_at: None,
        }
    }

    /// Window to advertise.
    pub fn advertised(&self) -> u32 {
        u64::from(self.window).saturating_sub(self.unread) as u32
    }

    /// The part of a segment at `seq` that is new, in order and inside the
    /// window (and before the FIN offset), as a range of `payload`; `nxt`
    /// advances past it. `None` for a duplicate, a gap or no room.
    pub fn accept(&mut self, seq: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let end = seq.checked_add(len as u64)?;
        let mut limit = self.nxt + u64::from(self.advertised());
        if let Some(fin) = self.fin_at {
            limit = limit.min(fin);
        }
        let end = end.min(limit);
        if seq > self.nxt || end <= self.nxt {
            return None;
        }
        let from = (self.nxt - seq) as usize;
        let to = (end - seq) as usize;
        self.nxt = end;
        self.unread += (to - from) as u64;
        Some(from..to)
    }

    pub fn peer_done(&self) -> bool {
        self.fin_at == Some(self.nxt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_buffer_bounds_and_wraps() {
        let mut s = SendBuf::new(10);
        assert_eq!(s.push(b"abcdefghijkl"), 10);
        assert_eq!(s.writable(), 0);
        assert_eq!(s.take_chunk(4), Some((0, b"abcd".to_vec())));
        assert!(!s.ack(5), "ack beyond anything sent is not believed");
        assert!(s.ack(3));
        assert_eq!(s.push(b"XYZ"), 3);
        assert_eq!(s.take_chunk(100), Some((4, b"efghijXYZ".to_vec())));
        s.rewind();
        assert_eq!(s.take_chunk(3), Some((3, b"def".to_vec())));
        assert!(!s.ack(2), "old ack");
    }

    #[test]
    fn receive_drops_duplicates_gaps_and_overlaps() {
        let mut r = RecvState::new(100);
        let cases = [
            // (seq, len, want range, nxt after)
            (0u64, 10usize, Some(0..10), 10u64),
            (0, 10, None, 10),           // duplicate
            (5, 10, Some(5..10), 15),    // overlap: only the new tail
            (20, 5, None, 15),           // gap
            (15, 200, Some(0..85), 100), // clipped to the window (100 - 15 unread)
        ];
        for (seq, len, want, nxt) in cases {
            assert_eq!(r.accept(seq, len), want, "seq {seq}");
            assert_eq!(r.nxt, nxt);
        }
        assert_eq!(r.advertised(), 0);
        assert_eq!(r.accept(100, 1), None, "no room");
        r.unread = 0;
        r.fin_at = Some(102);
        assert_eq!(r.accept(100, 10), Some(0..2), "nothing past the FIN offset");
        assert!(r.peer_done());
        assert_eq!(r.accept(u64::MAX, 2), None, "overflow is ignored");
    }
}
