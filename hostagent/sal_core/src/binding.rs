//! PyO3 binding: registers the `_native` module and converts errors.
//! No logic lives here; it calls into the pure modules of this crate.
//! The glue of each part lives beside it: `binding_table.rs` (service table),
//! `binding_wire.rs` (frames). A Rust panic in any of them surfaces in Python
//! as `pyo3_runtime.PanicException` (PyO3 catches it at the boundary), never
//! as a crash of the process.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::service_id;

/// Version of the compiled SAL core.
#[pyfunction]
fn version() -> &'static str {
    crate::version()
}

/// Service ID of `name` as `(id_bytes, prefix_bits)`; `ValueError` if the name is invalid.
#[pyfunction]
#[pyo3(name = "service_id")]
fn derive_service_id(name: &str) -> PyResult<(Vec<u8>, u32)> {
    let id = service_id::service_id(name).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((id.bytes.to_vec(), id.prefix_bits))
}

/// Panics with `message`. Exists only so the test suite can prove that a Rust
/// panic reaches Python as `PanicException` rather than aborting the process.
#[pyfunction]
fn _panic_for_tests(message: &str) {
    panic!("{message}");
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(derive_service_id, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_class::<crate::binding_table::ServiceTableRef>()?;
    m.add_class::<crate::binding_datapath::DatapathRef>()?;
    m.add_class::<crate::binding_desired::DesiredRef>()?;
    crate::binding_wire::register(m)?;
    Ok(())
}
