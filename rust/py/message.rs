//! `Message` and `Event` as native classes: the subscriber endpoint builds them in `take()`
//! without running any Python code per message.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyAny, PyByteArray, PyBytes, PyDict, PyMemoryView, PyString};

/// Message(header=None, body=b"")
///
/// A message: string headers and a bytes body (go-micro's ``broker.Message``).
#[pyclass(module = "hyperbroker", eq)]
pub struct Message {
    header: Header,
    body: Py<PyBytes>,
}

/// A message's header: the dict, made from the received entries only when first asked for (most
/// handlers never look, and a dict per message costs an allocation and garbage-collector work).
struct Header {
    dict: PyOnceLock<Py<PyDict>>,
    received: Vec<(String, String)>,
}

impl Header {
    fn of(dict: Bound<'_, PyDict>) -> Self {
        let h = Header { dict: PyOnceLock::new(), received: Vec::new() };
        let _ = h.dict.set(dict.py(), dict.unbind());
        h
    }

    fn dict<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyDict>> {
        self.dict
            .get_or_try_init(py, || {
                let d = PyDict::new(py);
                for (k, v) in &self.received {
                    d.set_item(k, v)?;
                }
                Ok(d.unbind())
            })
            .map(|d| d.bind(py))
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        Python::attach(|py| {
            let h = match (self.header.dict(py), other.header.dict(py)) {
                (Ok(a), Ok(b)) => a.eq(b).unwrap_or(false),
                _ => false,
            };
            h && self.body.bind(py).as_bytes() == other.body.bind(py).as_bytes()
        })
    }
}

fn to_bytes<'py>(py: Python<'py>, body: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(b) = body.cast::<PyBytes>() {
        return Ok(b.clone());
    }
    if let Ok(b) = body.cast::<PyByteArray>() {
        return Ok(PyBytes::new(py, &b.to_vec()));
    }
    if body.cast::<PyMemoryView>().is_ok() {
        return body.call_method0("tobytes")?.cast_into::<PyBytes>().map_err(Into::into);
    }
    Err(PyTypeError::new_err(format!(
        "Message body must be bytes, got {}",
        body.get_type().name().map(|n| n.to_string()).unwrap_or_default()
    )))
}

fn to_header<'py>(py: Python<'py>, header: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyDict>> {
    match header {
        None => Ok(PyDict::new(py)),
        Some(h) if h.is_none() => Ok(PyDict::new(py)),
        Some(h) => h.cast::<PyDict>().cloned().map_err(|_| {
            PyTypeError::new_err(format!(
                "Message header must be a dict[str, str], got {}",
                h.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        }),
    }
}

impl Message {
    pub fn from_parts(header: Bound<'_, PyDict>, body: Bound<'_, PyBytes>) -> Self {
        Message { header: Header::of(header), body: body.unbind() }
    }

    /// A received message: its header becomes a dict only when asked for.
    pub fn received(header: Vec<(String, String)>, body: Bound<'_, PyBytes>) -> Self {
        Message { header: Header { dict: PyOnceLock::new(), received: header }, body: body.unbind() }
    }
}

static ORJSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static DECODE_BODY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `orjson.loads(body)`.
fn json_of<'py>(py: Python<'py>, body: &Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyAny>> {
    let loads = ORJSON_LOADS.get_or_try_init(py, || -> PyResult<Py<PyAny>> { Ok(py.import("orjson")?.getattr("loads")?.unbind()) })?;
    loads.bind(py).call1((body,))
}

/// `hyperbroker.message.decode_body(model, body)`: the typed-body rules live in Python.
fn decode_of<'py>(py: Python<'py>, model: &Bound<'py, PyAny>, body: &Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyAny>> {
    let f = DECODE_BODY
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> { Ok(py.import("hyperbroker.message")?.getattr("decode_body")?.unbind()) })?;
    f.bind(py).call1((model, body))
}

#[pymethods]
impl Message {
    #[new]
    #[pyo3(signature = (header = None, body = None))]
    fn new(py: Python<'_>, header: Option<&Bound<'_, PyAny>>, body: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let header = to_header(py, header)?;
        let body = match body {
            None => PyBytes::new(py, b""),
            Some(b) => to_bytes(py, b)?,
        };
        Ok(Message::from_parts(header, body))
    }

