"""Tests of the go-micro envelope codec: ``hyperbroker.encode`` / ``hyperbroker.decode``.

The test vectors are what Go's ``encoding/json`` emits for go-micro's ``broker.Message``
(``Header map[string]string``, ``Body []byte``): map keys sorted byte-wise, ``<``, ``>``, ``&``,
U+2028 and U+2029 escaped as ``\\u003c``-style escapes, other non-ASCII emitted as raw UTF-8,
``[]byte`` as standard base64 with padding, a nil slice as ``null``. ``go_marshal`` below is a
faithful Python re-implementation of that encoder; ``test_go_vector_matches_go_marshal`` checks
that every hand-written Go vector is byte-for-byte what it produces.
"""

from __future__ import annotations

import base64
import json
import random

import pytest
from gojson import go_quote
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyperbroker
from hyperbroker import BrokerError, CodecError, decode, encode

# --- a Python model of Go's encoding/json for broker.Message -----------------------------------

def go_marshal(header: dict[str, str] | None, body: bytes | None) -> bytes:
    """``json.Marshal(broker.Message{Header: header, Body: body})``; None is Go's nil."""
    if header is None:
        h = "null"
    else:
        keys = sorted(header, key=lambda k: k.encode("utf-8"))
        h = "{" + ",".join(go_quote(k) + ":" + go_quote(header[k]) for k in keys) + "}"
    b = "null" if body is None else '"' + base64.b64encode(body).decode("ascii") + '"'
    return ('{"Header":' + h + ',"Body":' + b + "}").encode("utf-8")


def without_topic(header: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in header.items() if k != ":topic"}


# --- test vectors -----------------------------------------------------------------------------
#
# Each vector: (wire bytes, expected decode() result, go_src). go_src is the (Header, Body) of the
# broker.Message Go marshalled to produce the wire bytes, or None when the wire form comes from
# some other encoder (lower-case field names, MarshalIndent, escapes Go never writes, ...).

_ALL_BYTES = bytes(range(256))
_RNG = random.Random(0x60_4D_1C_20)
_BIG_RANDOM = _RNG.randbytes((1 << 20) + 1)  # 1 MiB + 1: base64 needs padding
_BIG_PATTERN = bytes(i % 251 for i in range(3 * (1 << 20) + 2))  # 3 MiB + 2
_MANY_HEADERS = {f"X-Header-{i:04d}": f"value {i} \u00e9\u00e8 <{i}>" for i in range(1000)}

_JA_HEADER = {
    ":topic": "ニュース.速報",
    "Content-Type": "text/plain; charset=utf-8",
    "件名": "こんにちは世界",
    "言語": "日本語",
}
_EMOJI_HEADER = {
    ":topic": "events.🚀",
    "emoji": "😀🎉",
    "mixed": "naïve café – Ωmega",
    "🔑": "👍🏽",
}
_QUOTES_HEADER = {
    ":topic": "quotes",
    "path": "C:\\Windows\\System32",
    'quote"key': 'say "hi"',
    "trail\\": "\\",
}
_CONTROL_HEADER = {
    ":topic": "ctl",
    "ctl": "\x00\x01\x07\b\t\n\x0b\f\r\x1b\x1f\x7f",
    "tab\tkey": "x",
}

