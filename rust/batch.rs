//! The batching extension: several envelopes in one POST, only towards nodes that advertise it
//! (registry metadata `batch=1`). A go-micro node never sees a batch.
//!
//! Request: `Content-Type: application/x-ndjson`, body = envelopes (each the ordinary go-micro
//! JSON envelope, which never contains a raw newline) separated by `\n`.
//! Response: `200` with `{"received":N,"failed":[{"index":I,"status":S,"error":"..."}]}`: N is
//! how many envelopes the node read (a publisher that sent more retries the whole request),
//! `failed` names the envelopes
//! that were not handled (status 500: the handler raised, 400: undecodable, 404: unknown
//! subscriber, 503: subscriber closing); only those are retried by the publisher.
//! `replies` (present only when some handler returned a value; older publishers ignore it):
//! `[{"index":I,"reply":<envelope>}]`, each reply a go-micro envelope as `codec` writes it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// A request body made of the messages' own buffers (and the separators between them), written
/// with vectored I/O: large bodies are never copied into one buffer.
pub struct Chunks {
    parts: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

/// Builds `Chunks`: small pieces are coalesced into contiguous segments (thousands of tiny
/// buffers make slow vectored writes); large ones travel by reference, uncopied. `flat` copies
/// everything into one segment (see `client::Transport::send`: HTTP/2 wants one DATA payload).
struct Builder {
    parts: std::collections::VecDeque<Bytes>,
    cur: bytes::BytesMut,
    remaining: u64,
    flat: bool,
}

impl Builder {
    fn new(flat: bool) -> Self {
        Builder { parts: Default::default(), cur: bytes::BytesMut::new(), remaining: 0, flat }
    }

    fn push(&mut self, b: &Bytes) {
        self.remaining += b.len() as u64;
        if self.flat || b.len() < crate::payload::BY_REFERENCE {
            self.cur.extend_from_slice(b);
            return;
        }
        if !self.cur.is_empty() {
            self.parts.push_back(self.cur.split().freeze());
        }
        self.parts.push_back(b.clone());
    }

    fn done(mut self) -> Chunks {
        if !self.cur.is_empty() {
            self.parts.push_back(self.cur.freeze());
        }
        Chunks { parts: self.parts, remaining: self.remaining }
    }
}

static NEWLINE: Bytes = Bytes::from_static(b"\n");

impl Chunks {
    pub fn one(b: Bytes) -> Self {
        let remaining = b.len() as u64;
        Chunks { parts: std::iter::once(b).collect(), remaining }
    }

    /// A batch body (`CONTENT_TYPE`): the JSON envelopes separated by newlines.
    pub fn batch<'a>(envelopes: impl Iterator<Item = &'a Bytes>, flat: bool) -> Self {
        let mut b = Builder::new(flat);
        for (i, e) in envelopes.enumerate() {
            if i > 0 {
                b.push(&NEWLINE);
            }
            b.push(e);
        }
        b.done()
    }

