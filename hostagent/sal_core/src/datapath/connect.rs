//! Flow set-up by name, the initiator's side (one task per `connect`).
//!
//! Contract: resolve the service ID with a random per-flow key; FORWARD →
//! open TCP to the target (the remote agent's SAL endpoint) and run the SYN
//! handshake, each attempt bounded by the request deadline and by
//! `setup_timeout_ms`; a refusal (RST), an unreachable target or a timeout
//! is recorded in `tried`, reported as `TargetFailed`, excluded, and the ID
//! re-resolved — until a flow is established (`Connected`) or nothing is
//! left or the deadline passed (`ConnectFailed`, the app fd is closed).
//! DEMUX (a local listener) → the same handshake over our own SAL endpoint
//! (loopback): one code path for local and remote flows. DELAY → the
//! set-up is held (bounded queue) and `Delayed` emitted until
//! `settle_delay`. DROP / no route → `ConnectFailed`.
//!
//! A request may carry a greeting: bytes the driver writes to the app fd
//! once the flow is established, before any byte from the peer (a SOCKS5
//! success reply for the translator). On failure nothing is written.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

use super::conn::{self, why};
use super::driver;
use super::events::{lock, Event as DpEvent};
use super::policy;
use super::shared::{random_u64, Shared};
use super::stats::Stats;
use crate::flow::{Effect, Event, Flow};
use crate::service_id::ServiceId;
use crate::table::{DelayVerdict, Verdict};
use crate::wire::{self, Decoded};

pub(crate) struct ConnectReq {
    pub request_id: u64,
    pub service: ServiceId,
    pub app_fd: OwnedFd,
    pub deadline: Instant,
    /// Written to the app once the flow is established, before any relayed byte.
    pub greeting: Vec<u8>,
}

/// A flow established over `stream` to `target`.
struct Established {
    flow: Flow,
    stream: TcpStream,
    leftover: Vec<u8>,
    target: SocketAddr,
}

pub(crate) async fn run(sh: Arc<Shared>, req: ConnectReq) {
    let ConnectReq {
        request_id,
        service,
        app_fd,
        deadline,
        greeting,
    } = req;
    let found = with_failover(
        &sh,
        request_id,
        service,
        deadline,
        &sh.sal_addrs,
        |target| attempt(&sh, target, service, deadline),
    )
    .await;
    if let Some(est) = found {
        start(&sh, request_id, est, app_fd, greeting);
    }
}

/// The set-up loop shared by stream and datagram flows: resolve `service`
/// (random per-flow key), `attempt` the chosen target (DEMUX: our own
/// endpoint among `local`, loopback), and on failure report `TargetFailed`,
/// exclude it and re-resolve; DELAY holds the set-up. Returns the first
/// success; otherwise emits `ConnectFailed` (naming the service and every
/// try) and returns None — the caller then drops the app fd.
pub(crate) async fn with_failover<T, F, Fut>(
    sh: &Arc<Shared>,
    request_id: u64,
    service: ServiceId,
    deadline: Instant,
    local: &[SocketAddr],
    mut attempt: F,
) -> Option<T>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let flow_key = random_u64();
    let mut tried: Vec<(SocketAddr, String)> = Vec::new();
    let mut exclude: Vec<SocketAddr> = Vec::new();
    let what: String = loop {
        if sh.stopping() {
            break "the data path is shutting down".into();
        }
        if Instant::now() >= deadline {
            break "no target reachable before the deadline".into();
        }
        let target = match sh.table.resolve(&service.bytes, flow_key, &exclude) {
            Verdict::Forward(t) => t.addr,
            Verdict::Demux(_) => match policy::loopback_endpoint(local) {
                Some(me) if !exclude.contains(&me) => me,
                _ => break "local listener unreachable".into(),
            },
            Verdict::Delay => match hold(sh, request_id, service, deadline).await {
                Ok(()) => continue,
                Err(what) => break what.into(),
            },
            Verdict::Drop => break "dropped by a DROP rule".into(),
            Verdict::NoTarget if tried.is_empty() => break "no eligible target".into(),
            Verdict::NoTarget => break "no target reachable".into(),
            Verdict::NoRoute => break "no route".into(),
        };
        match attempt(target).await {
            Ok(found) => return Some(found),
            Err(reason) => {
                Stats::bump(&sh.stats.failovers);
                sh.emit(DpEvent::TargetFailed {
                    request_id,
                    target,
                    reason: reason.clone(),
                });
                tried.push((target, reason));
                exclude.push(target);
            }
        }
    };
    Stats::bump(&sh.stats.connect_failures);
    sh.emit(DpEvent::ConnectFailed {
        request_id,
        reason: policy::connect_failure(&service.to_hex(), &what, &tried),
        tried,
    });
    None
}

