//! Send and receive byte accounting of a flow (flow-level byte offsets).

/// Bytes written by the application and not yet acknowledged by the peer.
///
/// Offsets: `una` <= `nxt` <= `end`; the buffer holds `una..end`. `nxt` is
/// the next byte to (re)send; it moves back to `una` on a resynchronisation
/// or a go-back-N retransmission. `max_sent` is the highest `nxt` ever, the
/// limit for a believable acknowledgement.
///
/// Storage: a ring (`ring[head]` is byte `una`) that grows by doubling up
/// to `cap` as it fills (an idle or small flow keeps a small buffer), so
/// that the caller can read application bytes straight into its free space
/// ([`SendBuf::spare`] + [`SendBuf::commit`]) instead of copying them in.
#[derive(Debug)]
pub(super) struct SendBuf {
    ring: Vec<u8>,
    head: usize,
    len: usize,
    cap: usize,
    pub una: u64,
    pub nxt: u64,
    pub max_sent: u64,
}

/// Smallest ring allocated.
const MIN_RING: usize = 4096;

impl SendBuf {
    pub fn new(cap: usize) -> Self {
        SendBuf {
            ring: Vec::new(),
            head: 0,
            len: 0,
            cap,
            una: 0,
            nxt: 0,
            max_sent: 0,
        }
    }

    pub fn end(&self) -> u64 {
        self.una + self.len as u64
    }

    /// Space left for [`SendBuf::push`].
    pub fn writable(&self) -> usize {
        self.cap - self.len
    }