VECTORS = [
    pytest.param(
        b'{"Header":{":topic":"go.micro.topic"},"Body":"SGVsbG8sIEdvIQ=="}',
        ("go.micro.topic", {}, b"Hello, Go!"),
        ({":topic": "go.micro.topic"}, b"Hello, Go!"),
        id="simple",
    ),
    pytest.param(
        b'{"Header":{":topic":"go.micro.srv.greeter","Content-Type":"application/json",'
        b'"Micro-From-Service":"go.micro.api","Micro-Id":"5a0f3b9e-3b1c-4b3e-9f7a-2f1c9f6d8e21"},'
        b'"Body":"eyJuYW1lIjoiSm9obiJ9"}',
        (
            "go.micro.srv.greeter",
            {
                "Content-Type": "application/json",
                "Micro-From-Service": "go.micro.api",
                "Micro-Id": "5a0f3b9e-3b1c-4b3e-9f7a-2f1c9f6d8e21",
            },
            b'{"name":"John"}',
        ),
        (
            {
                ":topic": "go.micro.srv.greeter",
                "Content-Type": "application/json",
                "Micro-From-Service": "go.micro.api",
                "Micro-Id": "5a0f3b9e-3b1c-4b3e-9f7a-2f1c9f6d8e21",
            },
            b'{"name":"John"}',
        ),
        id="go-micro-typical-headers",
    ),
    pytest.param(
        rb'{"Header":{":topic":"html","a\u003cb\u003e":"x \u0026 y",'
        rb'"q":"\u003cscript\u003ealert(1)\u003c/script\u003e"},"Body":"PGgxPkhpPC9oMT4="}',
        ("html", {"a<b>": "x & y", "q": "<script>alert(1)</script>"}, b"<h1>Hi</h1>"),
        (
            {":topic": "html", "a<b>": "x & y", "q": "<script>alert(1)</script>"},
            b"<h1>Hi</h1>",
        ),
        id="html-escapes",
    ),
    pytest.param(
        b'{"Header":{"!bang":"1","-dash":"2","0zero":"3",":topic":"sorted","A":"4","_u":"5",'
        b'"a":"6","~":"7"},"Body":""}',
        ("sorted", {"!bang": "1", "-dash": "2", "0zero": "3", "A": "4", "_u": "5", "a": "6", "~": "7"}, b""),
        (
            {"!bang": "1", "-dash": "2", "0zero": "3", ":topic": "sorted", "A": "4", "_u": "5", "a": "6", "~": "7"},
            b"",
        ),
        id="topic-not-first-key",
    ),
    pytest.param(
        '{"Header":{":topic":"ニュース.速報","Content-Type":"text/plain; charset=utf-8",'
        '"件名":"こんにちは世界","言語":"日本語"},"Body":"5pel5pys6Kqe44Gu44Oh44OD44K744O844K4"}'.encode(),
        ("ニュース.速報", without_topic(_JA_HEADER), "日本語のメッセージ".encode()),
        (_JA_HEADER, "日本語のメッセージ".encode()),
        id="japanese",
    ),
    pytest.param(
        '{"Header":{":topic":"events.🚀","emoji":"😀🎉","mixed":"naïve café – Ωmega","🔑":"👍🏽"},'
        '"Body":"8J+OiQ=="}'.encode(),
        ("events.🚀", without_topic(_EMOJI_HEADER), "🎉".encode()),
        (_EMOJI_HEADER, "🎉".encode()),
        id="emoji",
    ),
    pytest.param(
        b'{"Header":{":topic":"empty"},"Body":""}',
        ("empty", {}, b""),
        ({":topic": "empty"}, b""),
        id="empty-body",
    ),
    pytest.param(
        b'{"Header":{":topic":"nil"},"Body":null}',
        ("nil", {}, b""),
        ({":topic": "nil"}, None),
        id="body-null",
    ),
    pytest.param(
        b'{"Header":{":topic":"nobody"}}',
        ("nobody", {}, b""),
        None,
        id="body-missing",
    ),
    pytest.param(
        go_marshal({":topic": "binary"}, _ALL_BYTES),
        ("binary", {}, _ALL_BYTES),
        ({":topic": "binary"}, _ALL_BYTES),
        id="binary-all-256-bytes",
    ),
    pytest.param(
        go_marshal({":topic": "big", "Content-Type": "application/octet-stream"}, _BIG_RANDOM),
        ("big", {"Content-Type": "application/octet-stream"}, _BIG_RANDOM),
        ({":topic": "big", "Content-Type": "application/octet-stream"}, _BIG_RANDOM),
        id="large-1MiB-random",
    ),
    pytest.param(
        go_marshal({":topic": "bigger"}, _BIG_PATTERN),
        ("bigger", {}, _BIG_PATTERN),
        ({":topic": "bigger"}, _BIG_PATTERN),
        id="large-3MiB-pattern",
    ),
    pytest.param(
        go_marshal({":topic": "many", **_MANY_HEADERS}, b"m"),
        ("many", _MANY_HEADERS, b"m"),
        ({":topic": "many", **_MANY_HEADERS}, b"m"),
        id="many-headers",
    ),
    pytest.param(
        rb'{"Header":{":topic":"quotes","path":"C:\\Windows\\System32","quote\"key":"say \"hi\"",'
        rb'"trail\\":"\\"},"Body":"AA=="}',
        ("quotes", without_topic(_QUOTES_HEADER), b"\x00"),
        (_QUOTES_HEADER, b"\x00"),
        id="quotes-and-backslashes",
    ),
    pytest.param(
        b'{"Header":{":topic":"ctl","ctl":"\\u0000\\u0001\\u0007\\b\\t\\n\\u000b\\f\\r\\u001b\\u001f\x7f",'
        b'"tab\\tkey":"x"},"Body":""}',
        ("ctl", without_topic(_CONTROL_HEADER), b""),
        (_CONTROL_HEADER, b""),
        id="control-chars",
    ),
    pytest.param(
        # Go before 1.22 wrote \b and \f as \u0008 and \u000c.
        b'{"Header":{":topic":"ctl","ctl":"\\u0000\\u0001\\u0007\\u0008\\t\\n\\u000b\\u000c\\r\\u001b\\u001f\x7f",'
        b'"tab\\tkey":"x"},"Body":""}',
        ("ctl", without_topic(_CONTROL_HEADER), b""),
        None,
        id="control-chars-go1.21",
    ),
    pytest.param(
        rb'{"Header":{":topic":"seps","ls":"a\u2028b\u2029c"},"Body":"YQ=="}',
        ("seps", {"ls": "a\u2028b\u2029c"}, b"a"),
        ({":topic": "seps", "ls": "a\u2028b\u2029c"}, b"a"),
        id="line-separators",
    ),
    pytest.param(
        b'{"header":{":topic":"lower","x":"y"},"body":"AAEC"}',
        ("lower", {"x": "y"}, b"\x00\x01\x02"),
        None,
        id="lower-case-field-names",
    ),
    pytest.param(
        b'{"HEADER":{":topic":"UPPER","X":"y"},"BODY":"/w=="}',
        ("UPPER", {"X": "y"}, b"\xff"),
        None,
        id="upper-case-field-names",
    ),
    pytest.param(
        b'{"bOdY":"+/8=","hEaDeR":{":topic":"mixed"}}',
        ("mixed", {}, b"\xfb\xff"),
        None,
        id="mixed-case-fields-body-first",
    ),
    pytest.param(
        b'{"Header":{"Content-Type":"application/json","Micro-Topic":"go.micro.new"},"Body":"e30="}',
        ("go.micro.new", {"Content-Type": "application/json", "Micro-Topic": "go.micro.new"}, b"{}"),
        ({"Content-Type": "application/json", "Micro-Topic": "go.micro.new"}, b"{}"),
        id="micro-topic",
    ),
    pytest.param(
        b'{"Header":{":topic":"old","Micro-Topic":"new"},"Body":""}',
        ("old", {"Micro-Topic": "new"}, b""),
        ({":topic": "old", "Micro-Topic": "new"}, b""),
        id="topic-wins-over-micro-topic",
    ),
    pytest.param(
        b'{"Header":{":topic":"","Micro-Topic":"fallback"},"Body":null}',
        ("fallback", {"Micro-Topic": "fallback"}, b""),
        ({":topic": "", "Micro-Topic": "fallback"}, None),
        id="empty-topic-falls-back-to-micro-topic",
    ),
    pytest.param(
        b'{"Id":"42","Header":{":topic":"unk"},"Extra":{"nested":[1,2.5e3,{"a":null}],"b":true},'
        b'"Body":"aGk=","Timestamp":"2024-01-01T00:00:00Z","Zeros":null,"Headers":{"no":1}}',
        ("unk", {}, b"hi"),
        None,
        id="unknown-fields-ignored",
    ),
    pytest.param(
        b'{\n  "Header": {\n    ":topic": "pretty",\n    "id": "1"\n  },\n  "Body": "aGk="\n}',
        ("pretty", {"id": "1"}, b"hi"),
        None,
        id="marshal-indent",
    ),
    pytest.param(
        b' \t\r\n{ "Header" : { ":topic" : "ws" } , "Body" : "aGk=" } \n',
        ("ws", {}, b"hi"),
        None,
        id="surrounding-whitespace",
    ),
    pytest.param(
        b'{"Header":{":topic":"t","gone":null,"empty":""},"Body":""}',
        ("t", {"gone": "", "empty": ""}, b""),
        None,
        id="null-and-empty-header-values",
    ),
    pytest.param(
        rb'{"Header":{":topic":"\u65e5\u672c","k\u00e9y":"\ud83d\ude00 \u0041\/"},"Body":""}',
        ("日本", {"kéy": "😀 A/"}, b""),
        None,
        id="unicode-escapes-from-other-encoders",
    ),
    pytest.param(
        rb'{"Header":{":topic":"wrapped"},"Body":"QUJD\r\nREVG\n"}',
        ("wrapped", {}, b"ABCDEF"),
        None,
        id="base64-with-crlf",
    ),
    pytest.param(
        b'{"Header":{":topic":"pad"},"Body":"YWI="}',
        ("pad", {}, b"ab"),
        ({":topic": "pad"}, b"ab"),
        id="base64-one-pad",
    ),
    pytest.param(
        b'{"Header":{":topic":"nopad"},"Body":"YWJj"}',
        ("nopad", {}, b"abc"),
        ({":topic": "nopad"}, b"abc"),
        id="base64-no-pad",
    ),
    pytest.param(
        b'{"Header":{":topic":"dup","k":"first","k":"second"},"Body":""}',
        ("dup", {"k": "second"}, b""),
        None,
        id="duplicate-header-key-last-wins",
    ),
    pytest.param(
        b'{"Header":{":topic":"a"},"Body":"YQ==","Body":null}',
        ("a", {}, b""),
        None,
        id="duplicate-body-last-wins",
    ),
]


