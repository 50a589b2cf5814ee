"""Tests of the go-micro envelope codec: ``hyperbroker.encode`` / ``hyperbroker.decode``.

The Go vectors come from Go itself: ``tests/go/vectors`` (standard library only) marshals
go-micro's ``broker.Message`` (``Header map[string]string``, ``Body []byte``, no json tags) and
unmarshals inputs into it, and writes what Go's ``encoding/json`` did to
``tests/vectors/go_vectors.json`` (format described in ``tests/go/vectors/main.go``). The tests
below check the codec against every case: ``decode`` must accept what Go accepts with Go's
result and refuse what Go refuses (``DELIBERATE_DIFFERENCES`` lists the few exceptions, with
why), ``encode`` must write Go's bytes up to the differences listed at ``test_go_encode_vector``.
``test_go_vectors_file_is_what_go_makes`` regenerates the file with ``go run`` when Go is
installed and checks the checked-in copy is current.

``go_marshal`` below is a Python model of that encoder for the property-based tests;
``test_go_marshal_matches_go`` checks it against every Go-made vector.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

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


_ALL_BYTES = bytes(range(256))
_RNG = random.Random(0x60_4D_1C_20)
_BIG_RANDOM = _RNG.randbytes((1 << 20) + 1)  # 1 MiB + 1: base64 needs padding

# --- Go-made vectors: tests/vectors/go_vectors.json ------------------------------------------

GO_DIR = Path(__file__).parent / "go" / "vectors"
GO_VECTORS_FILE = Path(__file__).parent / "vectors" / "go_vectors.json"
GO_VECTORS: dict[str, Any] = json.loads(GO_VECTORS_FILE.read_text(encoding="utf-8"))

Outcome = tuple[str, str] | tuple[str, str, dict[str, str], bytes]
"""("ok", topic, header, body) or ("error", what the CodecError message starts with)."""

_NO_TOPIC = "envelope has no topic: "
_BAD_JSON = "invalid JSON envelope: "
_BAD_HEADER = "invalid envelope Header: "
_BAD_BODY = "invalid envelope Body: "

_BODY_ARRAY = (
    "Go also decodes a JSON array of numbers into []byte; no encoder writes a []byte that way "
    "(json.Marshal writes base64), so decode() keeps Body a base64 string or null"
)

# Where decode() deliberately parts from Go: decode case name -> (our outcome, why).
DELIBERATE_DIFFERENCES: dict[str, tuple[Outcome, str]] = {
    "body-array-of-numbers": (("error", _BAD_BODY), _BODY_ARRAY),
    "body-array-empty": (("error", _BAD_BODY), _BODY_ARRAY),
    "body-array-with-null": (("error", _BAD_BODY), _BODY_ARRAY),
    "body-duplicate-bad-then-good": (
        ("ok", "a", {}, b"a"),
        (
            "a repeated Body: the last one wins, as in Go, but Go also fails on an earlier one that "
            "is not base64; decode() only decodes the one it keeps (no encoder repeats a field)"
        ),
    ),
    "errors-body-before-header": (
        ("error", _BAD_HEADER),
        "both refuse; Go names the first bad field in document order, decode() a bad Header first",
    ),
    "top-level-null": (
        ("error", _BAD_JSON),
        "both refuse (Go: a no-op Unmarshal leaves no topic); decode() wants an object",
    ),
    "nesting-depth-10001": (
        ("ok", "deep", {}, b""),
        (
            "Go refuses more than 10000 nested levels anywhere; decode() skips unknown fields "
            "without recursion, so it needs no limit there"
        ),
    ),
}


def _xorshift32(n: int, seed: int) -> bytes:
    out = bytearray(n)
    x = seed
    for i in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x & 0xFF
    return bytes(out)


@functools.cache
def _generated_body(kind: str, n: int, seed: int) -> bytes:
    if kind == "mod251":
        return bytes(i % 251 for i in range(n))
    if kind == "xorshift32":
        return _xorshift32(n, seed)
    raise AssertionError(f"unknown body_gen kind {kind!r}")


def _case_header(case: dict[str, Any]) -> dict[str, str] | None:
    """The case's Header (None: Go's nil map); only for cases whose header is valid UTF-8."""
    assert "header_hex" not in case, case["name"]
    header: dict[str, str] | None = case["header"]
    return header


def _case_body(case: dict[str, Any]) -> bytes | None:
    """The case's Body (None: Go's nil slice)."""
    if "body_gen" in case:
        g = case["body_gen"]
        return _generated_body(g["kind"], g["len"], g.get("seed", 0))
    return None if case["body"] is None else base64.b64decode(case["body"], validate=True)


def _has_valid_header(case: dict[str, Any]) -> bool:
    return "header_hex" not in case


@functools.cache
def _encode_wire(name: str) -> bytes:
    """The bytes json.Marshal wrote for an encode case. Large cases store only a SHA-256: the
    bytes are rebuilt with go_marshal and must hash to Go's."""
    case = _ENCODE_BY_NAME[name]
    if "json" in case:
        wire: bytes = case["json"].encode("utf-8")
        return wire
    wire = go_marshal(_case_header(case), _case_body(case))
    assert len(wire) == case["json_len"] and hashlib.sha256(wire).hexdigest() == case["json_sha256"], name
    return wire


