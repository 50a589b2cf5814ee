//! The Python exception classes of the native core (`hyperbroker.errors` re-exports them) and
//! the ONE mapping from the crate's `Error` to them. Every Rust failure reaches Python through
//! `From<Error> for PyErr` (so `?` does it); only argument checks of the Python API build their
//! exceptions elsewhere.
//!
//! | `crate::error::Error`        | Python                                  |
//! |------------------------------|-----------------------------------------|
//! | `Codec`                      | `CodecError` (a `BrokerError`)          |
//! | `Config`                     | `ValueError` (a bad argument value)     |
//! | `Tls`, `Io`, `Node`, `Peer`  | `BrokerError`                           |

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::codec::CodecError as RustCodecError;
use crate::error::Error;

create_exception!(hyperbroker, BrokerError, PyException, "Base class of every error hyperbroker raises.");
create_exception!(hyperbroker, CodecError, BrokerError, "An envelope could not be encoded or decoded.");

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let text = e.to_string();
        match e {
            Error::Codec(_) => CodecError::new_err(text),
            Error::Config(_) => PyValueError::new_err(text),
            Error::Tls(_) | Error::Io(_) | Error::Node(_) | Error::Peer(_) => BrokerError::new_err(text),
        }
    }
}

impl From<RustCodecError> for PyErr {
    fn from(e: RustCodecError) -> PyErr {
        Error::Codec(e).into()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("BrokerError", py.get_type::<BrokerError>())?;
    m.add("CodecError", py.get_type::<CodecError>())?;
    Ok(())
}
