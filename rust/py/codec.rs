//! `encode` / `decode` of the go-micro envelope for Python.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::codec;
use crate::payload::{Payload, BY_REFERENCE};
use pyo3::pybacked::PyBackedBytes;

/// Borrow a Python `dict[str, str]` (or None) as key/value pairs.
pub fn header_pairs<'py>(header: Option<&Bound<'py, PyDict>>) -> PyResult<Vec<(Bound<'py, PyString>, Bound<'py, PyString>)>> {
    let mut out = Vec::new();
    if let Some(h) = header {
        out.reserve(h.len());
        for (k, v) in h.iter() {
            let k = k.cast_into::<PyString>().map_err(|e| {
                super::errors::CodecError::new_err(format!(
                    "header keys must be str, got {}",
                    e.into_inner().get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            let v = v.cast_into::<PyString>().map_err(|e| {
                super::errors::CodecError::new_err(format!(
                    "header value of {:?} must be str, got {}",
                    k.to_string(),
                    e.into_inner().get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Encode a published message appending to `out` (the topic under `:topic` and `Micro-Topic`,
/// `codec::encode_message_into`), reading the header straight from a Python dict.
pub fn encode_py_into(out: &mut Vec<u8>, topic: &str, header: Option<&Bound<'_, PyDict>>, body: &[u8]) -> PyResult<()> {
    encode_py_with(out, topic, header, body, true)
}

/// The `Payload` of a published message, its header read straight from a Python dict: a large
/// body stays in its Python `bytes` object (held, not copied) until the last copy is sent.
pub fn payload_py(topic: &str, header: Option<&Bound<'_, PyDict>>, body: &Bound<'_, PyBytes>) -> PyResult<Payload> {
    let pairs = header_pairs(header)?;
    let mut strs: Vec<(&str, &str)> = Vec::with_capacity(pairs.len());
    for (k, v) in &pairs {
        strs.push((k.to_str()?, v.to_str()?));
    }
    let bytes = body.as_bytes();
    let over = |n: usize| u32::try_from(n).is_err();
    if over(bytes.len()) || over(topic.len()) || strs.iter().any(|(k, v)| over(k.len()) || over(v.len())) {
        return Err(super::errors::CodecError::new_err("a message's topic, header entries and body must each be under 4 GiB"));
    }
    if bytes.len() < BY_REFERENCE {
        return Ok(Payload::new(topic, strs.iter().copied(), bytes));
    }
    let held = bytes::Bytes::from_owner(PyBackedBytes::from(body.clone()));
    Ok(Payload::with_body(topic, strs.iter().copied(), held))
}

/// Encode a reply envelope appending to `out`: go-micro v1's shape, the topic under `:topic`
/// only (a reply is not routed by topic, so `Micro-Topic` would only show up in its header).
pub fn encode_reply_py_into(out: &mut Vec<u8>, topic: &str, header: Option<&Bound<'_, PyDict>>, body: &[u8]) -> PyResult<()> {
    encode_py_with(out, topic, header, body, false)
}

fn encode_py_with(out: &mut Vec<u8>, topic: &str, header: Option<&Bound<'_, PyDict>>, body: &[u8], both_keys: bool) -> PyResult<()> {
    let pairs = header_pairs(header)?;
    let mut strs: Vec<(&str, &str)> = Vec::with_capacity(pairs.len());
    for (k, v) in &pairs {
        strs.push((k.to_str()?, v.to_str()?));
    }
    out.reserve(codec::encoded_len_hint(topic, strs.iter().copied(), body.len()) + if both_keys { topic.len() + 16 } else { 0 });
    if both_keys {
        codec::encode_message_into(out, topic, strs.iter().copied(), body);
    } else {
        codec::encode_into(out, topic, strs.iter().copied(), body);
    }
    Ok(())
}

/// encode(topic, header, body) -> bytes
///
/// Encode a go-micro envelope: `{"Header": {":topic": topic, ...header}, "Body": base64(body)}`.
#[pyfunction]
#[pyo3(signature = (topic, header, body))]
fn encode<'py>(py: Python<'py>, topic: &str, header: Option<&Bound<'py, PyDict>>, body: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    if topic.is_empty() {
        return Err(super::errors::CodecError::new_err("topic must not be empty"));
    }
    let mut out = Vec::new();
    encode_py_with(&mut out, topic, header, body, false)?;
    Ok(PyBytes::new(py, &out))
}

/// Build the Python `(topic, header, body)` triple of a decoded envelope.
pub fn envelope_to_py<'py>(
    py: Python<'py>,
    env: &codec::Envelope,
) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyDict>, Bound<'py, PyBytes>)> {
    let h = PyDict::new(py);
    for (k, v) in &env.header {
        h.set_item(k, v)?;
    }
    Ok((PyString::new(py, &env.topic), h, PyBytes::new(py, &env.body)))
}

/// decode(data) -> (topic, header, body)
///
/// Decode a go-micro envelope. Raises CodecError saying what is wrong with bad input.
#[pyfunction]
fn decode<'py>(py: Python<'py>, data: &[u8]) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyDict>, Bound<'py, PyBytes>)> {
    let env = codec::decode(data)?;
    envelope_to_py(py, &env)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    Ok(())
}