def _go_decoded_outcome(result: dict[str, Any]) -> Outcome:
    """What decode() must return for what json.Unmarshal made of an input: Go's Header and Body,
    with go-micro's topic rule (':topic', else 'Micro-Topic') on top."""
    if not result["ok"]:
        kind = result["error"]
        prefix = {"syntax": _BAD_JSON, "type:": _BAD_JSON, "type:Header": _BAD_HEADER, "type:Body": _BAD_BODY}.get(
            kind, _BAD_BODY if kind == "base64" else None
        )
        assert prefix is not None, f"unknown Go error kind {kind!r}"
        return ("error", prefix)
    header = _case_header(result) or {}
    body = _case_body(result) or b""
    topic = header.get(":topic") or header.get("Micro-Topic") or ""
    if not topic:
        return ("error", _NO_TOPIC)
    return ("ok", topic, without_topic(header), body)


def _our_outcome(data: bytes) -> Outcome:
    try:
        topic, header, body = decode(data)
    except CodecError as e:
        prefix = next((p for p in (_BAD_JSON, _BAD_HEADER, _BAD_BODY, _NO_TOPIC) if str(e).startswith(p)), str(e))
        return ("error", prefix)
    return ("ok", topic, header, body)


def _decode_input(case: dict[str, Any]) -> bytes:
    if "input_b64" in case:
        return base64.b64decode(case["input_b64"], validate=True)
    data: bytes = case.get("input", "").encode("utf-8")
    return data


_ENCODE_BY_NAME = {c["name"]: c for c in GO_VECTORS["encode"]}
_ENCODE_IDS = sorted(_ENCODE_BY_NAME)
_DECODE_CASES = [pytest.param(c, id=c["name"]) for c in GO_VECTORS["decode"]]


def test_go_vectors_file_shape() -> None:
    assert GO_VECTORS["go"].startswith("go1.")
    assert len(GO_VECTORS["encode"]) >= 30 and len(GO_VECTORS["decode"]) >= 100
    assert set(DELIBERATE_DIFFERENCES) <= {c["name"] for c in GO_VECTORS["decode"]}


@pytest.mark.parametrize("name", _ENCODE_IDS)
def test_go_encode_vector_decodes(name: str) -> None:
    """decode() reads what json.Marshal wrote as json.Unmarshal reads it back."""
    case = _ENCODE_BY_NAME[name]
    back = case.get("unmarshalled", case)
    assert _our_outcome(_encode_wire(name)) == _go_decoded_outcome({"ok": True, **back})


@pytest.mark.parametrize("name", [n for n in _ENCODE_IDS if _has_valid_header(_ENCODE_BY_NAME[n])])
def test_go_marshal_matches_go(name: str) -> None:
    """The Python model writes Go's bytes (in Go 1.22's spelling of \\b and \\f)."""
    case = _ENCODE_BY_NAME[name]
    assert go_marshal(_case_header(case), _case_body(case)) == _modern_go_escapes(_encode_wire(name))


# One of the JSON escapes below, or an escaped backslash: matched too, so that in the JSON text
# \\u003c (a backslash, then "u003c") no escape is seen.
_ESCAPE = re.compile(rb"\\\\|\\u(0008|000c|003c|003e|0026|2028|2029)")
_UNESCAPE = {b"0008": b"\\b", b"000c": b"\\f"}
_RAW = {k.encode(): chr(int(k, 16)).encode() for k in ("003c", "003e", "0026", "2028", "2029")}
_UNESCAPE_ALL = {**_UNESCAPE, **_RAW}


def _modern_go_escapes(wire: bytes) -> bytes:
    """Go before 1.22 writes \\b and \\f as \\u0008 and \\u000c: spell them as newer Go does."""
    return _ESCAPE.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(0)) if m.group(1) else m.group(0), wire)


def _without_go_escapes(wire: bytes) -> bytes:
    """Go's output with its HTML and U+2028/U+2029 escapes written as the raw characters."""
    return _ESCAPE.sub(lambda m: _UNESCAPE_ALL[m.group(1)] if m.group(1) else m.group(0), wire)


def _ours_applies(case: dict[str, Any]) -> bool:
    """encode() can write this message: a topic, str headers, a body (never Go's nil)."""
    return _has_valid_header(case) and bool((case["header"] or {}).get(":topic")) and case.get("body", "") is not None


