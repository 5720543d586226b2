//! PyO3 glue for the service table: the `ServiceTableRef` class, registered
//! by `binding.rs`. No logic lives here: it converts plain typed values, calls
//! `crate::table`, releases the GIL around table builds, and maps every
//! [`TableError`] to `ValueError` with the error's message.
//!
//! Python shapes (see the `.pyi` lines in the crate README):
//! - rule: `(prefix: bytes[32], prefix_bits: int, kind: str,
//!   targets: list[(host: str, port: int, weight: int, tier: int)],
//!   listener: int | None)`; `kind` is forward / demux / delay / drop; hosts
//!   are IP literals (no DNS).
//! - `choose` returns `(kind, (host, port) | None, listener | None)` where
//!   kind is also `no_target` or `no_route`.

use std::net::{IpAddr, SocketAddr};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::binding_desired::{DesiredRef, Listeners};
use crate::service_id::ID_BYTES;
use crate::table::{
    ApplyOutcome, ApplySummary, Rule, RuleKind, ServicePrefix, ServiceTable, TableConfig,
    TableError, Target, Verdict,
};

/// `(host, port, weight, tier)` of a FORWARD target.
pub(crate) type TargetTuple = (String, u16, u32, u32);
/// `(prefix, prefix_bits, kind, targets, listener)`.
pub(crate) type RuleTuple = (Vec<u8>, u32, String, Vec<TargetTuple>, Option<u64>);
/// `(host, port)`.
type AddrTuple = (String, u16);
/// `(prefix, prefix_bits, kind, hits, [(host, port, chosen)])`.
type RuleCountsTuple = (Vec<u8>, u32, &'static str, u64, Vec<(String, u16, u64)>);

pub(crate) fn value_error(e: TableError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

pub(crate) fn socket_addr(host: &str, port: u16) -> PyResult<SocketAddr> {
    let ip: IpAddr = host
        .parse()
        .map_err(|_| PyValueError::new_err(format!("{host:?} is not an IP address")))?;
    Ok(SocketAddr::new(ip, port))
}

pub(crate) fn service_id(id: &[u8]) -> PyResult<[u8; ID_BYTES]> {
    id.try_into().map_err(|_| {
        PyValueError::new_err(format!(
            "a service ID is {ID_BYTES} bytes, not {}",
            id.len()
        ))
    })
}

pub(crate) fn rule_from_tuple(rule: RuleTuple) -> PyResult<(ServicePrefix, Rule)> {
    let (bytes, bits, kind, targets, listener) = rule;
    let prefix = ServicePrefix::new(service_id(&bytes)?, bits).map_err(value_error)?;
    let targets = targets
        .into_iter()
        .map(|(host, port, weight, tier)| Ok(Target::new(socket_addr(&host, port)?, weight, tier)))
        .collect::<PyResult<Vec<_>>>()?;
    let kind = RuleKind::parse(&kind).map_err(value_error)?;
    let rule = Rule::from_parts(kind, targets, listener).map_err(value_error)?;
    Ok((prefix, rule))
}

fn addr_tuple(addr: &SocketAddr) -> AddrTuple {
    (addr.ip().to_string(), addr.port())
}

/// Converts `rules`, applies them to `table` with the GIL released, and
/// returns the summary dict (`outcome`, `generation`, `added`, `removed`,
/// `changed`). Shared by `ServiceTableRef` and `DatapathRef`.
pub(crate) fn apply_rules<'py>(
    py: Python<'py>,
    table: &ServiceTable,
    generation: u64,
    rules: Vec<RuleTuple>,
) -> PyResult<Bound<'py, PyDict>> {
    let rules = rules
        .into_iter()
        .map(rule_from_tuple)
        .collect::<PyResult<Vec<_>>>()?;
    let config = TableConfig { generation, rules };
    let summary = py
        .detach(|| applied_and_trimmed(table, config))
        .map_err(value_error)?;
    summary_dict(py, summary)
}

/// Builds the desired table from `desired` (with `listeners`' DEMUX rules,
/// without the `exclude`d services) and applies it to `table`, all with the
/// GIL released; no rule crosses into Python. Returns `apply_rules`' dict.
pub(crate) fn apply_desired<'py>(
    py: Python<'py>,
    table: &ServiceTable,
    generation: u64,
    desired: &DesiredRef,
    listeners: Listeners,
    exclude: Vec<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let summary = py
        .detach(|| {
            let rules = desired.lock().rules(&listeners, &exclude);
            applied_and_trimmed(table, TableConfig { generation, rules })
        })
        .map_err(value_error)?;
    summary_dict(py, summary)
}

