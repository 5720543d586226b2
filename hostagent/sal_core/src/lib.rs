//! Serval Service Access Layer core.
//!
//! Pure Rust (no sockets, no clock) so that `cargo test` covers it without
//! Python. The PyO3 binding lives in [`binding`] and only registers the module;
//! later issues add the service table, flow state machine and wire format here.

pub mod binding;
mod binding_table;
pub mod flow;
pub mod service_id;
pub mod table;
pub mod wire;

/// Version of this crate, as built.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