/// Counts an established flow and tells the control plane (`Connected`).
pub(crate) fn opened(sh: &Shared, request_id: u64, flow_id: u64, target: SocketAddr) {
    Stats::bump(&sh.stats.flows_opened);
    Stats::bump(&sh.stats.flows_active);
    sh.emit(DpEvent::Connected {
        request_id,
        flow_id,
        target,
    });
}

fn start(sh: &Arc<Shared>, request_id: u64, est: Established, app_fd: OwnedFd, greeting: Vec<u8>) {
    opened(sh, request_id, est.flow.local_flow(), est.target);
    let peer = Some(est.target);
    driver::spawn(
        sh.clone(),
        est.flow,
        true,
        app_fd,
        est.stream,
        est.leftover,
        peer,
        greeting,
    );
}

/// One target: TCP connect, SYN, wait for SYN-ACK (→ established) or RST.
async fn attempt(
    sh: &Shared,
    target: SocketAddr,
    service: ServiceId,
    deadline: Instant,
) -> Result<Established, String> {
    let cap = Instant::now() + std::time::Duration::from_millis(sh.cfg.setup_timeout_ms);
    let until = deadline.min(cap);
    let left = until.saturating_duration_since(Instant::now());
    let mut stream = conn::connect(target, None, left, sh.cfg.path_timeout_ms)
        .await
        .map_err(|e| why(&e))?;
    let id = sh.new_flow_id();
    let mut flow = Flow::connect_advertising(
        sh.cfg.flow,
        service,
        id,
        random_u64(),
        sh.advertised(),
        sh.now_ms(),
    );
    let mut buf = Vec::with_capacity(4096);
    timeout_at(until, handshake(sh, &mut flow, &mut stream, &mut buf))
        .await
        .map_err(|_| "timeout".to_string())??;
    Ok(Established {
        flow,
        stream,
        leftover: buf,
        target,
    })
}

async fn handshake(
    sh: &Shared,
    flow: &mut Flow,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    loop {
        let mut out = Vec::new();
        let mut outcome = None;
        for e in flow.take_effects() {
            match e {
                Effect::Send(f) => {
                    let _ = wire::encode(&f.as_frame(), &mut out);
                }
                Effect::Event(Event::Established) => outcome = Some(Ok(())),
                Effect::Event(Event::Reset { reason, .. }) => {
                    outcome = Some(Err(policy::rst_text(reason)))
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| why(&e))?;
        }
        if let Some(o) = outcome {
            return o;
        }
        loop {
            match wire::decode_stream(buf) {
                Ok(Decoded::Frame(f, used)) => {
                    flow.on_frame(&f, sh.now_ms());
                    buf.drain(..used);
                    break;
                }
                Ok(Decoded::NeedMore(_)) => {
                    if stream.read_buf(buf).await.map_err(|e| why(&e))? == 0 {
                        return Err("closed during set-up".into());
                    }
                }
                Err(e) => return Err(format!("bad frame: {e}")),
            }
        }
    }
}

/// Holds the set-up for the control plane's verdict (`settle_delay`).
async fn hold(
    sh: &Shared,
    request_id: u64,
    service: ServiceId,
    deadline: Instant,
) -> Result<(), &'static str> {
    let (tx, rx) = oneshot::channel();
    {
        let mut held = lock(&sh.held);
        let ticket = held
            .queue
            .push(service.bytes, tx)
            .map_err(|_| "delay queue full")?;
        held.tickets.insert(request_id, ticket);
    }
    sh.emit(DpEvent::Delayed {
        request_id,
        service_id: service.bytes,
    });
    match timeout_at(deadline, rx).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err("dropped by the control plane"),
        Err(_) => {
            let mut held = lock(&sh.held);
            if let Some(t) = held.tickets.remove(&request_id) {
                let _ = held.queue.settle(t, DelayVerdict::Drop);
            }
            Err("not released before the deadline")
        }
    }
}
