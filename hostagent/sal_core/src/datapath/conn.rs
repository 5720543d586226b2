//! One agent-to-agent TCP connection under a flow: a reader task that
//! delimits SAL frames (`wire::decode_stream`) and a writer task fed by an
//! unbounded queue, so the flow's driver never blocks on the network.
//!
//! Contract: the frames read, or the connection's end, are reported on the
//! driver's channel as [`ConnEvent`]s tagged with the connection's id.
//! Frames travel as one shared slice of the read buffer per read (whole,
//! checked frames, in order; no copy per frame). Sends are lists of
//! buffers (a data frame is its encoded head + the payload it owns) that
//! the writer gathers into `writev` calls of up to [`WRITE_BATCH`] bytes.
//! Queued bytes are bounded by the flow's windows (the peer's receive
//! window for data, a few control frames besides); [`Conn::send`] refuses
//! beyond [`MAX_QUEUED`] and the driver then treats the path as broken.
//! [`Conn::close`] flushes what is queued, then sends TCP FIN;
//! [`Conn::abort`] resets the connection at once. Also here: dialling
//! ([`connect`], and [`redial`] for a flow that lost its path) and the
//! framing of what a driver sends ([`Outgoing`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::appfd::set_zero_linger;
use super::events::lock;
use super::policy;
use super::shared::{random_u64, FlowCmd, Shared};
use crate::wire::{
    decode_stream, encode_head, Decoded, Frame, OwnedFrame, WireError, MAX_HEADER_LEN,
};

/// Most bytes queued for one connection before it counts as broken.
pub(crate) const MAX_QUEUED: usize = 16 << 20;
/// Room made in the read buffer before each read (bytes per `recv` at most).
const READ_CHUNK: usize = 256 * 1024;
/// Most bytes (and buffers) per `writev`.
const WRITE_BATCH: usize = 512 * 1024;
const WRITE_IOVECS: usize = 64;

/// What a connection reports to its flow's driver.
pub(crate) enum ConnEvent {
    /// One or more whole frames, back to back (they decoded without error).
    Frames(u64, Bytes),
    Down(u64, String),
}

/// A live connection owned by a flow's driver.
pub(crate) struct Conn {
    pub id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    tx: Option<mpsc::UnboundedSender<Vec<Vec<u8>>>>,
    queued: Arc<AtomicUsize>,
    /// A duplicate of the socket fd: lets `abort` set SO_LINGER 0 whatever
    /// the tasks are doing (the socket closes when all copies are gone).
    sock: OwnedFd,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Opens a TCP connection to `to` (source `from` if given) within `timeout`;
/// the connection counts as broken after `path_timeout_ms` without progress
/// ([`set_path_timeout`]).
pub(crate) async fn connect(
    to: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
    path_timeout_ms: u64,
) -> io::Result<TcpStream> {
    let sock = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = from {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = tokio::time::timeout(timeout, sock.connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))??;
    s.set_nodelay(true)?;
    set_path_timeout(&s, path_timeout_ms)?;
    Ok(s)
}

/// Makes a silent path fail within about `ms` instead of the kernel's
/// defaults (15 minutes of retransmission for unacknowledged data, 2 hours
/// before the first keep-alive probe of an idle connection): sent data
/// unacknowledged for `ms` ends the connection (`TCP_USER_TIMEOUT`), and an
/// idle connection is probed after `ms / 2`, then 3 times `ms / 6` apart
/// (keep-alive). The connection then reports `Down` and its flow
/// resynchronises over a new one (another address of the peer or of this
/// host if the path is gone), or resets after `resync_timeout_ms`.
/// `ms == 0` keeps the kernel's defaults.
pub(crate) fn set_path_timeout(s: &impl AsRawFd, ms: u64) -> io::Result<()> {
    if ms == 0 {
        return Ok(());
    }
    let secs = |v: u64| i32::try_from((v / 1000).max(1)).unwrap_or(i32::MAX);
    let user_timeout = i32::try_from(ms).unwrap_or(i32::MAX);
    let opts = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(ms / 2)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(ms / 6)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout),
    ];
    for (level, name, value) in opts {
        // SAFETY: a valid socket fd and a pointer to an int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Capacity of a buffer of packed control frames / data frame heads.
const SMALL_BUF: usize = 4 * MAX_HEADER_LEN;

/// Encoded frames for one connection (what [`Conn::send`] takes), in
/// order: control frames and frame heads are packed into small buffers; a
/// data frame's payload follows its head as the buffer the machine handed
/// over (sent with `writev`, not copied).
#[derive(Default)]
pub(crate) struct Outgoing {
    pub bufs: Vec<Vec<u8>>,
}

impl Outgoing {
    pub(crate) fn push(&mut self, f: OwnedFrame) {
        let small = match self.bufs.last_mut() {
            Some(b) if b.capacity() - b.len() >= MAX_HEADER_LEN => b,
            _ => {
                self.bufs.push(Vec::with_capacity(SMALL_BUF));
                self.bufs.last_mut().expect("just pushed")
            }
        };
        // Frames made by the machine always encode.
        let _ = encode_head(&f.as_frame(), small);
        if !f.payload.is_empty() {
            self.bufs.push(f.payload);
        }
    }
}

/// The frames of a [`ConnEvent::Frames`] buffer, in order (the reader
/// checked that every one decodes).
pub(crate) fn frames(buf: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || match decode_stream(rest) {
        Ok(Decoded::Frame(f, used)) => {
            rest = &rest[used..];
            Some(f)
        }
        _ => None,
    })
}

