//! PyO3 glue for the data path: the `DatapathRef` class, registered by
//! `binding.rs`. No logic: it converts plain values, calls
//! `crate::datapath::Datapath`, and releases the GIL around anything that
//! may wait (start, apply_table, poll_events, join).
//!
//! Shapes (typed wrapper: `hostagent/sal_core/datapath.py`):
//! - addresses: `(ip: str, port: int)`; rules: as `ServiceTableRef.apply`.
//! - events: tuples `(kind, *fields)`:
//!   `("connected", request_id, flow_id, target)`,
//!   `("connect_failed", request_id, reason, [(target_str, why)])`,
//!   `("accepted", listener_id, flow_id, app_fd, peer)` (the caller owns
//!   `app_fd` from then on), `("delayed", request_id, service_id)`,
//!   `("migrated", flow_id, local, remote)`,
//!   `("target_failed", request_id, target, reason)`,
//!   `("flow_closed", flow_id, reason)`, `("overflow", dropped)`.
//! - Errors: invalid arguments → `ValueError`; bind failures → `OSError`;
//!   calls after `shutdown` → `RuntimeError`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::binding_desired::{DesiredRef, Listeners};
use crate::binding_table::{apply_desired, apply_rules, service_id, socket_addr, RuleTuple};
use crate::datapath::{is_open_fd, is_seqpacket_fd, Datapath, DatapathConfig, Event, MAX_GREETING};
use crate::flow;
use crate::service_id::ServiceId;

type AddrTuple = (String, u16);

fn addr_tuple(a: SocketAddr) -> AddrTuple {
    (a.ip().to_string(), a.port())
}

fn parse_ip(ip: &str) -> PyResult<IpAddr> {
    ip.parse()
        .map_err(|_| PyValueError::new_err(format!("{ip:?} is not an IP address")))
}

fn event_tuple<'py>(py: Python<'py>, ev: Event) -> PyResult<Bound<'py, PyAny>> {
    Ok(match ev {
        Event::Connected {
            request_id,
            flow_id,
            target,
        } => ("connected", request_id, flow_id, addr_tuple(target))
            .into_pyobject(py)?
            .into_any(),
        Event::ConnectFailed {
            request_id,
            reason,
            tried,
        } => {
            let tried: Vec<(String, String)> = tried
                .into_iter()
                .map(|(a, why)| (a.to_string(), why))
                .collect();
            ("connect_failed", request_id, reason, tried)
                .into_pyobject(py)?
                .into_any()
        }
        Event::Accepted {
            listener_id,
            flow_id,
            app_fd,
            peer,
        } => (
            "accepted",
            listener_id,
            flow_id,
            app_fd.into_raw_fd(),
            addr_tuple(peer),
        )
            .into_pyobject(py)?
            .into_any(),
        Event::Delayed {
            request_id,
            service_id,
        } => ("delayed", request_id, service_id.to_vec())
            .into_pyobject(py)?
            .into_any(),
        Event::Migrated {
            flow_id,
            local,
            remote,
        } => ("migrated", flow_id, addr_tuple(local), addr_tuple(remote))
            .into_pyobject(py)?
            .into_any(),
        Event::TargetFailed {
            request_id,
            target,
            reason,
        } => ("target_failed", request_id, addr_tuple(target), reason)
            .into_pyobject(py)?
            .into_any(),
        Event::FlowClosed { flow_id, reason } => ("flow_closed", flow_id, reason)
            .into_pyobject(py)?
            .into_any(),
        Event::Overflow { dropped } => ("overflow", dropped).into_pyobject(py)?.into_any(),
    })
}

/// Handle to a running data path (its own threads; see the contract in
/// `docs/agent-datapath.md`).
#[pyclass(frozen, name = "DatapathRef", module = "hostagent.sal_core._native")]
pub struct DatapathRef {
    dp: Datapath,
}

