//! Unit tests of `codec.rs`: round trips, Go's own encoding as vectors, field-name case and
//! unknown fields as Go decodes them, typed errors and their messages, invalid UTF-8 and lone
//! surrogates, random bytes (never a panic), large binary bodies.

use super::*;

fn hdr(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn round_trip_simple() {
    let h = [("id", "1"), ("Content-Type", "text/plain")];
    let enc = encode("greetings", h.iter().copied(), b"hi");
    assert_eq!(
        std::str::from_utf8(&enc).unwrap(),
        r#"{"Header":{":topic":"greetings","id":"1","Content-Type":"text/plain"},"Body":"aGk="}"#
    );
    let env = decode(&enc).unwrap();
    assert_eq!(env.topic, "greetings");
    assert_eq!(env.header, hdr(&h));
    assert_eq!(&env.body[..], b"hi");
}

#[test]
fn go_encoding_json_vector() {
    // What Go's encoding/json produces for broker.Message (map keys sorted, <>& escaped).
    let go = br#"{"Header":{":topic":"go.micro.topic","a\u003cb":"x\u0026y"},"Body":"SGVsbG8sIEdvIQ=="}"#;
    let env = decode(go).unwrap();
    assert_eq!(env.topic, "go.micro.topic");
    assert_eq!(env.header, hdr(&[("a<b", "x&y")]));
    assert_eq!(&env.body[..], b"Hello, Go!");
}

#[test]
fn case_insensitive_fields_and_unknown_ignored() {
    let env = decode(br#"{"header":{":topic":"t"},"BODY":"AAE=","extra":[1,{"a":2}]}"#).unwrap();
    assert_eq!(env.topic, "t");
    assert_eq!(env.body, vec![0, 1]);
}

#[test]
fn null_or_missing_body_is_empty() {
    assert!(decode(br#"{"Header":{":topic":"t"},"Body":null}"#).unwrap().body.is_empty());
    assert!(decode(br#"{"Header":{":topic":"t"}}"#).unwrap().body.is_empty());
}

#[test]
fn message_encoding_carries_both_topic_keys() {
    let mut out = Vec::new();
    encode_message_into(&mut out, "t", [("Micro-Topic", "x"), (":topic", "y"), ("k", "v")].into_iter(), b"a");
    assert_eq!(out, br#"{"Header":{":topic":"t","Micro-Topic":"t","k":"v"},"Body":"YQ=="}"#);
    // what the endpoint hands on: no echo of the topic
    let env = decode_message(&out).unwrap();
    assert_eq!((env.topic.as_str(), env.header), ("t", hdr(&[("k", "v")])));
    // plain decode keeps what Go's json.Unmarshal keeps
    assert_eq!(decode(&out).unwrap().header, hdr(&[("Micro-Topic", "t"), ("k", "v")]));
    // a Micro-Topic that differs from :topic, or stands alone, stays a header
    let env = decode_message(br#"{"Header":{":topic":"a","Micro-Topic":"b"}}"#).unwrap();
    assert_eq!((env.topic.as_str(), env.header), ("a", hdr(&[("Micro-Topic", "b")])));
    let env = decode_message(br#"{"Header":{"Micro-Topic":"new"}}"#).unwrap();
    assert_eq!((env.topic.as_str(), env.header), ("new", hdr(&[("Micro-Topic", "new")])));
    // v1 encoding is unchanged
    let mut v1 = Vec::new();
    encode_into(&mut v1, "t", [("Micro-Topic", "x")].into_iter(), b"");
    assert_eq!(v1, br#"{"Header":{":topic":"t","Micro-Topic":"x"},"Body":""}"#);
}

#[test]
fn micro_topic_header() {
    let env = decode(br#"{"Header":{"Micro-Topic":"new"},"Body":""}"#).unwrap();
    assert_eq!(env.topic, "new");
    assert_eq!(env.header, hdr(&[("Micro-Topic", "new")]));
}

#[test]
fn errors_are_classified() {
    assert!(matches!(decode(b"{"), Err(CodecError::InvalidJson(_))));
    assert!(matches!(decode(b"[1]"), Err(CodecError::InvalidJson(_))));
    assert!(matches!(decode(b"{} x"), Err(CodecError::InvalidJson(_))));
    assert!(matches!(decode(br#"{"Header":{":topic":1}}"#), Err(CodecError::BadHeader(_))));
    assert!(matches!(decode(br#"{"Header":[1]}"#), Err(CodecError::BadHeader(_))));
    assert!(matches!(decode(br#"{"Header":{":topic":"t"},"Body":"!!"}"#), Err(CodecError::BadBody(_))));
    assert!(matches!(decode(br#"{"Header":{":topic":"t"},"Body":5}"#), Err(CodecError::BadBody(_))));
    assert_eq!(decode(br#"{"Header":{},"Body":""}"#), Err(CodecError::NoTopic));
    assert_eq!(decode(br#"{"Header":{":topic":""}}"#), Err(CodecError::NoTopic));
}

#[test]
fn errors_are_typed() {
    use BodyFault::*;
    use CodecError::*;
    use HeaderFault::*;
    let key = |k: &str| Err(BadHeader(ValueNotString { key: k.to_string() }));
    assert_eq!(decode(br#"{"Header":{":topic":"t","n":3}}"#), key("n"));
    assert_eq!(decode(br#"{"Header":{":topic":1}}"#), key(":topic"));
    assert_eq!(decode(br#"{"Header":{":topic":"t","o":{"a":"b"}}}"#), key("o"));
    assert_eq!(decode(br#"{"Header":[1]}"#), Err(BadHeader(NotAnObject)));
    assert_eq!(decode(br#"{"header":true,"Body":""}"#), Err(BadHeader(NotAnObject)));
    assert_eq!(decode(br#"{"Header":{":topic":"t"},"Body":5}"#), Err(BadBody(NotAString)));
    assert_eq!(decode(br#"{"Header":{":topic":"t"},"body":{"a":1}}"#), Err(BadBody(NotAString)));
    assert!(matches!(decode(br#"{"Header":{":topic":"t"},"Body":"!!"}"#), Err(BadBody(NotBase64(_)))));
    // the second Header field is the bad one: its key is named
    assert_eq!(decode(br#"{"Header":{":topic":"t"},"HEADER":{"x":false}}"#), key("x"));
    // a syntax error wins over the fault the visitor met first (Go validates the document first)
    assert!(matches!(decode(br#"{"Header":{":topic":1"#), Err(InvalidJson(_))));
    assert!(matches!(decode(br#"{"Header":{":topic":"t"},"Body":5} x"#), Err(InvalidJson(_))));
    // the typed reason survives the slow paths: invalid UTF-8 and lone surrogates elsewhere
    assert_eq!(decode(b"{\"Header\":{\":topic\":\"t\xff\",\"n\":3}}"), key("n"));
    assert_eq!(decode(br#"{"Header":{":topic":"t","a":"\ud800","n":3}}"#), key("n"));
    assert_eq!(decode(br#"{"Header":{":topic":"t","a":"\ud800"},"Body":[1]}"#), Err(BadBody(NotAString)));
}

#[test]
fn typed_errors_keep_their_messages() {
    let m = |d: &[u8]| decode(d).unwrap_err().to_string();
    assert_eq!(m(br#"{"Header":{":topic":"t","n":3}}"#), r#"invalid envelope Header: value of header "n" is not a string"#);
    assert_eq!(m(br#"{"Header":"s"}"#), "invalid envelope Header: Header is not an object of strings");
    assert_eq!(m(br#"{"Header":{":topic":"t"},"Body":5}"#), "invalid envelope Body: Body is not a base64 string");
    assert!(m(br#"{"Header":{":topic":"t"},"Body":"Q"}"#).starts_with("invalid envelope Body: Body is not valid standard base64: "));
    assert!(m(b"{").starts_with("invalid JSON envelope: "));
    assert!(m(b"{}").starts_with("envelope has no topic: "));
}

#[test]
fn header_error_names_the_key() {
    let e = decode(br#"{"Header":{":topic":"t","n":3}}"#).unwrap_err();
    assert!(e.to_string().contains("\"n\""), "{e}");
}

#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for len in 0..2000usize {
        let mut buf = Vec::with_capacity(len % 97);
        for _ in 0..(len % 97) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push((x & 0xff) as u8);
        }
        let _ = decode(&buf);
    }
}

#[test]
fn lone_surrogates_become_replacement_char() {
    let env = decode(br#"{"Header":{":topic":"t","a":"x\ud800y","b":"\ud83d\ude00","c":"\\ud800"}}"#).unwrap();
    assert_eq!(env.header[0].1, "x\u{fffd}y");
    assert_eq!(env.header[1].1, "\u{1F600}");
    assert_eq!(env.header[2].1, "\\ud800");
}

#[test]
fn invalid_utf8_is_one_replacement_char_per_byte() {
    // as Go: "\xe6\x97" (a cut 3-byte sequence) is two U+FFFD, not one
    let env = decode(b"{\"Header\":{\":topic\":\"t\",\"x\":\"a\xe6\x97b\xff\"}}").unwrap();
    assert_eq!(env.header[0].1, "a\u{fffd}\u{fffd}b\u{fffd}");
}

#[test]
fn null_header_drops_earlier_entries() {
    // as Go: a repeated Header merges into the map, a null one sets it to nil
    let env = decode(br#"{"Header":{":topic":"t","a":"1"},"Header":null,"header":{":topic":"u"}}"#).unwrap();
    assert_eq!((env.topic.as_str(), env.header), ("u", vec![]));
    assert_eq!(decode(br#"{"Header":{":topic":"t"},"Header":null}"#), Err(CodecError::NoTopic));
}

#[test]
fn large_binary_body() {
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let enc = encode("big", std::iter::empty(), &body);
    assert_eq!(decode(&enc).unwrap().body, body);
}