/// Dials `targets` in turn (source address chosen from the host's current
/// addresses) with jittered backoff until one answers, then hands the
/// connection to the flow's driver, which cancels this when no longer needed.
pub(crate) async fn redial(
    sh: Arc<Shared>,
    targets: Vec<SocketAddr>,
    first_delay_ms: u64,
    tx: mpsc::UnboundedSender<FlowCmd>,
) {
    tokio::time::sleep(Duration::from_millis(first_delay_ms)).await;
    let timeout = Duration::from_millis(sh.cfg.reconnect_max_ms.max(500));
    for attempt in 0u32.. {
        let to = targets[attempt as usize % targets.len()];
        let from = policy::choose_source(&lock(&sh.local_ips), to, kernel_source(to));
        if let Ok(s) = connect(to, from, timeout, sh.cfg.path_timeout_ms).await {
            let _ = tx.send(FlowCmd::Reconnected(s));
            return;
        }
        let cfg = &sh.cfg;
        let wait = policy::backoff_ms(
            attempt,
            cfg.reconnect_initial_ms,
            cfg.reconnect_max_ms,
            random_u64(),
        );
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// The source address the kernel's route lookup picks toward `dest` (a
/// connected UDP socket: no packet is sent); `None` if there is no route.
pub(crate) fn kernel_source(dest: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if dest.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(dest).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

/// Short text of a connection error, for `tried` lists and events.
pub(crate) fn why(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        _ => e.to_string(),
    }
}

impl Conn {
    /// Starts the reader (fed `initial` bytes already read) and the writer.
    pub(crate) fn spawn(
        stream: TcpStream,
        initial: Vec<u8>,
        id: u64,
        events: mpsc::Sender<ConnEvent>,
    ) -> io::Result<Conn> {
        let local = stream.local_addr()?;
        let remote = stream.peer_addr()?;
        let sock = stream.as_fd().try_clone_to_owned()?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let reader = tokio::spawn(read_loop(rd, initial, id, events.clone()));
        let writer = tokio::spawn(write_loop(wr, rx, queued.clone(), id, events));
        Ok(Conn {
            id,
            local,
            remote,
            tx: Some(tx),
            queued,
            sock,
            reader,
            writer,
        })
    }

    /// Queues encoded frames (buffers sent in order, back to back); false
    /// if the connection is gone or overfull.
    pub(crate) fn send(&self, bytes: Vec<Vec<u8>>) -> bool {
        let n = bytes.iter().map(Vec::len).sum();
        if self.queued.load(Relaxed) + n > MAX_QUEUED {
            return false;
        }
        self.queued.fetch_add(n, Relaxed);
        self.tx.as_ref().is_some_and(|tx| tx.send(bytes).is_ok())
    }

    /// Orderly end: the writer flushes the queue, then sends FIN.
    pub(crate) fn close(mut self) {
        self.tx = None;
    }

    /// Resets the connection now; queued bytes are discarded.
    pub(crate) fn abort(self) {
        set_zero_linger(self.sock.as_raw_fd());
        self.reader.abort();
        self.writer.abort();
    }
}

async fn read_loop(mut rd: OwnedReadHalf, initial: Vec<u8>, id: u64, tx: mpsc::Sender<ConnEvent>) {
    let mut buf = BytesMut::from(&initial[..]);
    loop {
        let used = match whole_frames(&buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx
                    .send(ConnEvent::Down(id, format!("bad frame: {e}")))
                    .await;
                return;
            }
        };
        if used > 0 {
            let frames = buf.split_to(used).freeze();
            if tx.send(ConnEvent::Frames(id, frames)).await.is_err() {
                return;
            }
        }
        buf.reserve(READ_CHUNK);
        let r = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = tx.closed() => return,
        };
        match r {
            Ok(0) => {
                let _ = tx.send(ConnEvent::Down(id, "closed by peer".into())).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(ConnEvent::Down(id, why(&e))).await;
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Length of the whole, valid frames at the front of `buf`.
fn whole_frames(buf: &[u8]) -> Result<usize, WireError> {
    let mut used = 0;
    while let Decoded::Frame(_, n) = decode_stream(&buf[used..])? {
        used += n;
    }
    Ok(used)
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
    queued: Arc<AtomicUsize>,
    id: u64,
    events: mpsc::Sender<ConnEvent>,
) {
    let mut bufs: VecDeque<Vec<u8>> = VecDeque::new();
    while let Some(first) = rx.recv().await {
        bufs.extend(first);
        let mut total: usize = bufs.iter().map(Vec::len).sum();
        while total < WRITE_BATCH && bufs.len() < WRITE_IOVECS {
            let Ok(more) = rx.try_recv() else { break };
            total += more.iter().map(Vec::len).sum::<usize>();
            bufs.extend(more);
        }
        if let Err(e) = write_all(&mut wr, &mut bufs).await {
            let _ = events.send(ConnEvent::Down(id, why(&e))).await;
            return;
        }
        queued.fetch_sub(total, Relaxed);
    }
    let _ = wr.shutdown().await;
}

/// Writes every buffer of `bufs` in order with `writev` (leaves it empty).
async fn write_all(wr: &mut OwnedWriteHalf, bufs: &mut VecDeque<Vec<u8>>) -> io::Result<()> {
    let mut off = 0; // bytes of the front buffer already written
    while !bufs.is_empty() {
        let slices: Vec<IoSlice<'_>> = bufs
            .iter()
            .take(WRITE_IOVECS)
            .enumerate()
            .map(|(i, b)| IoSlice::new(if i == 0 { &b[off..] } else { b }))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while let Some(front) = bufs.front() {
            let left = front.len() - off;
            if n < left {
                off += n;
                break;
            }
            n -= left;
            off = 0;
            bufs.pop_front();
        }
    }
    Ok(())
}
