// Command vectors writes the go-micro envelope test vectors that tests/test_codec.py checks
// hyperbroker's codec against: what Go's own encoding/json makes of go-micro's broker.Message.
//
// This file owns running the cases and the file format (tests/vectors/go_vectors.json); cases.go
// owns the list of cases. Standard library only (no module downloads). The output is
// deterministic: cases sorted by name, maps sorted by key, generated bodies from fixed formulas. Usage (see ../README.md):
//
//	cd tests/go/vectors && go run . > ../../vectors/go_vectors.json
//
// File format, top level: {"generator", "go", "encode": [...], "decode": [...]}.
//
// An "encode" case is one broker.Message and the exact bytes json.Marshal produced:
//
//	name, note       what the case is about
//	header           the Header map (JSON object of strings) or null (Go's nil map); or
//	header_hex       instead of header when a key or value is not valid UTF-8: hex key -> hex value
//	body             the Body as standard base64, or null (Go's nil slice); or
//	body_gen         instead of body for large bodies: {"kind": "mod251"|"xorshift32", "len", "seed"}
//	                 mod251: byte i is i % 251; xorshift32: x = seed, then per byte
//	                 x ^= x << 13; x ^= x >> 17; x ^= x << 5 (uint32), byte = x & 0xff
//	json             json.Marshal's output (always valid UTF-8); or, when over 64 KiB,
//	json_sha256      its SHA-256 (hex) and json_len its length
//	unmarshalled     only when json.Unmarshal of that output differs from the message:
//	                 what it decodes to ({header|header_hex, body})
//	version_dependent  set when another Go release is known to write different bytes
//
// A "decode" case is one input and what json.Unmarshal into a broker.Message made of it:
//
//	name, note
//	input            the input bytes as a string when valid UTF-8; or input_b64 (standard base64);
//	                 neither for the empty input
//	ok               whether Unmarshal returned no error
//	header/header_hex, body   when ok: the decoded Header (null: nil) and Body (null: nil)
//	error            when not ok, the kind of error: "syntax" (*json.SyntaxError),
//	                 "type:<field>" (*json.UnmarshalTypeError; <field> is the first element of
//	                 its Field path, "" for the top level), "base64" (base64.CorruptInputError)
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"unicode/utf8"
)

// Message is go-micro's broker.Message, field for field and without json tags.
type Message struct {
	Header map[string]string
	Body   []byte
}

// bodyGen describes a large body by formula instead of spelling it out in the file.
type bodyGen struct {
	Kind string `json:"kind"`
	Len  int    `json:"len"`
	Seed uint32 `json:"seed,omitempty"`
}

func (g bodyGen) bytes() []byte {
	out := make([]byte, g.Len)
	switch g.Kind {
	case "mod251":
		for i := range out {
			out[i] = byte(i % 251)
		}
	case "xorshift32":
		x := g.Seed
		for i := range out {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			out[i] = byte(x)
		}
	default:
		panic("unknown body_gen kind " + g.Kind)
	}
	return out
}

type encodeCase struct {
	name, note string
	header     map[string]string
	body       []byte
	gen        *bodyGen
}

type decodeCase struct {
	name, note string
	input      string
}

// --- the file format -------------------------------------------------------------------------

type msgOut struct {
	Header    json.RawMessage   `json:"header,omitempty"`
	HeaderHex map[string]string `json:"header_hex,omitempty"`
	Body      json.RawMessage   `json:"body,omitempty"`
}

type encodeOut struct {
	Name string `json:"name"`
	Note string `json:"note,omitempty"`
	msgOut
	BodyGen          *bodyGen `json:"body_gen,omitempty"`
	JSON             string   `json:"json,omitempty"`
	JSONSHA256       string   `json:"json_sha256,omitempty"`
	JSONLen          int      `json:"json_len,omitempty"`
	Unmarshalled     *msgOut  `json:"unmarshalled,omitempty"`
	VersionDependent string   `json:"version_dependent,omitempty"`
}

type decodeOut struct {
	Name     string `json:"name"`
	Note     string `json:"note,omitempty"`
	Input    string `json:"input,omitempty"`
	InputB64 string `json:"input_b64,omitempty"`
	OK       bool   `json:"ok"`
	Error    string `json:"error,omitempty"`
	msgOut
}

type fileOut struct {
	Generator string      `json:"generator"`
	Go        string      `json:"go"`
	Encode    []encodeOut `json:"encode"`
	Decode    []decodeOut `json:"decode"`
}

