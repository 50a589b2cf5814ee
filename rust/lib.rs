//! hyperbroker's native core (`hyperbroker._core`).
//!
//! The pure-Rust parts (codec, backlog, routing, fan-out, server) carry no Python types so that
//! `cargo test` exercises them alone; `py/` is the thin PyO3 layer on top.

pub mod backlog;
pub mod batch;
pub mod bridge;
pub mod codec;
pub mod node;
pub mod publisher;
mod py;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod tls;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}