@pytest.mark.parametrize(("wire", "expected", "go_src"), VECTORS)
def test_decode_vector(wire: bytes, expected: tuple[str, dict[str, str], bytes], go_src: object) -> None:
    got = decode(wire)
    assert type(got) is tuple and len(got) == 3
    topic, header, body = got
    assert type(topic) is str and type(header) is dict and type(body) is bytes
    assert got == expected


GO_VECTORS = [p for p in VECTORS if p.values[2] is not None]


@pytest.mark.parametrize(("wire", "expected", "go_src"), GO_VECTORS)
def test_go_vector_matches_go_marshal(
    wire: bytes, expected: tuple[str, dict[str, str], bytes], go_src: tuple[dict[str, str], bytes | None]
) -> None:
    """The Go-emitted vectors are byte-for-byte what Go's encoding/json writes for the message."""
    assert go_marshal(*go_src) == wire


@pytest.mark.parametrize(("wire", "expected", "go_src"), VECTORS)
def test_encode_of_vector_round_trips(wire: bytes, expected: tuple[str, dict[str, str], bytes], go_src: object) -> None:
    topic, header, body = expected
    enc = encode(topic, header, body)
    assert type(enc) is bytes
    assert decode(enc) == expected
    assert json.loads(enc) == {
        "Header": {":topic": topic, **header},
        "Body": base64.b64encode(body).decode("ascii"),
    }


