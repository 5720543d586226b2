//! The data path's I/O shell: SAL over kernel TCP between host agents
//! (stream flows) and over UDP (datagram flows, UDP semantics), on
//! its own tokio runtime (never on a Python thread, never holding the GIL).
//!
//! Contract: `docs/agent-datapath.md`; design and failure modes:
//! `hostagent/sal_core/README.md` ("Data path"). Decisions live in the pure
//! cores (`table`, `flow`, [`policy`], the event queue); the modules here
//! only feed them and perform their effects:
//!
//! - [`listener`]: accepts agent-to-agent connections, routes SYN / RSYN.
//! - [`connect`]: set-up by name with failover across targets, DELAY holds.
//! - [`driver`]: one task per flow: app fd ↔ flow machine ↔ TCP, migration.
//! - [`conn`]: one agent-to-agent TCP connection (reader + writer tasks).
//! - [`appfd`]: the app's socket fd, non-blocking.
//! - [`dgram`], [`dgram_connect`], [`dgram_flow`], [`seqpacket`]: datagram
//!   flows (UDP semantics) over UDP, their set-up and the app's seqpacket fd.
//! - [`shared`], [`events`], [`stats`]: state, the event queue, counters.
//!
//! Threads: the runtime's workers (`worker_threads`, default 2) run every
//! task; API calls only touch shared maps and channels, except
//! [`Datapath::poll_events`] (blocks the caller up to its timeout) and
//! [`Datapath::join`] (waits for the runtime to stop).

mod appfd;
mod conn;
mod connect;
mod dgram;
mod dgram_connect;
mod dgram_flow;
mod driver;
pub mod events;
mod listener;
pub mod policy;
mod seqpacket;
mod shared;
mod stats;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use appfd_api::{is_open_fd, is_seqpacket_fd};
pub use events::Event;

use crate::flow;
use crate::service_id::ServiceId;
use crate::table::{ApplySummary, TableConfig, TableError};
use dgram::{Dgram, DgramCmd};
use events::lock;
use shared::{FlowCmd, Shared};

mod appfd_api {
    /// True if `fd` is an open file descriptor (for bindings that take
    /// ownership of a raw fd).
    pub fn is_open_fd(fd: i32) -> bool {
        super::appfd::is_open(fd)
    }

    /// True if `fd` is a `SOCK_SEQPACKET` socket (a datagram flow's app fd).
    pub fn is_seqpacket_fd(fd: i32) -> bool {
        super::seqpacket::is_seqpacket(fd)
    }
}

/// Longest greeting `connect_with_greeting` accepts (it must fit a fresh
/// socket's send buffer: the driver never waits on it before relaying).
pub const MAX_GREETING: usize = 4096;

/// Tunables of a data path. Times are milliseconds.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// SAL listening addresses (port 0: any free port).
    pub sal_listen: Vec<SocketAddr>,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Capacity of the event queue (beyond: dropped, then `Overflow`).
    pub event_queue: usize,
    /// Most set-ups held by DELAY rules at once.
    pub delay_limit: usize,
    /// Flow machine tunables (buffers, windows, timeouts).
    pub flow: flow::Config,
    /// Longest TCP connect + SYN handshake per target during set-up.
    pub setup_timeout_ms: u64,
    /// A path (agent-to-agent TCP connection) that makes no progress this
    /// long — sent data unacknowledged, or an idle peer silent to keep-alive
    /// probes — counts as broken, and its flows resynchronise (see
    /// `conn::set_path_timeout`); 0 = the kernel's defaults (minutes).
    pub path_timeout_ms: u64,
    /// Reconnection backoff after a path loss: first / largest step.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// The acceptor's wait before it dials too (the initiator dials at once).
    pub acceptor_reconnect_wait_ms: u64,
    /// Flow machine tunables of datagram flows (message mode, keep-alive).
    pub dgram_flow: flow::Config,
    /// Messages queued toward an app of a datagram flow that does not
    /// read (beyond: dropped and counted, as UDP would).
    pub dgram_app_queue: usize,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            sal_listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            worker_threads: 2,
            event_queue: 4096,
            delay_limit: crate::table::DEFAULT_DELAY_LIMIT,
            flow: flow::Config {
                time_wait_ms: 2_000,
                ..flow::Config::stream()
            },
            setup_timeout_ms: 3_000,
            path_timeout_ms: 20_000,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 1_000,
            acceptor_reconnect_wait_ms: 300,
            dgram_flow: flow::Config::message(),
            dgram_app_queue: 256,
        }
    }
}

