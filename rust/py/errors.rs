//! Exception types raised by the native core. `hyperbroker.errors` re-exports them.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::codec::CodecError as RustCodecError;

create_exception!(hyperbroker, BrokerError, PyException, "Base class of every error hyperbroker raises.");
create_exception!(hyperbroker, CodecError, BrokerError, "An envelope could not be encoded or decoded.");

impl From<RustCodecError> for PyErr {
    fn from(e: RustCodecError) -> PyErr {
        CodecError::new_err(e.to_string())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("BrokerError", py.get_type::<BrokerError>())?;
    m.add("CodecError", py.get_type::<CodecError>())?;
    Ok(())
}
