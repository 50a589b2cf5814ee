//! hyperbroker's native core (`hyperbroker._core`).
//!
//! The pure-Rust parts (codec, backlog, routing, fan-out, server) carry no Python types so that
//! `cargo test` exercises them alone; `py/` is the thin PyO3 layer on top.

pub mod backlog;
pub mod batch;
pub mod bridge;
pub mod codec;
pub mod config;
pub mod error;
pub mod node;
pub mod publisher;
#[cfg(feature = "python")]
mod py;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod tls;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}