    #[getter]
    fn header<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.header.dict(py).cloned()
    }

    #[setter]
    fn set_header(&mut self, py: Python<'_>, header: &Bound<'_, PyAny>) -> PyResult<()> {
        self.header = Header::of(to_header(py, Some(header))?);
        Ok(())
    }

    #[getter]
    fn body(&self, py: Python<'_>) -> Py<PyBytes> {
        self.body.clone_ref(py)
    }

    #[setter]
    fn set_body(&mut self, py: Python<'_>, body: &Bound<'_, PyAny>) -> PyResult<()> {
        self.body = to_bytes(py, body)?.unbind();
        Ok(())
    }

    /// The body decoded as JSON (orjson).
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_of(py, self.body.bind(py))
    }

    /// The body validated into ``model``: a pydantic model or a dataclass (see
    /// ``hyperbroker.message.decode_body``).
    fn decode<'py>(&self, py: Python<'py>, model: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        decode_of(py, model, self.body.bind(py))
    }

    /// The body decoded as text.
    #[pyo3(signature = (encoding = "utf-8"))]
    fn text<'py>(&self, py: Python<'py>, encoding: &str) -> PyResult<Bound<'py, PyAny>> {
        self.body.bind(py).call_method1("decode", (encoding,))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let b = self.body.bind(py);
        let shown = PyBytes::new(py, &b.as_bytes()[..b.as_bytes().len().min(64)]);
        Ok(format!("Message(header={}, body={})", self.header.dict(py)?.repr()?, shown.repr()?))
    }
}

/// Event(topic, message, error=None)
///
/// What a handler receives: the topic, the message, ``ack()`` and ``error``. With
/// ``auto_ack=True`` (the default) a handler that returns acknowledges the message; with
/// ``auto_ack=False`` it must call ``ack()``, or the message is delivered again.
#[pyclass(module = "hyperbroker", frozen)]
pub struct Event {
    topic: Py<PyString>,
    message: Py<Message>,
    error: Option<Py<PyAny>>,
    acked: AtomicBool,
    token: u64,
}

impl Event {
    pub fn new_received(topic: Bound<'_, PyString>, message: Py<Message>, token: u64) -> Self {
        Event { topic: topic.unbind(), message, error: None, acked: AtomicBool::new(false), token }
    }
}

#[pymethods]
impl Event {
    #[new]
    #[pyo3(signature = (topic, message, error = None))]
    fn new(topic: Bound<'_, PyString>, message: Py<Message>, error: Option<Py<PyAny>>) -> Self {
        Event { topic: topic.unbind(), message, error, acked: AtomicBool::new(false), token: 0 }
    }

    #[getter]
    fn topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }

    #[getter]
    fn message(&self, py: Python<'_>) -> Py<Message> {
        self.message.clone_ref(py)
    }

    /// An error met while receiving the message (None: there was none).
    #[getter]
    fn error(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.error.as_ref().map(|e| e.clone_ref(py))
    }

    /// The message body decoded as JSON (orjson): ``event.message.json()``.
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let m = self.message.borrow(py);
        json_of(py, m.body.bind(py))
    }

    /// The message body validated into ``model``: a pydantic model or a dataclass.
    fn decode<'py>(&self, py: Python<'py>, model: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let m = self.message.borrow(py);
        decode_of(py, model, m.body.bind(py))
    }

    /// Acknowledge the message (needed only with ``auto_ack=False``).
    fn ack(&self) {
        self.acked.store(true, Ordering::Relaxed);
    }

    #[getter]
    fn acked(&self) -> bool {
        self.acked.load(Ordering::Relaxed)
    }

    /// The delivery token (internal: how the broker settles this event).
    #[getter]
    fn _token(&self) -> u64 {
        self.token
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let m = self.message.borrow(py);
        let b = m.body.bind(py);
        let shown = PyBytes::new(py, &b.as_bytes()[..b.as_bytes().len().min(64)]);
        Ok(format!("Event(topic={}, header={}, body={})", self.topic.bind(py).repr()?, m.header.dict(py)?.repr()?, shown.repr()?))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Message>()?;
    m.add_class::<Event>()
}
