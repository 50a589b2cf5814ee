//! The go-micro envelope: `{"Header": {":topic": "...", ...}, "Body": "<standard base64>"}`.
//!
//! This is what Go's `encoding/json` makes of go-micro's `broker.Message` (a `map[string]string`
//! header and a `[]byte` body). Decoding follows encoding/json: field names match in any letter
//! case, unknown fields are ignored, a `null` or missing body is empty. Pure Rust, no Python.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Go's `base64.StdEncoding` decoder: padding required, non-zero trailing bits ignored.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true).with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Header key that carries the topic in go-micro's HTTP broker.
pub const TOPIC_HEADER: &str = ":topic";
/// Header key newer go-micro versions use for the topic.
pub const MICRO_TOPIC_HEADER: &str = "Micro-Topic";

/// A decoded envelope: the topic, the user header (without `:topic`) in wire order, the body.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub topic: String,
    pub header: Vec<(String, String)>,
    /// the body: a slice of the receive buffer where possible (see `frames`); when the body
    /// straddles receive buffers, only its first piece (the others are in `rest`)
    pub body: bytes::Bytes,
    /// the further pieces of a body that straddles receive buffers (frames only; else empty):
    /// kept as slices of those buffers so that the body is copied once, into Python
    pub rest: Vec<bytes::Bytes>,
}

impl Envelope {
    pub fn new(topic: String, header: Vec<(String, String)>, body: bytes::Bytes) -> Self {
        Envelope { topic, header, body, rest: Vec::new() }
    }

    /// The body's length, all pieces together.
    pub fn body_len(&self) -> usize {
        self.body.len() + self.rest.iter().map(bytes::Bytes::len).sum::<usize>()
    }

    /// The body's pieces, in order (one, unless it straddled receive buffers).
    pub fn body_pieces(&self) -> impl Iterator<Item = &bytes::Bytes> {
        std::iter::once(&self.body).chain(self.rest.iter())
    }

    /// The body in one buffer (a copy only when it is in pieces).
    pub fn body_bytes(&self) -> bytes::Bytes {
        if self.rest.is_empty() {
            return self.body.clone();
        }
        let mut out = vec![0; self.body_len()];
        self.copy_body_into(&mut out);
        out.into()
    }

    /// Copy the body's pieces, in order, to the start of `dst` (which holds `body_len()` bytes
    /// at least; a shorter one gets what fits).
    pub fn copy_body_into(&self, dst: &mut [u8]) {
        let mut at = 0;
        for p in self.body_pieces() {
            let n = p.len().min(dst.len() - at);
            dst[at..at + n].copy_from_slice(&p[..n]);
            at += n;
        }
    }
}

/// Envelopes are equal when they carry the same message, however the body is cut into pieces.
impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.header == other.header
            && self.body_len() == other.body_len()
            && self.body_pieces().flat_map(|p| p.iter()).eq(other.body_pieces().flat_map(|p| p.iter()))
    }
}

impl Eq for Envelope {}

/// Why an envelope could not be decoded. The message (`Display`) is meant for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The document is not JSON, or not a JSON object (serde_json's description).
    InvalidJson(String),
    /// The `Header` field is not what go-micro writes.
    BadHeader(HeaderFault),
    /// The `Body` field is not what go-micro writes.
    BadBody(BodyFault),
    /// Neither `:topic` nor `Micro-Topic` names a topic.
    NoTopic,
}

/// What is wrong with an envelope's `Header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFault {
    /// `Header` is an array, a string, a number...
    NotAnObject,
    /// The value of this header key is not a string (nor null).
    ValueNotString { key: String },
}

/// What is wrong with an envelope's `Body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    /// `Body` is a number, an array, an object...
    NotAString,
    /// `Body` is a string but not standard base64 (the decoder's reason).
    NotBase64(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::InvalidJson(e) => write!(f, "invalid JSON envelope: {e}"),
            CodecError::BadHeader(h) => write!(f, "invalid envelope Header: {h}"),
            CodecError::BadBody(b) => write!(f, "invalid envelope Body: {b}"),
            CodecError::NoTopic => write!(f, "envelope has no topic: neither a ':topic' nor a 'Micro-Topic' header is set"),
        }
    }
}

