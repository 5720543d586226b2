//! PyO3 binding: registers the `_native` module and converts errors.
//! No logic lives here; it calls into the pure modules of this crate.

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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(derive_service_id, m)?)?;
    Ok(())
}
