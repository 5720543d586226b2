//! Serval Service Access Layer core.
//!
//! Pure Rust (no sockets, no clock, no randomness) so that `cargo test` covers
//! it without Python: [`service_id`] (names → IDs), [`table`] (the service
//! table), [`wire`] (the SAL frame format) and [`flow`] (the flow state
//! machine). [`datapath`] is the one I/O shell: a tokio runtime on its own
//! threads that runs the SAL over kernel TCP between agents and relays app
//! sockets, feeding the pure cores. The PyO3 binding lives in [`binding`]
//! (module registration) and the `binding_*` glue files; none of them holds
//! logic.

pub mod binding;
mod binding_datapath;
mod binding_desired;
mod binding_table;
mod binding_wire;
pub mod datapath;
pub mod desired;
pub mod flow;
pub mod service_id;
pub mod table;
pub mod wire;

/// Version of this crate, as built.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