impl fmt::Display for HeaderFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderFault::NotAnObject => f.write_str("Header is not an object of strings"),
            HeaderFault::ValueNotString { key } => write!(f, "value of header {key:?} is not a string"),
        }
    }
}

impl fmt::Display for BodyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyFault::NotAString => f.write_str("Body is not a base64 string"),
            BodyFault::NotBase64(e) => write!(f, "Body is not valid standard base64: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping of a &str cannot fail when writing to a Vec.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Size hint for an encoded envelope, so callers can reserve once.
pub fn encoded_len_hint<'a>(topic: &str, header: impl Iterator<Item = (&'a str, &'a str)>, body_len: usize) -> usize {
    let h: usize = header.map(|(k, v)| k.len() + v.len() + 6).sum();
    32 + topic.len() + h + body_len.div_ceil(3) * 4
}

/// Encode one envelope into `out` (appending), as go-micro v1 writes it (`hyperbroker.encode`).
/// A `:topic` key in `header` is ignored: the topic argument is authoritative.
pub fn encode_into<'a>(out: &mut Vec<u8>, topic: &str, header: impl Iterator<Item = (&'a str, &'a str)>, body: &[u8]) {
    encode_with(out, topic, header, body, false)
}

/// Encode one envelope as the publisher sends it: the topic under both `:topic` (go-micro v1
/// reads it) and `Micro-Topic` (current go-micro reads only that one; v1 passes it on as a
/// header). `:topic` and `Micro-Topic` keys in `header` are ignored.
pub fn encode_message_into<'a>(out: &mut Vec<u8>, topic: &str, header: impl Iterator<Item = (&'a str, &'a str)>, body: &[u8]) {
    encode_with(out, topic, header, body, true)
}

fn encode_with<'a>(out: &mut Vec<u8>, topic: &str, header: impl Iterator<Item = (&'a str, &'a str)>, body: &[u8], micro_topic: bool) {
    out.extend_from_slice(b"{\"Header\":{\":topic\":");
    write_json_str(out, topic);
    if micro_topic {
        out.extend_from_slice(b",\"Micro-Topic\":");
        write_json_str(out, topic);
    }
    for (k, v) in header {
        if k == TOPIC_HEADER || (micro_topic && k == MICRO_TOPIC_HEADER) {
            continue;
        }
        out.push(b',');
        write_json_str(out, k);
        out.push(b':');
        write_json_str(out, v);
    }
    out.extend_from_slice(b"},\"Body\":\"");
    let b64_len = body.len().div_ceil(3) * 4;
    out.reserve(b64_len + 2);
    // SIMD where the CPU has it, straight into the spare capacity (no zero-filling first)
    let written = {
        let spare = &mut out.spare_capacity_mut()[..b64_len];
        base64_simd::STANDARD.encode(body, base64_simd::Out::from_uninit_slice(spare)).len()
    };
    // SAFETY: `encode` initialised exactly `written` (= b64_len) bytes of the spare capacity
    unsafe { out.set_len(out.len() + written) };
    out.extend_from_slice(b"\"}");
}

/// Encode one envelope into a new buffer.
pub fn encode<'a>(topic: &str, header: impl Iterator<Item = (&'a str, &'a str)> + Clone, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len_hint(topic, header.clone(), body.len()));
    encode_into(&mut out, topic, header, body);
    out
}

// --- decoding -------------------------------------------------------------------------------

/// The side slot where the visitors leave the typed reason of a failure. serde_json's error
/// carries only text, so a visitor that finds a bad Header or Body records a `CodecError` here
/// and returns a placeholder error; `parse` pairs the two again.
#[derive(Default)]
struct Fault(Cell<Option<CodecError>>);

impl Fault {
    /// Record `e` unless an inner visitor already recorded a more precise reason, and return
    /// the placeholder error that unwinds the deserializer.
    fn record<E: de::Error>(&self, e: CodecError) -> E {
        let kept = self.0.take().unwrap_or(e);
        let placeholder = E::custom(&kept);
        self.0.set(Some(kept));
        placeholder
    }
}

struct HeaderSeed<'f> {
    fault: &'f Fault,
}

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = Option<Vec<(String, String)>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let fault = self.fault;
        d.deserialize_any(HeaderVisitor { fault }).map_err(|_| fault.record(CodecError::BadHeader(HeaderFault::NotAnObject)))
    }
}

