//! The raw frame format between hyperbroker nodes: several messages in one POST with their body
//! bytes as they are (no JSON escaping, no base64), only towards nodes that announce it
//! (registry metadata `frames=1`). go-micro peers and other nodes keep getting JSON envelopes.
//!
//! Request: `Content-Type: application/x-hyperbroker-frames`, body = frames back to back. A frame
//! is, every length a big-endian u32:
//!
//! ```text
//! topic_len topic  count (key_len key value_len value)*count  body_len body
//! ```
//!
//! topic, keys and values are UTF-8; the header holds the user's entries only (the topic is not
//! repeated in it). The response is the batch response of `batch.rs` (`received`, `failed` by
//! index, `replies`). A body that is not a whole number of frames (a length that runs past its
//! end) is refused as a whole with 400: after a bad length nothing can be trusted. A frame whose
//! lengths are intact but whose content is refused (not UTF-8, no topic, over the receiver's
//! limits) fails alone, as a 400 in the batch response; the frames around it are handled.
//!
//! Decoding never copies a body out of the receive buffers: a body is a `Bytes` slice of the
//! buffer it lies in, or, when it straddles buffers, slices of each (`Envelope::rest`), so that
//! its one copy is the one into Python. Pure Rust, no Python, fuzzed
//! (`fuzz/fuzz_targets/frames.rs`).

use std::fmt;

use bytes::{Buf, BufMut};

use crate::codec::Envelope;

pub const CONTENT_TYPE: &str = "application/x-hyperbroker-frames";