# --- encode -----------------------------------------------------------------------------------


def test_encode_exact_bytes() -> None:
    assert encode("greetings", {"id": "1"}, b"hi") == b'{"Header":{":topic":"greetings","id":"1"},"Body":"aGk="}'


def test_encode_none_header_and_empty_body() -> None:
    enc = encode("t", None, b"")
    assert json.loads(enc) == {"Header": {":topic": "t"}, "Body": ""}
    assert decode(enc) == ("t", {}, b"")


def test_encode_ignores_topic_key_in_header() -> None:
    enc = encode("real", {":topic": "fake", "a": "b"}, b"x")
    assert json.loads(enc) == {"Header": {":topic": "real", "a": "b"}, "Body": "eA=="}
    assert decode(enc) == ("real", {"a": "b"}, b"x")


def test_encode_header_is_not_mutated() -> None:
    h = {":topic": "fake", "a": "b"}
    encode("real", h, b"")
    assert h == {":topic": "fake", "a": "b"}


def test_encode_special_characters_is_valid_json() -> None:
    header = {"a<b>&": "\"\\\x00\x1f\u2028\u2029/ ü 😀", "\x7f": ""}
    enc = encode("t<&>", header, _ALL_BYTES)
    assert json.loads(enc) == {
        "Header": {":topic": "t<&>", **header},
        "Body": base64.b64encode(_ALL_BYTES).decode("ascii"),
    }
    assert decode(enc) == ("t<&>", header, _ALL_BYTES)