struct HeaderVisitor<'f> {
    fault: &'f Fault,
}

impl<'de> Visitor<'de> for HeaderVisitor<'_> {
    type Value = Option<Vec<(String, String)>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Header to be an object of strings")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(k) = map.next_key::<String>()? {
            let v = match map.next_value::<Option<String>>() {
                Ok(v) => v.unwrap_or_default(),
                Err(_) => return Err(self.fault.record(CodecError::BadHeader(HeaderFault::ValueNotString { key: k }))),
            };
            // Go's map decoding: a repeated key overwrites the earlier value.
            if let Some(slot) = out.iter_mut().find(|(ek, _)| *ek == k) {
                slot.1 = v;
            } else {
                out.push((k, v));
            }
        }
        Ok(Some(out))
    }
}

struct BodySeed<'f> {
    fault: &'f Fault,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(BodyVisitor).map_err(|_| self.fault.record(CodecError::BadBody(BodyFault::NotAString)))
    }
}

/// Borrows the Body string from the input when it has no escapes (base64 never has), so a
/// large body is not copied before it is decoded.
struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Body to be a base64 string or null")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

struct RawEnvelope<'de> {
    header: Vec<(String, String)>,
    body: Option<Cow<'de, str>>,
}

struct EnvelopeVisitor<'f> {
    fault: &'f Fault,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_> {
    type Value = RawEnvelope<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with Header and Body")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut header = Vec::new();
        let mut body = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key.eq_ignore_ascii_case("header") {
                // Go decodes a repeated field into the same map: the entries merge; null resets it.
                let more: Option<Vec<(String, String)>> = map.next_value_seed(HeaderSeed { fault: self.fault })?;
                let Some(more) = more else {
                    header.clear();
                    continue;
                };
                for (k, v) in more {
                    match header.iter_mut().find(|(ek, _): &&mut (String, String)| *ek == k) {
                        Some(slot) => slot.1 = v,
                        None => header.push((k, v)),
                    }
                }
            } else if key.eq_ignore_ascii_case("body") {
                body = map.next_value_seed(BodySeed { fault: self.fault })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(RawEnvelope { header, body })
    }
}

/// A failed parse: serde_json's error, and the typed reason a visitor recorded (none for a
/// document that is not a JSON object, or has trailing data).
struct ParseFailure {
    json: serde_json::Error,
    fault: Option<CodecError>,
}

impl ParseFailure {
    fn into_codec_error(self) -> CodecError {
        self.fault.unwrap_or_else(|| CodecError::InvalidJson(self.json.to_string()))
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, CodecError> {
    // the fast path: canonical base64 (what every encoder, Go's included, produces), SIMD
    if let Ok(v) = base64_simd::STANDARD.decode_to_vec(s.as_bytes()) {
        return Ok(v);
    }
    // Go's base64 decoder skips \r and \n and ignores non-zero trailing bits; do the same.
    let res = if s.bytes().any(|b| b == b'\r' || b == b'\n') {
        let cleaned: Vec<u8> = s.bytes().filter(|b| *b != b'\r' && *b != b'\n').collect();
        GO_STD.decode(cleaned)
    } else {
        GO_STD.decode(s.as_bytes())
    };
    res.map_err(|e| CodecError::BadBody(BodyFault::NotBase64(e.to_string())))
}

fn parse(data: &[u8]) -> Result<RawEnvelope<'_>, ParseFailure> {
    let fault = Fault::default();
    let mut de = serde_json::Deserializer::from_slice(data);
    let raw = de.deserialize_map(EnvelopeVisitor { fault: &fault }).and_then(|raw| de.end().map(|()| raw));
    raw.map_err(|json| ParseFailure { json, fault: fault.0.take() })
}

/// What decoding produced, with the body already decoded (owned, independent of the input).
struct Decoded {
    header: Vec<(String, String)>,
    body: Result<Vec<u8>, CodecError>,
}

fn finish(raw: RawEnvelope<'_>) -> Decoded {
    let body = match raw.body {
        Some(s) if !s.is_empty() => decode_base64(&s),
        _ => Ok(Vec::new()),
    };
    Decoded { header: raw.header, body }
}

/// On failure, report what Go would: a syntax error of the document first, and invalid UTF-8
/// replaced by U+FFFD (Go's behaviour) rather than refused.
fn parse_slow(data: &[u8], first: ParseFailure) -> Result<Decoded, CodecError> {
    if std::str::from_utf8(data).is_err() {
        let lossy = go_lossy(data);
        return match parse(lossy.as_bytes()) {
            Ok(raw) => Ok(finish(raw)),
            Err(e) => Err(parse_slow(lossy.as_bytes(), e).err().unwrap_or_else(|| CodecError::InvalidJson(first.json.to_string()))),
        };
    }
    let mut first = first;
    if let Some(fixed) = replace_lone_surrogates(data) {
        match parse(&fixed) {
            Ok(raw) => return Ok(finish(raw)),
            // the first parse stopped at the surrogate: the rewritten document's reason is the real one
            Err(e) => first = e,
        }
    }
    if let Err(syntax) = serde_json::from_slice::<IgnoredAny>(data) {
        return Err(CodecError::InvalidJson(syntax.to_string()));
    }
    Err(first.into_codec_error())
}

/// Go's reading of invalid UTF-8: each byte that is not part of a valid sequence becomes one
/// U+FFFD (`String::from_utf8_lossy` writes one per maximal invalid sequence instead).
fn go_lossy(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() + 8);
    for chunk in data.utf8_chunks() {
        out.push_str(chunk.valid());
        out.extend(std::iter::repeat_n('\u{FFFD}', chunk.invalid().len()));
    }
    out
}