const inlineLimit = 64 << 10

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func validHeader(h map[string]string) bool {
	for k, v := range h {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// describe writes a message in the file's terms (header or header_hex, body).
func describe(m Message, withBody bool) msgOut {
	var out msgOut
	if m.Header == nil || validHeader(m.Header) {
		out.Header = mustJSON(m.Header)
	} else {
		out.HeaderHex = make(map[string]string, len(m.Header))
		for k, v := range m.Header {
			out.HeaderHex[hex.EncodeToString([]byte(k))] = hex.EncodeToString([]byte(v))
		}
	}
	if withBody {
		out.Body = mustJSON(m.Body)
	}
	return out
}

func errorKind(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var b64 base64.CorruptInputError
	switch {
	case errors.As(err, &syn):
		return "syntax"
	case errors.As(err, &typ):
		return "type:" + strings.SplitN(typ.Field, ".", 2)[0]
	case errors.As(err, &b64):
		return "base64"
	default:
		return fmt.Sprintf("other:%T", err)
	}
}

func sameMessage(a, b Message) bool {
	return reflect.DeepEqual(a.Header, b.Header) && (a.Body == nil) == (b.Body == nil) && bytes.Equal(a.Body, b.Body)
}

func runEncode(c encodeCase) encodeOut {
	m := Message{Header: c.header, Body: c.body}
	if c.gen != nil {
		m.Body = c.gen.bytes()
	}
	wire, err := json.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("%s: %v", c.name, err))
	}
	out := encodeOut{Name: c.name, Note: c.note, msgOut: describe(m, c.gen == nil), BodyGen: c.gen}
	if len(wire) > inlineLimit {
		sum := sha256.Sum256(wire)
		out.JSONSHA256 = hex.EncodeToString(sum[:])
		out.JSONLen = len(wire)
	} else {
		out.JSON = string(wire)
	}
	var back Message
	if err := json.Unmarshal(wire, &back); err != nil {
		panic(fmt.Sprintf("%s: Go cannot read back its own output: %v", c.name, err))
	}
	if !sameMessage(m, back) {
		d := describe(back, true)
		out.Unmarshalled = &d
	}
	for k, v := range m.Header {
		if strings.ContainsAny(k+v, "\b\f") {
			out.VersionDependent = `Go 1.22 and later write \b and \f where older Go writes \u0008 and \u000c`
		}
	}
	return out
}

func runDecode(c decodeCase) decodeOut {
	out := decodeOut{Name: c.name, Note: c.note}
	if utf8.ValidString(c.input) {
		out.Input = c.input
	} else {
		out.InputB64 = base64.StdEncoding.EncodeToString([]byte(c.input))
	}
	var m Message
	if err := json.Unmarshal([]byte(c.input), &m); err != nil {
		out.Error = errorKind(err)
		return out
	}
	out.OK = true
	out.msgOut = describe(m, true)
	return out
}

// goMinor is the Go release without its patch number ("go1.19"): patch releases do not change
// encoding/json's output, and the file should not churn with them.
func goMinor() string {
	v := runtime.Version()
	parts := strings.SplitN(v, ".", 3)
	if len(parts) >= 2 {
		return parts[0] + "." + parts[1]
	}
	return v
}

func main() {
	seen := map[string]bool{}
	var enc []encodeOut
	for _, c := range encodeCases() {
		if seen["e:"+c.name] {
			panic("duplicate encode case " + c.name)
		}
		seen["e:"+c.name] = true
		enc = append(enc, runEncode(c))
	}
	var dec []decodeOut
	for _, c := range decodeCases() {
		if seen["d:"+c.name] {
			panic("duplicate decode case " + c.name)
		}
		seen["d:"+c.name] = true
		dec = append(dec, runDecode(c))
	}
	sort.Slice(enc, func(i, j int) bool { return enc[i].Name < enc[j].Name })
	sort.Slice(dec, func(i, j int) bool { return dec[i].Name < dec[j].Name })

	w := json.NewEncoder(os.Stdout)
	w.SetEscapeHTML(false)
	w.SetIndent("", " ")
	err := w.Encode(fileOut{
		Generator: "tests/go/vectors: cd tests/go/vectors && go run . > ../../vectors/go_vectors.json",
		Go:        goMinor(),
		Encode:    enc,
		Decode:    dec,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