@pytest.mark.parametrize("name", [n for n in _ENCODE_IDS if _ours_applies(_ENCODE_BY_NAME[n])])
def test_go_encode_vector(name: str) -> None:
    """encode() writes Go's bytes, but for three documented differences that no JSON reader
    sees: ``<``, ``>``, ``&``, U+2028 and U+2029 are written raw (Go escapes them), ``\\b`` and
    ``\\f`` as Go 1.22 does, and the header as ``:topic`` first, then the caller's order (Go
    sorts the keys byte-wise)."""
    case = _ENCODE_BY_NAME[name]
    header = _case_header(case)
    assert header is not None
    body = _case_body(case)
    assert body is not None
    go = _without_go_escapes(_encode_wire(name))
    # the caller's order = Go's sorted order: only ':topic' may move
    ours = encode(header[":topic"], without_topic(header), body)
    keys = sorted(header, key=lambda k: k.encode("utf-8"))
    if keys[0] == ":topic":
        assert ours == go
    else:
        pairs = json.loads(go, object_pairs_hook=list)
        moved = [("Header", [(":topic", header[":topic"])] + [kv for kv in pairs[0][1] if kv[0] != ":topic"]), pairs[1]]
        assert json.loads(ours, object_pairs_hook=list) == moved
        assert len(ours) == len(go)


@pytest.mark.parametrize("case", _DECODE_CASES)
def test_go_decode_vector(case: dict[str, Any]) -> None:
    """decode() accepts what json.Unmarshal accepts, with its result, and refuses what it
    refuses, in the matching error class; DELIBERATE_DIFFERENCES says where and why not."""
    data = _decode_input(case)
    got = _our_outcome(data)
    if case["name"] in DELIBERATE_DIFFERENCES:
        expected, _why = DELIBERATE_DIFFERENCES[case["name"]]
        assert got == expected
        assert got != _go_decoded_outcome(case), "not a difference any more: drop it from DELIBERATE_DIFFERENCES"
    else:
        assert got == _go_decoded_outcome(case)


def _go_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    # standard library only: nothing may be downloaded, and no toolchain switch
    env.update(
        GOFLAGS="-mod=mod",
        GOPROXY="off",
        GOTOOLCHAIN="local",
        GOCACHE=str(tmp / "gocache"),
        GOPATH=str(tmp / "gopath"),
        GOTELEMETRY="off",
    )
    return env


def test_go_vectors_file_is_what_go_makes(tmp_path: Path) -> None:
    """Regenerate the vectors with the installed Go: the checked-in file must be current.
    With another Go release than the file's, cases Go marks version_dependent may differ."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not on PATH (CI installs Debian's golang-go in .ci/run): cannot regenerate the Go vectors")
    res = subprocess.run(
        [go, "run", "."], cwd=GO_DIR, env=_go_env(tmp_path), capture_output=True, timeout=100, check=False
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    fresh = res.stdout
    checked_in = GO_VECTORS_FILE.read_bytes()
    made: dict[str, Any] = json.loads(fresh)
    if made["go"] == GO_VECTORS["go"]:
        assert fresh == checked_in, "tests/vectors/go_vectors.json is stale: regenerate it (tests/go/README.md)"
        return
    # another Go release: every case the same but for the bytes of version-dependent encodings,
    # which must still decode to the same message
    for case in made["encode"]:
        if case.get("version_dependent"):
            assert decode(case["json"].encode()) == decode(_ENCODE_BY_NAME[case["name"]]["json"].encode())
            case["json"] = _ENCODE_BY_NAME[case["name"]]["json"]
    release, made["go"] = made["go"], GO_VECTORS["go"]
    assert made == GO_VECTORS, f"{release} and {GO_VECTORS['go']} differ beyond the version_dependent cases"


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
    header = {"a<b>&": '"\\\x00\x1f\u2028\u2029/ ü 😀', "\x7f": ""}
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
        pytest.param(
            b'{"Header":{":topic":"t","arr":["x"]}}', r'value of header "arr" is not a string', id="value-array"
        ),
        pytest.param(b'{"Header":{":topic":"t","b":true}}', r'value of header "b" is not a string', id="value-bool"),
        pytest.param(
            '{"Header":{":topic":"t","件名":1}}'.encode(),
            r'value of header "件名" is not a string',
            id="value-non-ascii-key",
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
        pytest.param(b'{"Header":{":topic":"t"},"Body":"-_8="}', r"not valid standard base64", id="url-safe-alphabet"),
        pytest.param(
            b'{"Header":{":topic":"t"},"Body":"QQ==QQ=="}', r"not valid standard base64", id="padding-in-middle"
        ),
        pytest.param(b'{"Header":{":topic":"t"},"Body":5}', r"Body is not a base64 string", id="number"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":[1,2]}', r"Body is not a base64 string", id="array"),
        pytest.param(b'{"Header":{":topic":"t"},"Body":true}', r"Body is not a base64 string", id="bool"),
        pytest.param(
            b'{"Header":{":topic":"t"},"body":{"a":1}}', r"Body is not a base64 string", id="object-lower-case"
        ),
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
    data = bytearray(
        go_marshal({**header, ":topic": topic}, body) if draw(st.booleans()) else encode(topic, header, body)
    )
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
            (
                "invalid JSON envelope: ",
                "invalid envelope Header: ",
                "invalid envelope Body: ",
                "envelope has no topic: ",
            )
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