fn hex4(b: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u16::from_str_radix(s, 16).ok()
}

/// Go turns an unpaired UTF-16 surrogate escape (`\ud800`) into U+FFFD; serde_json refuses it.
/// Rewrite such escapes to `\ufffd`; None when there is none.
fn replace_lone_surrogates(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut changed = false;
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\\' && i + 1 < data.len() {
            if data[i + 1] == b'u' {
                if let Some(cp) = hex4(&data[i + 2..]) {
                    let is_high = (0xD800..0xDC00).contains(&cp);
                    let is_low = (0xDC00..0xE000).contains(&cp);
                    let paired_low = is_high
                        && data.get(i + 6) == Some(&b'\\')
                        && data.get(i + 7) == Some(&b'u')
                        && hex4(data.get(i + 8..).unwrap_or(&[])).is_some_and(|c| (0xDC00..0xE000).contains(&c));
                    if paired_low {
                        out.extend_from_slice(&data[i..i + 12]);
                        i += 12;
                        continue;
                    }
                    if is_high || is_low {
                        out.extend_from_slice(b"\\ufffd");
                        changed = true;
                        i += 6;
                        continue;
                    }
                }
            }
            out.extend_from_slice(&data[i..i + 2]);
            i += 2;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// Decode one envelope. The returned header no longer contains `:topic`.
pub fn decode(data: &[u8]) -> Result<Envelope, CodecError> {
    decode_with(data, false)
}

/// Decode an envelope delivered to this broker: as [`decode`], and a `Micro-Topic` that only
/// repeats `:topic` (what [`encode_message_into`] writes) is not a user header either.
pub fn decode_message(data: &[u8]) -> Result<Envelope, CodecError> {
    decode_with(data, true)
}

fn decode_with(data: &[u8], drop_echo: bool) -> Result<Envelope, CodecError> {
    let decoded = match parse(data) {
        Ok(raw) => finish(raw),
        Err(e) => parse_slow(data, e)?,
    };
    let Decoded { mut header, body } = decoded;
    let topic = match header.iter().position(|(k, _)| k == TOPIC_HEADER) {
        Some(i) => header.remove(i).1,
        None => String::new(),
    };
    let topic = if topic.is_empty() {
        header.iter().find(|(k, _)| k == MICRO_TOPIC_HEADER).map(|(_, v)| v.clone()).unwrap_or_default()
    } else {
        if drop_echo {
            header.retain(|(k, v)| !(k == MICRO_TOPIC_HEADER && *v == topic));
        }
        topic
    };
    if topic.is_empty() {
        return Err(CodecError::NoTopic);
    }
    Ok(Envelope::new(topic, header, bytes::Bytes::from(body?)))
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
