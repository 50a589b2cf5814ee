//! `Payload`: one published message's bytes, shared by all its copies, in both wire forms: the
//! raw frame (`frames`, for hyperbroker nodes that announce `frames=1`) and go-micro's JSON
//! envelope (`codec`, for everybody else). The frame is made when the message is published; the
//! JSON envelope only the first time a node that wants JSON needs it, and then once for all.
//!
//! A small body is copied into the frame (one buffer per message); a large one stays where the
//! caller had it (`Bytes`, e.g. over the publisher's Python `bytes`) and is written to the socket
//! from there.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::codec::{self, MICRO_TOPIC_HEADER, TOPIC_HEADER};
use crate::frames;

/// Bodies from this size on travel by reference rather than being copied into a buffer.
pub const BY_REFERENCE: usize = 4096;

/// One message's bytes (see the module doc).
#[derive(Debug)]
pub struct Payload {
    /// the frame head, followed by the body itself when `body` is None
    frame: Bytes,
    head_len: usize,
    /// a large body, by reference
    body: Option<Bytes>,
    json: OnceLock<Bytes>,
}

/// The header as the wire carries it: the topic keys are the topic argument's business.
fn user_entries<'a>(header: impl Iterator<Item = (&'a str, &'a str)>) -> impl Iterator<Item = (&'a str, &'a str)> {
    header.filter(|(k, _)| *k != TOPIC_HEADER && *k != MICRO_TOPIC_HEADER)
}

/// The frame head of a `body_len`-byte message, in a buffer with room for `room` more bytes.
fn head<'a>(topic: &str, header: impl Iterator<Item = (&'a str, &'a str)> + Clone, body_len: usize, room: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames::head_len(topic, user_entries(header.clone())) + room);
    frames::encode_head(&mut out, topic, user_entries(header), body_len);
    out
}

impl Payload {
    /// A message whose body is copied into its frame. Topic, header entries and body must each
    /// be under 4 GiB (the frame's u32 lengths; `py::codec::payload_py` refuses bigger ones).
    pub fn new<'a>(topic: &str, header: impl Iterator<Item = (&'a str, &'a str)> + Clone, body: &[u8]) -> Self {
        let mut out = head(topic, header, body.len(), body.len());
        let head_len = out.len();
        out.extend_from_slice(body);
        Payload { frame: Bytes::from(out), head_len, body: None, json: OnceLock::new() }
    }

    /// A message over a body the caller already holds: referenced when large, else copied.
    pub fn with_body<'a>(topic: &str, header: impl Iterator<Item = (&'a str, &'a str)> + Clone, body: Bytes) -> Self {
        if body.len() < BY_REFERENCE {
            return Payload::new(topic, header, &body);
        }
        let out = head(topic, header, body.len(), 0);
        Payload { head_len: out.len(), frame: Bytes::from(out), body: Some(body), json: OnceLock::new() }
    }

    /// The frame as buffers to write in order: the head (with the body when small), then the
    /// large body if any.
    pub fn frame_parts(&self) -> (&Bytes, Option<&Bytes>) {
        (&self.frame, self.body.as_ref())
    }

    pub fn frame_len(&self) -> usize {
        self.frame.len() + self.body.as_ref().map_or(0, Bytes::len)
    }

    pub fn body(&self) -> &[u8] {
        match &self.body {
            Some(b) => b,
            None => &self.frame[self.head_len..],
        }
    }

    /// The topic and the user header (in order).
    pub fn header(&self) -> (String, Vec<(String, String)>) {
        // the head was written by `frames::encode_head` just above: it parses
        frames::parse_head(&self.frame[..self.head_len]).unwrap_or_default()
    }

    /// go-micro's JSON envelope of this message (made on first use, then shared).
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            let (topic, header) = self.header();
            let pairs = header.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let mut out = Vec::with_capacity(codec::encoded_len_hint(&topic, pairs.clone(), self.body().len()) + topic.len() + 16);
            codec::encode_message_into(&mut out, &topic, pairs, self.body());
            Bytes::from(out)
        })
    }

    /// Bytes this message holds: its frame, and its JSON envelope once made.
    pub fn held_len(&self) -> usize {
        self.frame_len() + self.json.get().map_or(0, Bytes::len)
    }

    /// Size of the form a node gets: the frame, or the JSON envelope (which this makes).
    pub fn wire_len(&self, frames: bool) -> usize {
        if frames {
            self.frame_len()
        } else {
            self.json().len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(p: &Payload) -> Vec<u8> {
        let (a, b) = p.frame_parts();
        [&a[..], b.map_or(&[][..], |b| &b[..])].concat()
    }

    #[test]
    fn both_forms_carry_the_same_message() {
        for body in [vec![], b"hi".to_vec(), vec![9u8; BY_REFERENCE + 1]] {
            let h = [("k", "v"), (":topic", "x"), ("Micro-Topic", "y")];
            for p in [Payload::new("t", h.into_iter(), &body), Payload::with_body("t", h.into_iter(), Bytes::from(body.clone()))] {
                let from_frame: Vec<_> = frames::decode(&frame_bytes(&p)[..]).unwrap().into_iter().map(Result::unwrap).collect();
                let from_json = codec::decode_message(p.json()).unwrap();
                assert_eq!(from_frame, vec![from_json.clone()]);
                assert_eq!((from_json.topic.as_str(), &from_json.header[..]), ("t", &[("k".to_string(), "v".to_string())][..]));
                assert_eq!(p.body(), &body[..]);
                assert_eq!(p.frame_len(), frame_bytes(&p).len());
                assert_eq!((p.wire_len(true), p.wire_len(false)), (p.frame_len(), p.json().len()));
                assert_eq!(p.header().0, "t");
            }
        }
    }

    #[test]
    fn a_large_body_is_referenced_not_copied() {
        let body = Bytes::from(vec![1u8; BY_REFERENCE]);
        let p = Payload::with_body("t", std::iter::empty(), body.clone());
        assert_eq!(p.frame_parts().1.map(|b| b.as_ptr()), Some(body.as_ptr()));
        assert_eq!(p.body().as_ptr(), body.as_ptr());
        let small = Payload::with_body("t", std::iter::empty(), Bytes::from(vec![1u8; BY_REFERENCE - 1]));
        assert!(small.frame_parts().1.is_none());
    }

    #[test]
    fn the_json_form_is_made_once_and_then_counts_as_held() {
        let p = Payload::new("t", std::iter::empty(), b"x");
        assert_eq!(p.held_len(), p.frame_len(), "no JSON form yet");
        assert_eq!(p.json().as_ptr(), p.json().as_ptr());
        assert_eq!(p.held_len(), p.frame_len() + p.json().len(), "the backlog weighs both forms");
    }
}
