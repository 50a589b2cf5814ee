//! The PyO3 face of the crate: one file per exposed concept.

mod backlog;
mod bench;
mod codec;
mod conversion;
mod engine;
pub mod errors;
mod message;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    codec::register(m)?;
    backlog::register(m)?;
    engine::register(m)?;
    message::register(m)?;
    Ok(())
}