def test_encode_large_body() -> None:
    enc = encode("big", {"k": "v"}, _BIG_RANDOM)
    assert json.loads(enc)["Body"] == base64.b64encode(_BIG_RANDOM).decode("ascii")
    assert decode(enc) == ("big", {"k": "v"}, _BIG_RANDOM)


def test_encode_accepts_str_subclasses() -> None:
    class S(str):
        pass

    assert decode(encode("t", {S("k"): S("v")}, b"")) == ("t", {"k": "v"}, b"")


@pytest.mark.parametrize(
    ("topic", "header", "match"),
    [
        pytest.param("", None, "topic must not be empty", id="empty-topic"),
        pytest.param("", {":topic": "x"}, "topic must not be empty", id="empty-topic-with-topic-header"),
        pytest.param("t", {1: "x"}, "header keys must be str, got int", id="int-key"),
        pytest.param("t", {b"k": "x"}, "header keys must be str, got bytes", id="bytes-key"),
        pytest.param("t", {None: "x"}, "header keys must be str, got NoneType", id="none-key"),
        pytest.param("t", {"k": 1}, 'header value of "k" must be str, got int', id="int-value"),
        pytest.param("t", {"k": None}, 'header value of "k" must be str, got NoneType', id="none-value"),
        pytest.param("t", {"ok": "v", "k": b"v"}, 'header value of "k" must be str, got bytes', id="bytes-value"),
    ],
)
def test_encode_errors(topic: str, header: dict[object, object] | None, match: str) -> None:
    with pytest.raises(CodecError, match=match) as ei:
        encode(topic, header, b"body")  # type: ignore[arg-type]
    assert isinstance(ei.value, BrokerError)