/// A running data path. Thread-safe; every method returns promptly except
/// `poll_events` and `join`, which block up to their timeouts.
pub struct Datapath {
    sh: Arc<Shared>,
    dg: Arc<Dgram>,
    handle: tokio::runtime::Handle,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Datapath {
    /// Binds the SAL listeners and starts the runtime's threads.
    pub fn start(cfg: DatapathConfig) -> io::Result<Datapath> {
        if cfg.sal_listen.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no SAL listen address",
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads.max(1))
            .thread_name("sal-datapath")
            .enable_all()
            .build()?;
        let mut bound = Vec::new();
        let mut listeners = Vec::new();
        for a in &cfg.sal_listen {
            let l = std::net::TcpListener::bind(a)?;
            l.set_nonblocking(true)?;
            bound.push(l.local_addr()?);
            listeners.push(l);
        }
        // UDP on the same ip:port as each TCP listener (datagram flows).
        let udp = Dgram::bind(&bound)?;
        let (dgram_cfg, app_queue) = (cfg.dgram_flow, cfg.dgram_app_queue);
        let sh = Arc::new(Shared::new(cfg, bound));
        let dg = {
            let _in_rt = rt.enter();
            for l in listeners {
                let l = tokio::net::TcpListener::from_std(l)?;
                rt.spawn(listener::accept_loop(sh.clone(), l));
            }
            Dgram::start(sh.clone(), udp, dgram_cfg, app_queue)?
        };
        Ok(Datapath {
            sh,
            dg,
            handle: rt.handle().clone(),
            rt: Mutex::new(Some(rt)),
        })
    }

    /// The bound SAL endpoints.
    pub fn sal_addresses(&self) -> Vec<SocketAddr> {
        self.sh.sal_addrs.clone()
    }

    /// The service table this data path resolves with.
    pub fn table(&self) -> &crate::table::ServiceTable {
        &self.sh.table
    }

    /// True once `shutdown` was called.
    pub fn is_stopping(&self) -> bool {
        self.sh.stopping()
    }

    /// Applies a whole desired table (see `table::ServiceTable::apply`).
    pub fn apply_table(&self, config: TableConfig) -> Result<ApplySummary, TableError> {
        self.sh.table.apply(config)
    }

    /// Accepts flows DEMUXed to `listener_id` (to `expose` if given).
    pub fn listen(&self, listener_id: u64, expose: Option<SocketAddr>) {
        lock(&self.sh.listeners).insert(listener_id, expose);
    }

    /// Accepts datagram flows DEMUXed to `listener_id` (each as an
    /// `Accepted` event whose fd is a seqpacket socket). A listener id is
    /// either a stream or a datagram listener: a stream SYN for a datagram
    /// listener (and vice versa) is refused with `NoService`.
    pub fn listen_datagram(&self, listener_id: u64) {
        lock(&self.sh.listeners).remove(&listener_id);
        lock(&self.dg.listeners).insert(listener_id);
    }

    /// No new flows for `listener_id`; false if it was not listening.
    pub fn unlisten(&self, listener_id: u64) -> bool {
        let stream = lock(&self.sh.listeners).remove(&listener_id).is_some();
        lock(&self.dg.listeners).remove(&listener_id) || stream
    }