    /// A frames body (`frames::CONTENT_TYPE`): the messages' frames back to back.
    pub fn frames<'a>(payloads: impl Iterator<Item = &'a crate::payload::Payload>, flat: bool) -> Self {
        let mut b = Builder::new(flat);
        for p in payloads {
            let (head, body) = p.frame_parts();
            b.push(head);
            if let Some(body) = body {
                b.push(body);
            }
        }
        b.done()
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let next = self.parts.pop_front();
        if let Some(b) = &next {
            self.remaining -= b.len() as u64;
        }
        std::task::Poll::Ready(next.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// Split a batch body into envelopes (empty lines, e.g. a trailing newline, are skipped; a
/// `\r` before the newline is tolerated).
pub fn split(body: &[u8]) -> Vec<&[u8]> {
    body.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.iter().all(|b| b.is_ascii_whitespace())).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub index: usize,
    pub status: u16,
    pub error: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BatchResponse {
    /// how many envelopes the node read from the request: a publisher that sent more treats
    /// the request as failed instead of taking silence for success
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<usize>,
    #[serde(default)]
    pub failed: Vec<Failure>,
}

/// The response to a batch: `replies` are (index, reply envelope) of the handlers that returned
/// a value; each envelope is embedded as the JSON it already is.
pub fn encode_response(received: usize, failed: Vec<Failure>, replies: &[(usize, Bytes)]) -> Bytes {
    let mut out = serde_json::to_vec(&BatchResponse { received: Some(received), failed }).unwrap_or_else(|_| b"{\"failed\":[]}".to_vec());
    if !replies.is_empty() && out.last() == Some(&b'}') {
        out.pop();
        out.extend_from_slice(b",\"replies\":[");
        for (i, (index, env)) in replies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(format!("{{\"index\":{index},\"reply\":").as_bytes());
            out.extend_from_slice(env);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
    Bytes::from(out)
}

#[derive(Deserialize)]
struct RepliesOnly {
    #[serde(default)]
    replies: Vec<RawReply>,
}

#[derive(Deserialize)]
struct RawReply {
    index: usize,
    reply: serde_json::Value,
}

/// The replies of a batch response: (index, decoded reply envelope), in the order given.
pub fn decode_replies(body: &[u8]) -> Result<Vec<(usize, crate::codec::Envelope)>, crate::error::Error> {
    let bad = |e: String| crate::error::Error::peer(format!("bad batch replies: {e}"));
    let r: RepliesOnly = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    r.replies
        .into_iter()
        .map(|r| {
            let raw = serde_json::to_vec(&r.reply).map_err(|e| bad(e.to_string()))?;
            crate::codec::decode(&raw).map(|env| (r.index, env)).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

pub fn decode_response(body: &[u8]) -> Result<BatchResponse, crate::error::Error> {
    serde_json::from_slice(body).map_err(|e| crate::error::Error::peer(format!("bad batch response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// Join envelopes into one batch body.
    fn frame<'a>(envelopes: impl Iterator<Item = &'a Bytes>, size_hint: usize) -> Bytes {
        let mut out = BytesMut::with_capacity(size_hint);
        for (i, e) in envelopes.enumerate() {
            if i > 0 {
                out.put_u8(b'\n');
            }
            out.extend_from_slice(e);
        }
        out.freeze()
    }

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
    fn chunks_carry_the_same_bytes_as_frame() {
        use http_body_util::BodyExt;
        let a = Bytes::from_static(b"first");
        let b = Bytes::from_static(b"second");
        let big = Bytes::from(vec![b'x'; 5000]);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for set in [vec![a.clone(), b.clone()], vec![a.clone(), big.clone(), b.clone(), big.clone()], vec![big.clone()]] {
            let flat = frame(set.iter(), 16);
            for one_segment in [false, true] {
                let body = Chunks::batch(set.iter(), one_segment);
                assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(flat.len() as u64));
                assert_eq!(body.parts.len() == 1, one_segment || set.len() == 1 || set.iter().all(|e| e.len() < 4096));
                let got = rt.block_on(body.collect()).unwrap().to_bytes();
                assert_eq!(got, flat);
            }
        }
    }

    #[test]
    fn response_round_trip() {
        let r = encode_response(5, vec![Failure { index: 2, status: 500, error: "boom".into() }], &[]);
        assert!(!String::from_utf8_lossy(&r).contains("replies"), "no replies: the response is as before");
        assert!(decode_replies(&r).unwrap().is_empty());
        let d = decode_response(&r).unwrap();
        assert_eq!(d.received, Some(5));
        assert_eq!(d.failed, vec![Failure { index: 2, status: 500, error: "boom".into() }]);
        assert!(decode_response(b"{}").unwrap().failed.is_empty());
        assert!(matches!(decode_response(b"nope"), Err(crate::error::Error::Peer(m)) if m.starts_with("bad batch response: ")));
    }

    #[test]
    fn replies_ride_along_and_older_decoders_ignore_them() {
        let one = Bytes::from(crate::codec::encode("t", [("k", "v")].into_iter(), b"first"));
        let two = Bytes::from(crate::codec::encode("t", std::iter::empty(), b""));
        let r = encode_response(4, vec![Failure { index: 1, status: 500, error: "boom".into() }], &[(0, one), (3, two)]);
        let d = decode_response(&r).unwrap();
        assert_eq!((d.received, d.failed.len()), (Some(4), 1));
        let replies = decode_replies(&r).unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(
            (replies[0].0, &replies[0].1.header, &replies[0].1.body[..]),
            (0, &vec![("k".to_string(), "v".to_string())], &b"first"[..])
        );
        assert_eq!((replies[1].0, &replies[1].1.body[..]), (3, &b""[..]));
        assert!(decode_replies(br#"{"replies":[{"index":0,"reply":{"Body":1}}]}"#).is_err());
    }
}