# --- decode errors ----------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(CodecError, BrokerError)
    assert issubclass(BrokerError, Exception)
    assert hyperbroker.CodecError is CodecError
    assert hyperbroker.errors.CodecError is CodecError


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty-input"),
        pytest.param(b"{", id="unterminated-object"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1]", id="top-level-array"),
        pytest.param(b'"str"', id="top-level-string"),
        pytest.param(b"42", id="top-level-number"),
        pytest.param(b"{} x", id="trailing-garbage"),
        pytest.param(b'{"Header":{":topic":"t"}}{}', id="two-documents"),
        pytest.param(b'{"Header":{":topic":"t"},}', id="trailing-comma"),
        pytest.param(b"{'Header':{}}", id="single-quotes"),
        pytest.param(b'\xef\xbb\xbf{"Header":{":topic":"t"}}', id="utf8-bom"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":"QQ=="', id="truncated-after-body"),
        pytest.param(b'{"Header":{":topic":"t"},"X":[1,}', id="broken-unknown-field"),
        # Syntax errors inside the Header or Body value are still syntax errors: Go's
        # encoding/json validates the whole document before decoding anything.
        pytest.param(b'{"Header":{":topic":"t"', id="truncated-inside-header"),
        pytest.param(b'{"Header":{":topic":"t', id="truncated-inside-header-value"),
        pytest.param(b'{"Header":{":topic" "t"}}', id="missing-colon-in-header"),
        pytest.param(b'{"Header":{":topic":"t",}}', id="trailing-comma-in-header"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":"QQ', id="truncated-inside-body"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":"QQ==}', id="unterminated-body-string"),
    ],
)
def test_decode_invalid_json(data: bytes) -> None:
    with pytest.raises(CodecError, match=r"^invalid JSON envelope: ") as ei:
        decode(data)
    assert isinstance(ei.value, BrokerError)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b'{"Header":{":topic":1}}', r'value of header ":topic" is not a string', id="topic-number"),
        pytest.param(b'{"Header":{":topic":"t","n":3}}', r'value of header "n" is not a string', id="value-number"),
        pytest.param(
            b'{"Header":{":topic":"t","obj":{"a":"b"}}}', r'value of header "obj" is not a string', id="value-object"
        ),
        pytest.param(b'{"Header":{":topic":"t","arr":["x"]}}', r'value of header "arr" is not a string', id="value-array"),
        pytest.param(b'{"Header":{":topic":"t","b":true}}', r'value of header "b" is not a string', id="value-bool"),
        pytest.param(
            '{"Header":{":topic":"t","件名":1}}'.encode(), r'value of header "件名" is not a string', id="value-non-ascii-key"
        ),
        pytest.param(b'{"Header":[1]}', r"Header is not an object of strings", id="header-array"),
        pytest.param(b'{"Header":"s"}', r"Header is not an object of strings", id="header-string"),
        pytest.param(b'{"Header":5}', r"Header is not an object of strings", id="header-number"),
        pytest.param(b'{"header":true,"Body":""}', r"Header is not an object of strings", id="header-bool-lower-case"),
    ],
)
def test_decode_bad_header(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=r"^invalid envelope Header: ") as ei:
        decode(data)
    assert isinstance(ei.value, BrokerError)
    assert ei.match(match)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b'{"Header":{":topic":"t"},"Body":"!!"}', r"not valid standard base64", id="bad-symbols"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":"QQ"}', r"not valid standard base64", id="missing-padding"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":"Q"}', r"not valid standard base64", id="one-char"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":"Q Q=="}', r"not valid standard base64", id="space-inside"),
        pytest.param(
            b'{"Header":{":topic":"t"},"Body":"-_8="}', r"not valid standard base64", id="url-safe-alphabet"
        ),
        pytest.param(
            b'{"Header":{":topic":"t"},"Body":"QQ==QQ=="}', r"not valid standard base64", id="padding-in-middle"
        ),
        pytest.param(b'{"Header":{":topic":"t"},"Body":5}', r"Body is not a base64 string", id="number"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":[1,2]}', r"Body is not a base64 string", id="array"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":true}', r"Body is not a base64 string", id="bool"),
        pytest.param(b'{"Header":{":topic":"t"},"body":{"a":1}}', r"Body is not a base64 string", id="object-lower-case"),
    ],
)
def test_decode_bad_body(data: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=r"^invalid envelope Body: ") as ei:
        decode(data)
    assert isinstance(ei.value, BrokerError)
    assert ei.match(match)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"Header":{},"Body":""}', id="empty-header"),
        pytest.param(b'{"Header":null,"Body":"aGk="}', id="null-header"),
        pytest.param(b'{"Body":"aGk="}', id="missing-header"),
        pytest.param(b'{"Header":{":topic":""}}', id="empty-topic"),
        pytest.param(b'{"Header":{":topic":null}}', id="null-topic"),
        pytest.param(b'{"Header":{"Micro-Topic":""}}', id="empty-micro-topic"),
        pytest.param(b'{"Header":{":topic":"","Micro-Topic":""}}', id="both-empty"),
        pytest.param(b'{"Header":{"topic":"t","micro-topic":"t",":Topic":"t"}}', id="near-miss-keys"),
    ],
)
def test_decode_no_topic(data: bytes) -> None:
    with pytest.raises(CodecError, match=r"^envelope has no topic: ") as ei:
        decode(data)
    assert isinstance(ei.value, BrokerError)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        decode("{}")  # type: ignore[arg-type]