    /// Appends as much of `data` as fits; returns the bytes taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        while taken < data.len() {
            let space = self.spare(data.len() - taken);
            let n = space.len();
            if n == 0 {
                break;
            }
            space.copy_from_slice(&data[taken..taken + n]);
            self.commit(n);
            taken += n;
        }
        taken
    }

    /// Free space right after the held bytes, at most `max` bytes (less
    /// than `writable()` when the free space wraps around the ring's end:
    /// call again after [`SendBuf::commit`]). Empty when the buffer is full.
    pub fn spare(&mut self, max: usize) -> &mut [u8] {
        let want = max.min(self.writable());
        if want == 0 {
            return &mut [];
        }
        if self.ring.len() - self.len < want {
            self.grow(self.len + want);
        }
        let size = self.ring.len();
        let tail = (self.head + self.len) % size;
        let contiguous = if tail >= self.head && self.len < size {
            size - tail
        } else {
            self.head - tail
        };
        let n = contiguous.min(want);
        &mut self.ring[tail..tail + n]
    }

    /// The first `n` bytes of the last [`SendBuf::spare`] slice now hold
    /// application bytes: append them.
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.ring.len() - self.len, "commit beyond spare");
        self.len += n;
    }

    /// Grows the ring (up to `cap`) to hold at least `need` bytes;
    /// the held bytes move to its front.
    fn grow(&mut self, need: usize) {
        if self.ring.len() >= self.cap {
            return;
        }
        let size = need.max(self.ring.len() * 2).max(MIN_RING).min(self.cap);
        let mut ring = vec![0u8; size];
        let (a, b) = self.held();
        ring[..a.len()].copy_from_slice(a);
        ring[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.ring = ring;
        self.head = 0;
    }

    /// The held bytes (`una..end`) as the ring's two slices, in order.
    fn held(&self) -> (&[u8], &[u8]) {
        let size = self.ring.len();
        if self.head + self.len <= size {
            (&self.ring[self.head..self.head + self.len], &[])
        } else {
            let first = size - self.head;
            (&self.ring[self.head..], &self.ring[..self.len - first])
        }
    }

    /// Releases bytes up to `ack` if it is a believable new acknowledgement.
    /// Returns true when `una` advanced.
    pub fn ack(&mut self, ack: u64) -> bool {
        if ack <= self.una || ack > self.max_sent {
            return false;
        }
        let n = (ack - self.una) as usize;
        self.len -= n;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + n) % self.ring.len()
        };
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
        let (a, b) = self.held();
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
    fn send_buffer_fills_in_place_across_the_ring_end() {
        let mut s = SendBuf::new(10);
        let first = s.spare(100);
        assert_eq!(first.len(), 10, "grows up to cap, not beyond");
        first[..6].copy_from_slice(b"abcdef");
        s.commit(6);
        assert_eq!(s.take_chunk(4), Some((0, b"abcd".to_vec())));
        assert!(s.ack(4));
        // 2 held at ring[4..6]; free space wraps: ring[6..10] then ring[0..4].
        let tail = s.spare(100);
        assert_eq!(tail.len(), 4);
        tail.copy_from_slice(b"ghij");
        s.commit(4);
        let wrapped = s.spare(100);
        assert_eq!(wrapped.len(), 4);
        wrapped[..3].copy_from_slice(b"klm");
        s.commit(3);
        assert_eq!(s.writable(), 1);
        assert_eq!(s.take_chunk(100), Some((4, b"efghijklm".to_vec())));
        assert!(s.ack(13));
        assert_eq!((s.writable(), s.end()), (10, 13));
    }

    #[test]
    fn send_buffer_grows_keeping_order() {
        let mut s = SendBuf::new(1 << 20);
        let data = (0..20_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>();
        assert_eq!(s.push(&data[..3000]), 3000);
        assert_eq!(s.take_chunk(1000).unwrap().0, 0);
        assert!(s.ack(1000));
        assert_eq!(s.push(&data[3000..]), 17_000, "grown past the first ring");
        let (seq, chunk) = s.take_chunk(usize::MAX).unwrap();
        assert_eq!((seq, &chunk[..]), (1000, &data[1000..]));
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

#[cfg(test)]
mod ring_props {
    use super::SendBuf;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        InPlace(usize, usize),
        Take(usize),
        Ack(usize),
        Rewind,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..5000).prop_map(Op::Push),
            (1usize..5000, 0usize..5000).prop_map(|(m, n)| Op::InPlace(m, n)),
            (1usize..3000).prop_map(Op::Take),
            (0usize..6000).prop_map(Op::Ack),
            Just(Op::Rewind),
        ]
    }

    proptest! {
        /// The ring holds exactly the bytes of a plain model (`una..end` of the stream).
        #[test]
        fn ring_matches_a_plain_buffer(cap in 1usize..9000, ops in proptest::collection::vec(op(), 1..200)) {
            let mut s = SendBuf::new(cap);
            let mut stream: Vec<u8> = Vec::new(); // every byte ever written
            for op in ops {
                match op {
                    Op::Push(n) => {
                        let data: Vec<u8> = (stream.len()..stream.len() + n).map(|i| (i % 253) as u8).collect();
                        let taken = s.push(&data);
                        prop_assert_eq!(taken, n.min(cap - (stream.len() - s.una as usize)));
                        stream.extend_from_slice(&data[..taken]);
                    }
                    Op::InPlace(max, n) => {
                        let base = stream.len();
                        let space = s.spare(max);
                        let n = n.min(space.len());
                        for (k, b) in space[..n].iter_mut().enumerate() {
                            *b = ((base + k) % 253) as u8;
                        }
                        stream.extend(space[..n].iter().copied());
                        s.commit(n);
                    }
                    Op::Take(max) => {
                        if let Some((seq, chunk)) = s.take_chunk(max) {
                            let seq = seq as usize;
                            prop_assert_eq!(&chunk[..], &stream[seq..seq + chunk.len()]);
                        }
                    }
                    Op::Ack(k) => {
                        let ack = s.una + (k as u64 % (s.max_sent - s.una + 1));
                        s.ack(ack);
                    }
                    Op::Rewind => s.rewind(),
                }
                prop_assert_eq!(s.end(), stream.len() as u64);
                prop_assert_eq!(s.writable(), cap - (stream.len() - s.una as usize));
            }
        }
    }
}
