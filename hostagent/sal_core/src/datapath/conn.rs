//! One agent-to-agent TCP connection under a flow: a reader task that
//! delimits SAL frames (`wire::decode_stream`) and a writer task fed by an
//! unbounded queue, so the flow's driver never blocks on the network.
//!
//! Contract: every frame read, or the connection's end, is reported on the
//! driver's channel as a [`ConnEvent`] tagged with the connection's id.
//! Queued bytes are bounded by the flow's windows (the peer's receive
//! window for data, a few control frames besides); [`Conn::send`] refuses
//! beyond [`MAX_QUEUED`] and the driver then treats the path as broken.
//! [`Conn::close`] flushes what is queued, then sends TCP FIN;
//! [`Conn::abort`] resets the connection at once.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::appfd::set_zero_linger;
use crate::wire::{decode_stream, Decoded, OwnedFrame};

/// Most bytes queued for one connection before it counts as broken.
pub(crate) const MAX_QUEUED: usize = 16 << 20;
const READ_CHUNK: usize = 64 * 1024;
const WRITE_BATCH: usize = 256 * 1024;

/// What a connection reports to its flow's driver.
pub(crate) enum ConnEvent {
    Frames(u64, Vec<OwnedFrame>),
    Down(u64, String),
}

/// A live connection owned by a flow's driver.
pub(crate) struct Conn {
    pub id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    tx: Option<mpsc::UnboundedSender<Vec<u8>>>,
    queued: Arc<AtomicUsize>,
    /// A duplicate of the socket fd: lets `abort` set SO_LINGER 0 whatever
    /// the tasks are doing (the socket closes when all copies are gone).
    sock: OwnedFd,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Opens a TCP connection to `to` (source `from` if given) within `timeout`.
pub(crate) async fn connect(
    to: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
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
    Ok(s)
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

    /// Queues encoded frames; false if the connection is gone or overfull.
    pub(crate) fn send(&self, bytes: Vec<u8>) -> bool {
        let n = bytes.len();
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

async fn read_loop(mut rd: OwnedReadHalf, mut buf: Vec<u8>, id: u64, tx: mpsc::Sender<ConnEvent>) {
    loop {
        let mut frames = Vec::new();
        let mut used = 0;
        loop {
            match decode_stream(&buf[used..]) {
                Ok(Decoded::Frame(f, n)) => {
                    frames.push(f.to_owned_frame());
                    used += n;
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => {
                    let _ = tx
                        .send(ConnEvent::Down(id, format!("bad frame: {e}")))
                        .await;
                    return;
                }
            }
        }
        buf.drain(..used);
        if !frames.is_empty() && tx.send(ConnEvent::Frames(id, frames)).await.is_err() {
            return;
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

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    id: u64,
    events: mpsc::Sender<ConnEvent>,
) {
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&batch).await {
            let _ = events.send(ConnEvent::Down(id, why(&e))).await;
            return;
        }
        queued.fetch_sub(batch.len(), Relaxed);
    }
    let _ = wr.shutdown().await;
}
