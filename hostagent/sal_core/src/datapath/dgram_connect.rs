//! Datagram flow set-up by name, the initiator's side (one task per
//! `connect_datagram`).
//!
//! Same contract as stream set-up (`connect.rs`): resolve with a random
//! per-flow key; FORWARD → SYN over UDP to the target (the remote agent's
//! SAL endpoint, the same `ip:port` as its TCP listener), retransmitted by
//! the machine with backoff, each attempt bounded by `setup_timeout_ms` and
//! the deadline; an RST (refusal), an ICMP-unreachable or a timeout is
//! reported as `TargetFailed`, excluded, and the ID re-resolved, until
//! `Connected` or `ConnectFailed` (naming the service and what was tried;
//! the app fd is then closed). DEMUX → the same handshake to our own UDP
//! endpoint (loopback). DELAY → held like a stream set-up.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::{sleep_until, Instant};

use super::connect::{opened, with_failover, ConnectReq};
use super::dgram_flow::{self, register, send_frames, unregister, Rx};
use super::policy;
use super::shared::random_u64;
use super::Dgram;
use crate::flow::{Effect, Event, Flow};
use crate::service_id::ServiceId;
use crate::wire;

pub(crate) async fn run(dg: Arc<Dgram>, req: ConnectReq) {
    let ConnectReq {
        request_id,
        service,
        app_fd,
        deadline,
        ..
    } = req;
    let sh = dg.sh.clone();
    let found = with_failover(&sh, request_id, service, deadline, &dg.local, |target| {
        let dg = &dg;
        async move {
            attempt(dg, target, service, deadline)
                .await
                .map(|est| (est, target))
        }
    })
    .await;
    if let Some(((flow, rx, via), target)) = found {
        opened(&sh, request_id, flow.local_flow(), target);
        dgram_flow::spawn(dg.clone(), flow, app_fd, rx, target, via, None);
    }
}

/// One target: SYN (retransmitted) until SYN-ACK (established), RST, an
/// unreachable error, or `min(deadline, now + setup_timeout_ms)`.
async fn attempt(
    dg: &Arc<Dgram>,
    target: SocketAddr,
    service: ServiceId,
    deadline: Instant,
) -> Result<(Flow, Rx, usize), String> {
    let sh = &dg.sh;
    let cap = Instant::now() + std::time::Duration::from_millis(sh.cfg.setup_timeout_ms);
    let until = deadline.min(cap);
    let via = dg
        .pick_socket(target, None)
        .ok_or_else(|| "no UDP socket of that address family".to_string())?;
    let id = dg.new_flow_id();
    let mut rx = register(dg, id).ok_or_else(|| "flow ID clash".to_string())?;
    let mut flow = Flow::connect_advertising(
        dg.cfg,
        service,
        id,
        random_u64(),
        sh.advertised(),
        sh.now_ms(),
    );
    let r = handshake(dg, &mut flow, &mut rx, target, via, until).await;
    match r {
        Ok(()) => Ok((flow, rx, via)),
        Err(e) => {
            unregister(dg, id, None);
            Err(e)
        }
    }
}

async fn handshake(
    dg: &Dgram,
    flow: &mut Flow,
    rx: &mut Rx,
    target: SocketAddr,
    via: usize,
    until: Instant,
) -> Result<(), String> {
    let mut stop = dg.sh.stop.subscribe();
    loop {
        for e in send_frames(dg, flow, via, target) {
            match e {
                Effect::Event(Event::Established) => return Ok(()),
                Effect::Event(Event::Reset { reason, .. }) => {
                    return Err(policy::rst_text(reason));
                }
                _ => {}
            }
        }
        let tick = flow.next_deadline().map(|t| dg.sh.instant(t));
        let wake = tick.map_or(until, |t| t.min(until));
        if dg.sh.stopping() {
            return Err("the data path is shutting down".into());
        }
        tokio::select! {
            _ = stop.changed() => {}
            inb = rx.frames.recv() => {
                let Some(inb) = inb else { return Err("closed during set-up".into()) };
                if let Ok(frame) = wire::decode_datagram(&inb.bytes) {
                    flow.on_frame(&frame, dg.sh.now_ms());
                }
            }
            _ = sleep_until(wake) => {
                if Instant::now() >= until {
                    return Err("timeout".into());
                }
                flow.tick(dg.sh.now_ms());
            }
        }
    }
}