# --- Go encoding/json compatibility edge cases ------------------------------------------------
# Inputs Go's json.Unmarshal into broker.Message accepts, with the result Go produces.


def test_go_accepts_nonzero_base64_trailing_bits() -> None:
    # encoding/json decodes []byte with base64.StdEncoding, which is not Strict(): non-zero
    # padding bits are ignored, so "QR==" is b"A".
    assert decode(b'{"Header":{":topic":"t"},"Body":"QR=="}') == ("t", {}, b"A")


def test_go_merges_repeated_header_fields() -> None:
    # "Header" and "header" name the same field; decoding a JSON object into an already
    # allocated map keeps the existing entries.
    assert decode(b'{"Header":{":topic":"t","a":"1"},"header":{"b":"2"}}') == ("t", {"a": "1", "b": "2"}, b"")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"Header":{":topic":"t","x":"a\xffb"}}', id="invalid-utf8"),
        pytest.param(b'{"Header":{":topic":"t","x":"a\\ud800b"}}', id="lone-surrogate-escape"),
    ],
)
def test_go_replaces_invalid_utf8_with_replacement_char(data: bytes) -> None:
    assert decode(data) == ("t", {"x": "a\ufffdb"}, b"")


# --- property-based tests ---------------------------------------------------------------------

_FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(topic=st.text(min_size=1), header=st.dictionaries(st.text(), st.text()), body=st.binary())
def test_round_trip(topic: str, header: dict[str, str], body: bytes) -> None:
    enc = encode(topic, header, body)
    assert decode(enc) == (topic, without_topic(header), body)
    assert json.loads(enc) == {
        "Header": {":topic": topic, **without_topic(header)},
        "Body": base64.b64encode(body).decode("ascii"),
    }


@_FAST
@given(topic=st.text(min_size=1), header=st.dictionaries(st.text(), st.text()), body=st.binary() | st.none())
def test_decodes_go_marshal(topic: str, header: dict[str, str], body: bytes | None) -> None:
    wire = go_marshal({**header, ":topic": topic}, body)
    assert decode(wire) == (topic, without_topic(header), body or b"")


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    topic = draw(st.text(min_size=1, max_size=12))
    header = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4))
    body = draw(st.binary(max_size=48))
    data = bytearray(go_marshal({**header, ":topic": topic}, body) if draw(st.booleans()) else encode(topic, header, body))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "delete", "insert"]))
        if not data:
            op = "insert"
        if op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.sampled_from([b"{", b"}", b'"', b"\\", b":", b",", b"[", b"null", b"\xff", b"\\u"]))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[i:]
        else:
            del data[i : i + draw(st.integers(1, 4))]
    return bytes(data)


def _decode_or_codec_error(data: bytes) -> None:
    try:
        got = decode(data)
    except CodecError as e:
        assert isinstance(e, BrokerError)
        assert str(e).startswith(
            ("invalid JSON envelope: ", "invalid envelope Header: ", "invalid envelope Body: ", "envelope has no topic: ")
        ), str(e)
        return
    # any other exception propagates and fails the test
    assert type(got) is tuple and len(got) == 3
    topic, header, body = got
    assert type(topic) is str and topic
    assert type(header) is dict and ":topic" not in header
    assert all(type(k) is str and type(v) is str for k, v in header.items())
    assert type(body) is bytes


@_FAST
@given(data=st.binary())
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_codec_error(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_envelopes())
def test_fuzz_mutated_envelopes(data: bytes) -> None:
    _decode_or_codec_error(data)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@_FAST
@given(
    doc=st.dictionaries(
        st.sampled_from(["Header", "header", "HEADER", "Body", "body", "Extra", ":topic"]),
        _json_values
        | st.dictionaries(st.sampled_from([":topic", "Micro-Topic", "k"]), st.text(max_size=4) | _json_values),
        max_size=4,
    )
)
def test_fuzz_json_shaped_documents(doc: dict[str, object]) -> None:
    _decode_or_codec_error(json.dumps(doc, ensure_ascii=False).encode("utf-8"))
