//! The SAL listener: accepts agent-to-agent TCP connections and routes
//! each by its first frame.
//!
//! - SYN (destination flow 0): resolve the service ID; a DEMUX verdict to a
//!   registered listener accepts the flow (SYN-ACK) — its app side is a new
//!   socketpair whose other end goes to the control plane in `Accepted`, or
//!   for an `expose`d listener a TCP connection to that local server (no
//!   event). Anything else is refused with an RST (`NoService`; `Refused`
//!   if the exposed server cannot be reached).
//! - RSYN for a known destination flow ID: handed to that flow's driver,
//!   which adopts the connection iff the RSYN is authentic.
//! - Anything else, or nothing within [`FIRST_FRAME_TIMEOUT`]: closed.
//!
//! Each connection carries exactly one flow (simple and robust: no
//! head-of-line blocking between flows; the kernel does congestion control
//! per flow).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::appfd::socketpair;
use super::conn;
use super::driver;
use super::events::{lock, Event as DpEvent};
use super::shared::{random_u64, FlowCmd, Shared};
use super::stats::Stats;
use crate::flow::{self, SynInfo};
use crate::table::Verdict;
use crate::wire::{self, ctl, Decoded, RstReason};

/// How long a new connection may take to send its first frame.
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for an exposed local server to accept.
const EXPOSE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    let mut stop = sh.stop.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    tokio::spawn(incoming(sh.clone(), s, peer));
                }
                // Out of fds and the like: back off a little.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = stop.changed() => return,
        }
    }
}

async fn incoming(sh: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let _ = super::conn::set_path_timeout(&stream, sh.cfg.path_timeout_ms);
    let mut buf = Vec::with_capacity(4096);
    let Ok(Some(used)) =
        tokio::time::timeout(FIRST_FRAME_TIMEOUT, first_frame(&mut stream, &mut buf)).await
    else {
        return;
    };
    let Ok((frame, _)) = wire::decode(&buf[..used]) else {
        return;
    };
    if frame.header.dst_flow == 0 {
        if let Some(syn) = SynInfo::parse(&frame) {
            on_syn(sh, stream, syn, buf.split_off(used), peer).await;
        }
        return;
    }
    let is_rsyn = frame
        .ext
        .control
        .is_some_and(|c| c.flags & ctl::RSYN != 0 && c.flags & ctl::ACK == 0);
    let dst = frame.header.dst_flow;
    // A new path to an address we were told is gone would break again (on
    // a real host it cannot even arrive): leave it, so the peer's redial
    // moves on to our other endpoints.
    let to_removed = stream
        .local_addr()
        .is_ok_and(|a| lock(&sh.removed_ips).contains(&a.ip()));
    if to_removed {
        return;
    }
    if !is_rsyn || !sh.tell(dst, FlowCmd::IncomingPath { stream, buf }) {
        Stats::bump(&sh.stats.rsyn_rejected);
    }
}

/// Reads until one whole frame is buffered; its length, or None.
async fn first_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        match wire::decode_stream(buf) {
            Ok(Decoded::Frame(_, used)) => return Some(used),
            Ok(Decoded::NeedMore(_)) => {
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

async fn on_syn(
    sh: Arc<Shared>,
    mut stream: TcpStream,
    syn: SynInfo,
    rest: Vec<u8>,
    peer: SocketAddr,
) {
    let verdict = if sh.stopping() {
        Verdict::Drop
    } else {
        sh.table.resolve(&syn.service.bytes, random_u64(), &[])
    };
    let listener = match verdict {
        Verdict::Demux(l) => lock(&sh.listeners).get(&l).map(|expose| (l, *expose)),
        _ => None,
    };
    let Some((listener_id, expose)) = listener else {
        return refuse(&sh, &mut stream, &syn, RstReason::NoService).await;
    };
    let (ours, theirs): (OwnedFd, Option<OwnedFd>) = match expose {
        None => match socketpair() {
            Ok((a, b)) => (a, Some(b)),
            Err(_) => return refuse(&sh, &mut stream, &syn, RstReason::Resources).await,
        },
        Some(addr) => match exposed(addr).await {
            Some(fd) => (fd, None),
            None => return refuse(&sh, &mut stream, &syn, RstReason::Refused).await,
        },
    };
    let id = sh.new_flow_id();
    let f = flow::accept_advertising(
        sh.cfg.flow,
        &syn,
        id,
        random_u64(),
        sh.advertised(),
        sh.now_ms(),
    );
    Stats::bump(&sh.stats.flows_accepted);
    Stats::bump(&sh.stats.flows_active);
    if let Some(app_fd) = theirs {
        sh.emit(DpEvent::Accepted {
            listener_id,
            flow_id: id,
            app_fd,
            peer,
        });
    }
    driver::spawn(sh, f, false, ours, stream, rest, None, Vec::new());
}

/// A connection to an exposed local server, as an owned fd.
async fn exposed(addr: SocketAddr) -> Option<OwnedFd> {
    let s = conn::connect(addr, None, EXPOSE_CONNECT_TIMEOUT, 0) // a local app, not a path
        .await
        .ok()?;
    Some(OwnedFd::from(s.into_std().ok()?))
}

async fn refuse(sh: &Shared, stream: &mut TcpStream, syn: &SynInfo, reason: RstReason) {
    Stats::bump(&sh.stats.flows_refused);
    let mut out = Vec::new();
    if wire::encode(&flow::refuse(syn, reason).as_frame(), &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
    }
    let _ = stream.shutdown().await;
}