    /// Sets up a datagram flow (UDP semantics) to `service` for the app
    /// behind `app_fd` (a `SOCK_SEQPACKET` socket, taken over: closed on
    /// failure); answers with `Connected` or `ConnectFailed`, as `connect`.
    pub fn connect_datagram(
        &self,
        request_id: u64,
        service: ServiceId,
        app_fd: OwnedFd,
        deadline: Duration,
    ) -> io::Result<()> {
        if !seqpacket::is_seqpacket(std::os::fd::AsRawFd::as_raw_fd(&app_fd)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a datagram flow's app fd must be a SOCK_SEQPACKET socket",
            ));
        }
        if self.sh.stopping() {
            return Err(io::Error::other("the data path is shut down"));
        }
        let req = connect::ConnectReq {
            request_id,
            service,
            app_fd,
            deadline: tokio::time::Instant::now() + deadline,
            greeting: Vec::new(),
        };
        self.handle.spawn(dgram_connect::run(self.dg.clone(), req));
        Ok(())
    }

    /// Sets up a flow to `service` for the app behind `app_fd` (taken over:
    /// closed on failure); answers with `Connected` or `ConnectFailed`.
    /// Request IDs should be unique among outstanding requests.
    pub fn connect(
        &self,
        request_id: u64,
        service: ServiceId,
        app_fd: OwnedFd,
        deadline: Duration,
    ) -> io::Result<()> {
        self.connect_with_greeting(request_id, service, app_fd, deadline, Vec::new())
    }

    /// `connect`, and once the flow is established the data path writes
    /// `greeting` to the app before any byte from the peer (at most
    /// [`MAX_GREETING`] bytes; nothing is written if the set-up fails).
    /// Serval's translator sends its SOCKS5 success reply this way, so the
    /// reply can neither lie about a failed set-up nor race the peer's bytes.
    pub fn connect_with_greeting(
        &self,
        request_id: u64,
        service: ServiceId,
        app_fd: OwnedFd,
        deadline: Duration,
        greeting: Vec<u8>,
    ) -> io::Result<()> {
        if greeting.len() > MAX_GREETING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("greeting longer than {MAX_GREETING} bytes"),
            ));
        }
        if self.sh.stopping() {
            return Err(io::Error::other("the data path is shut down"));
        }
        let req = connect::ConnectReq {
            request_id,
            service,
            app_fd,
            deadline: tokio::time::Instant::now() + deadline,
            greeting,
        };
        self.handle.spawn(connect::run(self.sh.clone(), req));
        Ok(())
    }

    /// Answers a `Delayed` event; false if `request_id` is not held.
    pub fn settle_delay(&self, request_id: u64, release: bool) -> bool {
        self.sh.settle(request_id, release)
    }

    /// A local address appeared (used for advertised endpoints and as a
    /// source for reconnections).
    pub fn address_added(&self, ip: IpAddr) {
        lock(&self.sh.local_ips).insert(ip);
        lock(&self.sh.removed_ips).remove(&ip);
        self.sh.tell_all(|| FlowCmd::AddressAdded);
        self.dg.tell_all(|| DgramCmd::AddressAdded);
    }

    /// A local address disappeared: flows whose path used it reconnect
    /// from another address and resynchronise.
    pub fn address_removed(&self, ip: IpAddr) {
        lock(&self.sh.local_ips).remove(&ip);
        lock(&self.sh.removed_ips).insert(ip);
        self.sh.tell_all(|| FlowCmd::AddressRemoved(ip));
        self.dg.tell_all(|| DgramCmd::AddressRemoved(ip));
    }

    /// Up to `max` events; blocks up to `timeout` while there are none.
    pub fn poll_events(&self, max: usize, timeout: Duration) -> Vec<Event> {
        self.sh.events.poll(max, timeout)
    }

    /// Counters, named as in the contract.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let mut s = self.sh.stats.snapshot(self.sh.events.total_dropped());
        s.extend(self.dg.snapshot());
        s
    }

    /// Fault injection (tests, chaos drills): resets the TCP connection
    /// under flow `flow_id` as if the path broke; false if no such flow.
    pub fn debug_break_path(&self, flow_id: u64) -> bool {
        self.sh.tell(flow_id, FlowCmd::BreakPath)
    }

    /// Phase one of stopping: no new connections or set-ups; every flow is
    /// reset (RST, reason `Aborted`). Returns at once.
    pub fn shutdown(&self) {
        self.sh.stop.send_replace(true);
    }

    /// Phase two: waits up to `timeout` for the flows to finish, then stops
    /// the runtime. True if everything ended in time. Implies `shutdown`.
    pub fn join(&self, timeout: Duration) -> bool {
        self.shutdown();
        let deadline = Instant::now() + timeout;
        let busy = || !lock(&self.sh.flows).is_empty() || self.dg.active() > 0;
        while busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let clean = !busy();
        // Let writers flush the RSTs the drivers queued on their way out.
        std::thread::sleep(Duration::from_millis(20).min(timeout));
        if let Some(rt) = lock(&self.rt).take() {
            rt.shutdown_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        clean
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(rt) = lock(&self.rt).take() {
            rt.shutdown_background();
        }
    }
}
