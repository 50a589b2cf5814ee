//! The batching extension: several envelopes in one POST, only towards nodes that advertise it
//! (registry metadata `batch=1`). A go-micro node never sees a batch.
//!
//! Request: `Content-Type: application/x-ndjson`, body = envelopes (each the ordinary go-micro
//! JSON envelope, which never contains a raw newline) separated by `\n`.
//! Response: `200` with `{"failed":[{"index":I,"status":S,"error":"..."}]}` naming the envelopes
//! that were not handled (status 500: the handler raised, 400: undecodable, 404: unknown
//! subscriber, 503: subscriber closing); only those are retried by the publisher.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// Join envelopes into one batch body.
pub fn frame<'a>(envelopes: impl Iterator<Item = &'a Bytes>, size_hint: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(size_hint);
    for (i, e) in envelopes.enumerate() {
        if i > 0 {
            out.put_u8(b'\n');
        }
        out.extend_from_slice(e);
    }
    out.freeze()
}

/// Split a batch body into envelopes (empty lines, e.g. a trailing newline, are skipped; a
/// `\r` before the newline is tolerated).
pub fn split(body: &[u8]) -> Vec<&[u8]> {
    body.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(|b| b.is_ascii_whitespace()))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub index: usize,
    pub status: u16,
    pub error: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BatchResponse {
    #[serde(default)]
    pub failed: Vec<Failure>,
}

pub fn encode_response(failed: Vec<Failure>) -> Bytes {
    Bytes::from(serde_json::to_vec(&BatchResponse { failed }).unwrap_or_else(|_| b"{\"failed\":[]}".to_vec()))
}

pub fn decode_response(body: &[u8]) -> Result<BatchResponse, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad batch response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_split() {
        let a = Bytes::from_static(br#"{"Header":{":topic":"t"},"Body":"YQ=="}"#);
        let b = Bytes::from_static(br#"{"Header":{":topic":"t","x":"a\nb"},"Body":""}"#);
        let body = frame([a.clone(), b.clone()].iter(), 100);
        let parts = split(&body);
        assert_eq!(parts, vec![&a[..], &b[..]]);
        assert_eq!(split(b"x\r\n\n y \n"), vec![&b"x"[..], &b" y "[..]]);
    }

    #[test]
    fn response_round_trip() {
        let r = encode_response(vec![Failure { index: 2, status: 500, error: "boom".into() }]);
        let d = decode_response(&r).unwrap();
        assert_eq!(d.failed, vec![Failure { index: 2, status: 500, error: "boom".into() }]);
        assert!(decode_response(b"{}").unwrap().failed.is_empty());
        assert!(decode_response(b"nope").is_err());
    }
}
