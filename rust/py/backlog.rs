//! The backlog ring exposed to Python (the broker uses the Rust type directly).

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::backlog;

/// Backlog(capacity, max_bytes=64 MiB)
///
/// A bounded ring per topic keeping the newest `capacity` entries, with a byte cap across topics.
#[pyclass(module = "hyperbroker._core", frozen)]
pub struct Backlog {
    inner: backlog::Backlog<Bytes>,
}

#[pymethods]
impl Backlog {
    #[new]
    #[pyo3(signature = (capacity, max_bytes = 67108864))]
    fn new(capacity: i64, max_bytes: i64) -> PyResult<Self> {
        if capacity < 1 {
            return Err(PyValueError::new_err(format!("capacity must be >= 1, got {capacity}")));
        }
        if max_bytes < 1 {
            return Err(PyValueError::new_err(format!("max_bytes must be >= 1, got {max_bytes}")));
        }
        Ok(Backlog { inner: backlog::Backlog::new(capacity as usize, max_bytes as usize) })
    }

    /// Append an item; returns how many older entries were dropped to make room.
    fn push(&self, topic: &str, item: &[u8]) -> u64 {
        self.inner.push(topic, Bytes::copy_from_slice(item)).dropped
    }

    /// Remove and return up to `max` entries, oldest first.
    #[pyo3(signature = (topic, max = usize::MAX))]
    fn drain<'py>(&self, py: Python<'py>, topic: &str, max: usize) -> PyResult<Bound<'py, PyList>> {
        let items = self.inner.drain(topic, max);
        PyList::new(py, items.iter().map(|b| PyBytes::new(py, b)))
    }

    fn len(&self, topic: &str) -> usize {
        self.inner.len(topic)
    }

    fn dropped(&self, topic: &str) -> u64 {
        self.inner.dropped(topic)
    }

    fn topics(&self) -> Vec<String> {
        self.inner.topics()
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.inner.max_bytes()
    }

    #[getter]
    fn total_len(&self) -> usize {
        self.inner.total_len()
    }

    #[getter]
    fn total_bytes(&self) -> usize {
        self.inner.total_bytes()
    }

    #[getter]
    fn dropped_total(&self) -> u64 {
        self.inner.dropped_total()
    }

    fn __len__(&self) -> usize {
        self.inner.total_len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Backlog(capacity={}, max_bytes={}, total_len={}, dropped_total={})",
            self.inner.capacity(),
            self.inner.max_bytes(),
            self.inner.total_len(),
            self.inner.dropped_total()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Backlog>()
}