/// Why a frames body (`Truncated`: all of it) or one frame (the others) was refused. The
/// message (`Display`) is meant for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The body ends inside frame `index`, reading `what`: nothing after can be trusted.
    Truncated { index: usize, what: &'static str },
    /// Frame `index` has a `what` that is not UTF-8 (its lengths are intact: the rest decodes).
    NotUtf8 { index: usize, what: &'static str },
    /// Frame `index` has an empty topic.
    NoTopic { index: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { index, what } => write!(f, "frame {index} is truncated: the body ends inside its {what}"),
            FrameError::NotUtf8 { index, what } => write!(f, "frame {index}: its {what} is not UTF-8"),
            FrameError::NoTopic { index } => write!(f, "frame {index} has an empty topic"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Append the head of one frame (everything before the body bytes) to `out`.
pub fn encode_head<'a>(out: &mut Vec<u8>, topic: &str, header: impl Iterator<Item = (&'a str, &'a str)>, body_len: usize) {
    put_str(out, topic);
    let count_at = out.len();
    out.put_u32(0);
    let mut count = 0u32;
    for (k, v) in header {
        put_str(out, k);
        put_str(out, v);
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
    out.put_u32(len32(body_len));
}

/// Size of the head `encode_head` writes.
pub fn head_len<'a>(topic: &str, header: impl Iterator<Item = (&'a str, &'a str)>) -> usize {
    12 + topic.len() + header.map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>()
}

/// One frame in a new buffer.
pub fn encode<'a>(topic: &str, header: impl Iterator<Item = (&'a str, &'a str)> + Clone, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_len(topic, header.clone()) + body.len());
    encode_head(&mut out, topic, header, body.len());
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u32(len32(s.len()));
    out.extend_from_slice(s.as_bytes());
}

/// Lengths are u32 on the wire; a sender's own limits keep every field far below 4 GiB.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Read the topic and header of a frame head written by `encode_head` (a message this process
/// encoded itself); the body length is not returned. None when `head` is not such a head.
pub fn parse_head(mut head: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let left = head.len();
    let mut r = Reader { buf: &mut head, left, index: 0 };
    let topic = r.string("topic").ok()?.ok()?;
    let header = r.header().ok()?.ok()?;
    Some((topic, header))
}

/// Decode a whole frames body: each frame, or why that frame is refused (a frame whose lengths
/// are intact does not spoil the others); `Err` when the body is not a whole number of frames.
/// `buf` may be split over several chunks (the receive buffers as hyper handed them over): a
/// body inside one chunk is sliced from it, not copied. No length is trusted before the bytes
/// it announces are there, so what is allocated is bounded by the body's size (times the
/// bookkeeping per frame and per header entry); the receiver's limits (topic, header) are for
/// the caller to check on what decodes, as for a JSON envelope.
pub fn decode<B: Buf>(mut buf: B) -> Result<Vec<Result<Envelope, FrameError>>, FrameError> {
    let mut out = Vec::new();
    // `remaining()` of a chunk list walks the list: count down here instead
    let mut left = buf.remaining();
    while left > 0 {
        let mut r = Reader { buf: &mut buf, left, index: out.len() };
        out.push(r.frame()?);
        left = r.left;
    }
    Ok(out)
}

struct Reader<'a, B: Buf> {
    buf: &'a mut B,
    /// bytes of `buf` not read yet
    left: usize,
    index: usize,
}

/// The outer error ends the decoding (truncated); the inner one refuses just this frame.
type Field<T> = Result<Result<T, FrameError>, FrameError>;

impl<B: Buf> Reader<'_, B> {
    fn frame(&mut self) -> Field<Envelope> {
        let topic = self.string("topic")?;
        let header = self.header()?;
        let len = self.len("body length")?;
        if self.left < len {
            return Err(FrameError::Truncated { index: self.index, what: "body" });
        }
        self.left -= len;
        // a slice of the receive buffer; a body that straddles buffers stays in pieces of them
        let mut body = self.buf.copy_to_bytes(len.min(self.buf.chunk().len()));
        let mut rest = Vec::new();
        let mut missing = len - body.len();
        while missing > 0 {
            let piece = self.buf.copy_to_bytes(missing.min(self.buf.chunk().len()).max(1));
            missing -= piece.len();
            if body.is_empty() {
                body = piece;
            } else {
                rest.push(piece);
            }
        }
        Ok((|| {
            let topic = topic?;
            if topic.is_empty() {
                return Err(FrameError::NoTopic { index: self.index });
            }
            Ok(Envelope { topic, header: header?, body, rest })
        })())
    }

    fn header(&mut self) -> Field<Vec<(String, String)>> {
        let count = self.len("header count")?;
        // every entry takes 8 bytes at least: a count the body cannot hold is a truncation
        if count > self.left / 8 {
            return Err(FrameError::Truncated { index: self.index, what: "header" });
        }
        let mut header = Ok(Vec::with_capacity(count.min(64)));
        for _ in 0..count {
            let k = self.string("header key")?;
            let v = self.string("header value")?;
            if let Ok(h) = &mut header {
                match (k, v) {
                    (Ok(k), Ok(v)) => h.push((k, v)),
                    (Err(e), _) | (_, Err(e)) => header = Err(e),
                }
            }
        }
        Ok(header)
    }

    fn len(&mut self, what: &'static str) -> Result<usize, FrameError> {
        if self.left < 4 {
            return Err(FrameError::Truncated { index: self.index, what });
        }
        self.left -= 4;
        Ok(self.buf.get_u32() as usize)
    }

    fn string(&mut self, what: &'static str) -> Field<String> {
        let len = self.len(what)?;
        if self.left < len {
            return Err(FrameError::Truncated { index: self.index, what });
        }
        self.left -= len;
        let mut v = vec![0u8; len];
        self.buf.copy_to_slice(&mut v);
        Ok(String::from_utf8(v).map_err(|_| FrameError::NotUtf8 { index: self.index, what }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn env(topic: &str, header: &[(&str, &str)], body: &[u8]) -> Envelope {
        Envelope::new(topic.into(), header.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), Bytes::copy_from_slice(body))
    }

    fn frame(e: &Envelope) -> Vec<u8> {
        encode(&e.topic, e.header.iter().map(|(k, v)| (k.as_str(), v.as_str())), &e.body_bytes())
    }

    fn ok<B: Buf>(b: B) -> Vec<Envelope> {
        decode(b).unwrap().into_iter().map(Result::unwrap).collect()
    }

    #[test]
    fn round_trip_of_several_frames() {
        let msgs = [env("a", &[], b""), env("t/x", &[("k", "v"), ("", "é")], b"\x00\n{\"raw"), env("z", &[("a", "")], &[7u8; 5000])];
        let body: Vec<u8> = msgs.iter().flat_map(frame).collect();
        assert_eq!(ok(&body[..]), msgs);
        assert_eq!(ok(&b""[..]), vec![]);
    }

    #[test]
    fn head_is_what_parse_head_reads() {
        let mut head = Vec::new();
        encode_head(&mut head, "t", [("k", "v")].into_iter(), 3);
        assert_eq!(head.len(), head_len("t", [("k", "v")].into_iter()));
        assert_eq!(parse_head(&head), Some(("t".to_string(), vec![("k".to_string(), "v".to_string())])));
        assert_eq!(parse_head(&head[..5]), None);
    }

    #[test]
    fn a_body_in_one_chunk_is_not_copied() {
        let body = Bytes::from(frame(&env("t", &[], &[1u8; 100])));
        let envs = ok(body.clone());
        let at = envs[0].body.as_ptr() as usize - body.as_ptr() as usize;
        assert_eq!((at, envs[0].body.len()), (body.len() - 100, 100));
    }

    #[test]
    fn frames_split_over_chunks_decode() {
        let msgs = [env("t", &[("h", "v")], &[3u8; 300]), env("u", &[], b"xy")];
        let body: Vec<u8> = msgs.iter().flat_map(frame).collect();
        for cut in 0..body.len() {
            let (a, b) = (Bytes::copy_from_slice(&body[..cut]), Bytes::copy_from_slice(&body[cut..]));
            let got = ok(a.clone().chain(b.clone()));
            assert_eq!(got, msgs, "cut at {cut}");
            // no body is copied: every piece is a slice of one of the two buffers
            for p in got.iter().flat_map(Envelope::body_pieces).filter(|p| !p.is_empty()) {
                let inside = |buf: &Bytes| buf.as_ptr() <= p.as_ptr() && p.as_ptr() as usize + p.len() <= buf.as_ptr() as usize + buf.len();
                assert!(inside(&a) || inside(&b), "cut at {cut}: a body piece was copied");
            }
            assert_eq!(got[0].rest.is_empty(), !(cut > 23 && cut < 23 + 300), "cut at {cut}: straddled or not");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let body = frame(&env("t", &[("k", "v")], b"body"));
        for cut in 1..body.len() {
            assert!(matches!(decode(&body[..cut]), Err(FrameError::Truncated { index: 0, .. })), "cut at {cut}");
        }
        let two: Vec<u8> = [body.clone(), body.clone()].concat();
        assert!(matches!(decode(&two[..two.len() - 1]), Err(FrameError::Truncated { index: 1, what: "body" })));
    }

    #[test]
    fn announced_lengths_are_not_allocated() {
        // a huge body length, or a header count the body cannot hold, fails as truncated at once
        let mut head = Vec::new();
        encode_head(&mut head, "t", std::iter::empty(), u32::MAX as usize);
        assert!(matches!(decode(&head[..]), Err(FrameError::Truncated { what: "body", .. })));
        let mut f = frame(&env("t", &[], b""));
        f[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&f[..]), Err(FrameError::Truncated { what: "header", .. })));
    }

    #[test]
    fn many_empty_header_entries_decode_as_what_they_are() {
        // a count the body does hold is taken as it is: the endpoint's limits refuse it later
        let entries: Vec<(&str, &str)> = vec![("", ""); 10_000];
        let got = ok(&encode("t", entries.iter().copied(), b"b")[..]);
        assert_eq!((got[0].header.len(), &got[0].body[..]), (10_000, &b"b"[..]));
    }

    #[test]
    fn a_bad_frame_is_refused_alone() {
        let good = frame(&env("t", &[("k", "v")], b"1"));
        let mut bad_topic = frame(&env("t", &[("k", "v")], b"2"));
        bad_topic[4] = 0xff;
        let mut bad_value = frame(&env("t", &[("k", "v")], b"3"));
        bad_value[18] = 0xff;
        let empty = frame(&env("", &[], b"4"));
        let got = decode(&[good.clone(), bad_topic, bad_value, empty, good][..].concat()[..]).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[1], Err(FrameError::NotUtf8 { index: 1, what: "topic" }));
        assert_eq!(got[2], Err(FrameError::NotUtf8 { index: 2, what: "header value" }));
        assert_eq!(got[3], Err(FrameError::NoTopic { index: 3 }));
        assert_eq!((&got[0].as_ref().unwrap().body[..], &got[4].as_ref().unwrap().body[..]), (&b"1"[..], &b"1"[..]));
        assert!(FrameError::NoTopic { index: 3 }.to_string().contains("frame 3"));
    }
}