#[pymethods]
impl DatapathRef {
    /// Binds the SAL listeners and starts the data path's threads.
    #[new]
    #[pyo3(signature = (sal_listen, *, worker_threads = 2, event_queue = 4096,
        delay_limit = 1024, send_buffer = None, recv_window = None,
        time_wait_ms = 2000, resync_timeout_ms = 60000, setup_timeout_ms = 3000,
        path_timeout_ms = 20000,
        dgram_keepalive_ms = 15000, dgram_keepalive_interval_ms = 5000,
        dgram_keepalive_probes = 3, dgram_app_queue = 256))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        sal_listen: Vec<AddrTuple>,
        worker_threads: usize,
        event_queue: usize,
        delay_limit: usize,
        send_buffer: Option<usize>,
        recv_window: Option<u32>,
        time_wait_ms: u64,
        resync_timeout_ms: u64,
        setup_timeout_ms: u64,
        path_timeout_ms: u64,
        dgram_keepalive_ms: u64,
        dgram_keepalive_interval_ms: u64,
        dgram_keepalive_probes: u32,
        dgram_app_queue: usize,
    ) -> PyResult<Self> {
        let sal_listen = sal_listen
            .iter()
            .map(|(h, p)| socket_addr(h, *p))
            .collect::<PyResult<Vec<_>>>()?;
        if sal_listen.is_empty() || worker_threads == 0 || event_queue == 0 || delay_limit == 0 {
            return Err(PyValueError::new_err(
                "sal_listen, worker_threads, event_queue and delay_limit must be non-empty / positive",
            ));
        }
        let base = DatapathConfig::default();
        let cfg = DatapathConfig {
            sal_listen,
            worker_threads,
            event_queue,
            delay_limit,
            flow: flow::Config {
                send_buffer: send_buffer.unwrap_or(base.flow.send_buffer),
                recv_window: recv_window.unwrap_or(base.flow.recv_window),
                time_wait_ms,
                resync_timeout_ms,
                ..base.flow
            },
            setup_timeout_ms,
            path_timeout_ms,
            dgram_flow: flow::Config {
                time_wait_ms,
                keepalive_idle_ms: dgram_keepalive_ms,
                keepalive_interval_ms: dgram_keepalive_interval_ms.max(1),
                keepalive_probes: dgram_keepalive_probes,
                ..base.dgram_flow
            },
            dgram_app_queue: dgram_app_queue.max(1),
            ..base
        };
        let dp = py
            .detach(|| Datapath::start(cfg))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(DatapathRef { dp })
    }

    /// The bound SAL endpoints.
    fn sal_addresses(&self) -> Vec<AddrTuple> {
        self.dp
            .sal_addresses()
            .into_iter()
            .map(addr_tuple)
            .collect()
    }

    /// The whole desired table (as `ServiceTableRef.apply`); GIL released.
    fn apply_table<'py>(
        &self,
        py: Python<'py>,
        generation: u64,
        rules: Vec<RuleTuple>,
    ) -> PyResult<Bound<'py, PyDict>> {
        apply_rules(py, self.dp.table(), generation, rules)
    }

    /// The desired table of `desired` (as `ServiceTableRef.apply_desired`).
    fn apply_desired<'py>(
        &self,
        py: Python<'py>,
        generation: u64,
        desired: &DesiredRef,
        listeners: Listeners,
        exclude: Vec<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        apply_desired(py, self.dp.table(), generation, desired, listeners, exclude)
    }

    /// `datagram=True`: a datagram listener (accepted fds are seqpacket
    /// sockets); it cannot `expose`.
    #[pyo3(signature = (listener_id, expose = None, datagram = false))]
    fn listen(&self, listener_id: u64, expose: Option<AddrTuple>, datagram: bool) -> PyResult<()> {
        let expose = expose.map(|(h, p)| socket_addr(&h, p)).transpose()?;
        match (datagram, expose) {
            (true, Some(_)) => {
                return Err(PyValueError::new_err(
                    "a datagram listener cannot expose a TCP server",
                ))
            }
            (true, None) => self.dp.listen_datagram(listener_id),
            (false, e) => self.dp.listen(listener_id, e),
        }
        Ok(())
    }

    fn unlisten(&self, listener_id: u64) -> bool {
        self.dp.unlisten(listener_id)
    }

    /// Takes ownership of `app_fd` (unless this raises) and sets up a flow.
    /// `greeting`: bytes written to the app once the flow is established,
    /// before any byte from the peer (at most 4096). `datagram=True`: a
    /// datagram flow; `app_fd` must be a SOCK_SEQPACKET socket, no greeting.
    #[pyo3(signature = (request_id, service_id, app_fd, deadline_ms, prefix_bits = 256, greeting = Vec::new(), datagram = false))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        &self,
        request_id: u64,
        service_id: Vec<u8>,
        app_fd: i32,
        deadline_ms: u64,
        prefix_bits: u32,
        greeting: Vec<u8>,
        datagram: bool,
    ) -> PyResult<()> {
        let bytes = self::service_id(&service_id)?;
        if prefix_bits > 256 {
            return Err(PyValueError::new_err("prefix_bits must be 0..=256"));
        }
        if greeting.len() > MAX_GREETING {
            return Err(PyValueError::new_err(format!(
                "greeting longer than {MAX_GREETING} bytes"
            )));
        }
        if !is_open_fd(app_fd) {
            return Err(PyValueError::new_err(format!("{app_fd} is not an open fd")));
        }
        if datagram && (!greeting.is_empty() || !is_seqpacket_fd(app_fd)) {
            return Err(PyValueError::new_err(
                "a datagram connect takes a SOCK_SEQPACKET socket and no greeting",
            ));
        }
        if self.dp.is_stopping() {
            return Err(PyRuntimeError::new_err("the data path is shut down"));
        }
        // SAFETY: the fd is open and the caller hands its ownership over.
        let fd = unsafe { OwnedFd::from_raw_fd(app_fd) };
        let service = ServiceId { bytes, prefix_bits };
        let deadline = Duration::from_millis(deadline_ms);
        if datagram {
            return self
                .dp
                .connect_datagram(request_id, service, fd, deadline)
                .map_err(|e| PyRuntimeError::new_err(e.to_string()));
        }
        self.dp
            .connect_with_greeting(
                request_id,
                service,
                fd,
                Duration::from_millis(deadline_ms),
                greeting,
            )
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    fn settle_delay(&self, request_id: u64, release: bool) -> bool {
        self.dp.settle_delay(request_id, release)
    }

    fn address_added(&self, ip: &str) -> PyResult<()> {
        self.dp.address_added(parse_ip(ip)?);
        Ok(())
    }

    fn address_removed(&self, ip: &str) -> PyResult<()> {
        self.dp.address_removed(parse_ip(ip)?);
        Ok(())
    }

    /// Up to `max` events as tuples; blocks (GIL released) up to `timeout_ms`.
    fn poll_events<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        timeout_ms: u64,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let events = py.detach(|| self.dp.poll_events(max, Duration::from_millis(timeout_ms)));
        events.into_iter().map(|e| event_tuple(py, e)).collect()
    }

    fn stats(&self) -> HashMap<&'static str, u64> {
        self.dp.stats().into_iter().collect()
    }

    /// Fault injection: resets flow `flow_id`'s current TCP connection.
    fn debug_break_path(&self, flow_id: u64) -> bool {
        self.dp.debug_break_path(flow_id)
    }

    fn shutdown(&self) {
        self.dp.shutdown();
    }

    /// Waits (GIL released) up to `timeout_ms`; True if all flows ended.
    fn join(&self, py: Python<'_>, timeout_ms: u64) -> bool {
        py.detach(|| self.dp.join(Duration::from_millis(timeout_ms)))
    }
}