/// `table.apply(config)`; after a new version was published (and the old
/// one and the build's scratch freed), hands free heap pages back to the
/// OS (`malloc_trim`): a table build allocates and frees tens of MB, which
/// glibc would otherwise keep in the process's RSS.
fn applied_and_trimmed(
    table: &ServiceTable,
    config: TableConfig,
) -> Result<ApplySummary, TableError> {
    let summary = table.apply(config)?;
    if summary.outcome == ApplyOutcome::Applied {
        trim_heap();
    }
    Ok(summary)
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator's heaps.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

fn summary_dict(py: Python<'_>, summary: ApplySummary) -> PyResult<Bound<'_, PyDict>> {
    let result = PyDict::new(py);
    let outcome = match summary.outcome {
        ApplyOutcome::Applied => "applied",
        ApplyOutcome::NoChange => "no_change",
    };
    result.set_item("outcome", outcome)?;
    result.set_item("generation", summary.generation)?;
    result.set_item("added", summary.added)?;
    result.set_item("removed", summary.removed)?;
    result.set_item("changed", summary.changed)?;
    Ok(result)
}

/// Handle to a host's service table: lock-free lookups, whole-table applies.
#[pyclass(
    frozen,
    name = "ServiceTableRef",
    module = "hostagent.sal_core._native"
)]
pub struct ServiceTableRef {
    table: ServiceTable,
}

#[pymethods]
impl ServiceTableRef {
    /// An empty table of generation 0.
    #[new]
    fn new() -> Self {
        ServiceTableRef {
            table: ServiceTable::new(),
        }
    }

    /// Generation of the current table.
    #[getter]
    fn generation(&self) -> u64 {
        self.table.generation()
    }

    /// Applies a whole configuration; returns a dict with `outcome`
    /// ("applied" | "no_change"), `generation`, `added`, `removed`, `changed`.
    /// `ValueError` on invalid rules or a stale generation (table unchanged).
    fn apply<'py>(
        &self,
        py: Python<'py>,
        generation: u64,
        rules: Vec<RuleTuple>,
    ) -> PyResult<Bound<'py, PyDict>> {
        apply_rules(py, &self.table, generation, rules)
    }

    /// Applies the desired table of `desired` (see `apply_desired`); the
    /// same dict as `apply`.
    fn apply_desired<'py>(
        &self,
        py: Python<'py>,
        generation: u64,
        desired: &DesiredRef,
        listeners: Listeners,
        exclude: Vec<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        apply_desired(py, &self.table, generation, desired, listeners, exclude)
    }

    /// The longest matching rule as `(kind, prefix, prefix_bits)`, or None.
    /// Pure: counts nothing.
    fn lookup(&self, id: Vec<u8>) -> PyResult<Option<(&'static str, Vec<u8>, u32)>> {
        let id = service_id(&id)?;
        let table = self.table.load();
        Ok(table.lookup(&id).map(|e| {
            (
                e.kind().name(),
                e.prefix().bytes().to_vec(),
                e.prefix().len(),
            )
        }))
    }

    /// Resolves `id` for `flow_key`, skipping `exclude`d `(host, port)`
    /// targets, and counts it. Returns `(kind, (host, port) | None,
    /// listener | None)`; kind is forward, demux, delay, drop, no_target or
    /// no_route.
    #[pyo3(signature = (id, flow_key, exclude = Vec::new()))]
    fn choose(
        &self,
        id: Vec<u8>,
        flow_key: u64,
        exclude: Vec<AddrTuple>,
    ) -> PyResult<(&'static str, Option<AddrTuple>, Option<u64>)> {
        let id = service_id(&id)?;
        let exclude = exclude
            .iter()
            .map(|(host, port)| socket_addr(host, *port))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(match self.table.resolve(&id, flow_key, &exclude) {
            Verdict::Forward(t) => ("forward", Some(addr_tuple(&t.addr)), None),
            Verdict::Demux(listener) => ("demux", None, Some(listener)),
            Verdict::Delay => ("delay", None, None),
            Verdict::Drop => ("drop", None, None),
            Verdict::NoTarget => ("no_target", None, None),
            Verdict::NoRoute => ("no_route", None, None),
        })
    }

    /// Every eligible target of the best tier of the matching FORWARD rule
    /// ("send to all"); empty otherwise.
    fn all_targets(&self, id: Vec<u8>) -> PyResult<Vec<AddrTuple>> {
        let id = service_id(&id)?;
        let table = self.table.load();
        let targets = table
            .lookup(&id)
            .map(|e| e.all_targets())
            .unwrap_or_default();
        Ok(targets.iter().map(|t| addr_tuple(&t.addr)).collect())
    }

    /// `(generation, no_route, rules)`; each rule is `(prefix, prefix_bits,
    /// kind, hits, [(host, port, chosen)])`.
    fn counters(&self) -> (u64, u64, Vec<RuleCountsTuple>) {
        let snapshot = self.table.counters();
        let rules = snapshot.rules.iter().map(|r| {
            let targets = r
                .targets
                .iter()
                .map(|t| (t.addr.ip().to_string(), t.addr.port(), t.chosen));
            (
                r.prefix.bytes().to_vec(),
                r.prefix.len(),
                r.kind.name(),
                r.hits,
                targets.collect(),
            )
        });
        (snapshot.generation, snapshot.no_route, rules.collect())
    }
}
