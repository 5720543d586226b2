//! PyO3 glue for the agent's compact mirror: the `DesiredRef` class (typed
//! wrapper: `hostagent/sal_core/desired.py`). No logic lives here: it
//! converts plain values and calls `crate::desired`; the table is applied
//! from it by `ServiceTableRef.apply_desired` / `DatapathRef.apply_desired`
//! (`binding_table::apply_desired`).
//!
//! Python shapes: `put(service, instance_id, addresses: list[str],
//! sal_port: int | None, weight, tier, zone, region)`; listeners are
//! `[(listener_id, service name)]`; `rules` returns rule tuples as
//! `ServiceTableRef.apply` takes them, targets ordered by (host text, port)
//! like the Python reference.

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;

use crate::binding_table::{service_id, RuleTuple, TargetTuple};
use crate::desired::{Desired, InstanceInput, Locality};
use crate::table::Rule;

/// `[(listener id, service name)]`.
pub(crate) type Listeners = Vec<(u64, String)>;

/// The agent's mirror of the SAL-capable instances of the registry.
#[pyclass(frozen, name = "DesiredRef", module = "hostagent.sal_core._native")]
pub struct DesiredRef {
    inner: Mutex<Desired>,
}

impl DesiredRef {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Desired> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl DesiredRef {
    /// An empty mirror for an agent in `zone` / `region` ("" = unknown).
    #[new]
    #[pyo3(signature = (zone = String::new(), region = String::new()))]
    fn new(zone: String, region: String) -> Self {
        DesiredRef {
            inner: Mutex::new(Desired::new(Locality { zone, region })),
        }
    }

    /// Adds or replaces an instance (removes it when `sal_port` is None).
    /// Addresses that are not IP literals are skipped.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        service: &str,
        instance_id: &str,
        addresses: Vec<String>,
        sal_port: Option<u16>,
        weight: u32,
        tier: u32,
        zone: &str,
        region: &str,
    ) {
        let addresses: Vec<IpAddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
        self.lock().put(&InstanceInput {
            service,
            instance_id,
            addresses: &addresses,
            sal_port,
            weight,
            tier,
            zone,
            region,
        });
    }

    /// Removes an instance; False if it was not kept.
    fn remove(&self, service: &str, instance_id: &str) -> bool {
        self.lock().remove(service, instance_id)
    }

    /// Forgets every instance.
    fn clear(&self) {
        self.lock().clear();
    }

    /// True if a service with these 32 ID bytes has a SAL-capable instance.
    fn knows(&self, id: Vec<u8>) -> PyResult<bool> {
        Ok(self.lock().knows(&service_id(&id)?))
    }

    /// Change counter: equal values mean equal content.
    #[getter]
    fn version(&self) -> u64 {
        self.lock().version()
    }

    /// SAL-capable instances kept.
    #[getter]
    fn instances(&self) -> usize {
        self.lock().instances()
    }

    /// Services with a SAL-capable instance.
    #[getter]
    fn services(&self) -> usize {
        self.lock().services()
    }

    /// How many rules `rules(listeners, exclude)` returns.
    fn rule_count(&self, listeners: Listeners, exclude: Vec<String>) -> usize {
        self.lock().rule_count(&listeners, &exclude)
    }

    /// The desired table as rule tuples, in prefix order (tests, fakes).
    fn rules(&self, listeners: Listeners, exclude: Vec<String>) -> Vec<RuleTuple> {
        let rules = self.lock().rules(&listeners, &exclude);
        rules
            .into_iter()
            .map(|(prefix, rule)| {
                let (kind, mut targets, listener) = match rule {
                    Rule::Forward(targets) => ("forward", targets, None),
                    Rule::Demux(listener) => ("demux", Vec::new(), Some(listener)),
                    Rule::Delay => ("delay", Vec::new(), None),
                    Rule::Drop => ("drop", Vec::new(), None),
                };
                let mut tuples: Vec<TargetTuple> = targets
                    .drain(..)
                    .map(|t| (t.addr.ip().to_string(), t.addr.port(), t.weight, t.tier))
                    .collect();
                tuples.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                let bytes = prefix.bytes().to_vec();
                (bytes, prefix.len(), kind.to_string(), tuples, listener)
            })
            .collect()
    }
}
