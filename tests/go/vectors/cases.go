// The cases: which broker.Message values to marshal and which inputs to unmarshal. Adding a
// case here and regenerating the file (see README.md next to this directory) is all it takes;
// tests/test_codec.py checks every case in the file.
package main

import (
	"fmt"
	"strings"
)

func h(kv ...string) map[string]string {
	if len(kv)%2 != 0 {
		panic("h: odd number of arguments")
	}
	m := make(map[string]string, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// controlChars is every C0 control character and DEL.
func controlChars() string {
	var sb strings.Builder
	for c := 0; c < 0x20; c++ {
		sb.WriteByte(byte(c))
	}
	sb.WriteByte(0x7f)
	return sb.String()
}

func manyHeaders() map[string]string {
	m := map[string]string{":topic": "many"}
	// keys inserted out of order so that Go's sorting shows
	for i := 255; i >= 0; i-- {
		m[fmt.Sprintf("X-Header-%03d", (i*37)%256)] = fmt.Sprintf("value %d \u00e9\u00e8 <%d>", i, i)
	}
	return m
}

func encodeCases() []encodeCase {
	return []encodeCase{
		{name: "simple", header: h(":topic", "go.micro.topic"), body: []byte("Hello, Go!")},
		{
			name: "go-micro-typical-headers",
			header: h(":topic", "go.micro.srv.greeter", "Content-Type", "application/json",
				"Micro-From-Service", "go.micro.api", "Micro-Id", "5a0f3b9e-3b1c-4b3e-9f7a-2f1c9f6d8e21"),
			body: []byte(`{"name":"John"}`),
		},
		{
			name:   "go-micro-current-publish",
			note:   "what go-micro's current http broker Publish sends: the topic under Micro-Topic",
			header: h("Micro-Topic", "go.micro.srv.greeter", "Content-Type", "application/protobuf", "Micro-Id", "1"),
			body:   []byte{0x0a, 0x04, 'J', 'o', 'h', 'n'},
		},
		{
			name:   "html-escapes",
			note:   "Go escapes <, > and & (json.Marshal's HTML escaping)",
			header: h(":topic", "html", "a<b>", "x & y", "q", "<script>alert(1)</script>"),
			body:   []byte("<h1>Hi</h1>"),
		},
		{name: "html-escapes-in-topic", header: h(":topic", "a<b>&c"), body: []byte("x")},
		{
			name:   "topic-not-first-key",
			note:   "keys that sort before ':topic' byte-wise",
			header: h("!bang", "1", "-dash", "2", "0zero", "3", ":topic", "sorted", "A", "4", "_u", "5", "a", "6", "~", "7"),
			body:   []byte{},
		},
		{
			name:   "key-order-bytewise",
			note:   "Go sorts map keys by their UTF-8 bytes",
			header: h(":topic", "order", "Z", "1", "a", "2", "z", "3", "\u00e9", "4", "\u00c9", "5", "\U0001F511", "6", "\uff21", "7", "", "8"),
			body:   []byte("o"),
		},
		{
			name: "japanese",
			header: h(":topic", "ニュース.速報", "Content-Type", "text/plain; charset=utf-8",
				"件名", "こんにちは世界", "言語", "日本語"),
			body: []byte("日本語のメッセージ"),
		},
		{
			name:   "emoji",
			header: h(":topic", "events.🚀", "emoji", "😀🎉", "mixed", "naïve café – Ωmega", "🔑", "👍🏽"),
			body:   []byte("🎉"),
		},
		{
			name:   "special-code-points",
			note:   "U+FFFD, BOM, noncharacters and the last code point are written as raw UTF-8",
			header: h(":topic", "cp", "fffd", "\ufffd", "bom", "\ufeff", "nonchar", "\ufffe\uffff", "max", "\U0010ffff"),
			body:   []byte("c"),
		},
		{name: "empty-body", header: h(":topic", "empty"), body: []byte{}},
		{name: "body-nil", note: "a nil []byte is null", header: h(":topic", "nil"), body: nil},
		{name: "header-nil", note: "a nil map is null", header: nil, body: []byte("x")},
		{name: "header-empty", header: map[string]string{}, body: nil},
		{name: "empty-key-and-values", header: h(":topic", "e", "", "", "k", ""), body: []byte{}},
		{name: "binary-all-256-bytes", header: h(":topic", "binary"), body: allBytes()},
		{name: "body-len-1", header: h(":topic", "pad"), body: []byte{0xff}},
		{name: "body-len-2", header: h(":topic", "pad"), body: []byte{0xff, 0xfe}},
		{name: "body-len-3", header: h(":topic", "pad"), body: []byte{0xff, 0xfe, 0xfd}},
		{name: "body-len-4", header: h(":topic", "pad"), body: []byte{0xfb, 0xef, 0xbe, 0x00}},
		{name: "body-len-5", header: h(":topic", "pad"), body: []byte{0xfb, 0xef, 0xbe, 0x00, 0x3e}},
		{
			name:   "large-1MiB-random",
			header: h(":topic", "big", "Content-Type", "application/octet-stream"),
			gen:    &bodyGen{Kind: "xorshift32", Len: 1<<20 + 1, Seed: 0x604d1c20},
		},
		{name: "large-3MiB-pattern", header: h(":topic", "bigger"), gen: &bodyGen{Kind: "mod251", Len: 3<<20 + 2}},
		{name: "many-headers", header: manyHeaders(), body: []byte("m")},
		{
			name:   "quotes-and-backslashes",
			header: h(":topic", "quotes", "path", `C:\Windows\System32`, `quote"key`, `say "hi"`, `trail\`, `\`, "slash", "a/b</c>"),
			body:   []byte{0},
		},
		{
			name:   "control-chars",
			note:   "every C0 control character and DEL, in a value and in keys",
			header: h(":topic", "ctl", "ctl", controlChars(), "tab\tkey", "x", "nul\x00key", "y"),
			body:   []byte{},
		},
		{name: "control-chars-without-b-f", header: h(":topic", "ctl", "ctl", "\x00\x01\x07\t\n\x0b\r\x1b\x1f\x7f"), body: []byte{}},
		{name: "line-separators", note: "Go escapes U+2028 and U+2029", header: h(":topic", "seps", "ls", "a\u2028b\u2029c", "\u2028", "k"), body: []byte("a")},
		{name: "micro-topic", header: h("Content-Type", "application/json", "Micro-Topic", "go.micro.new"), body: []byte("{}")},
		{name: "topic-and-micro-topic", header: h(":topic", "old", "Micro-Topic", "new"), body: []byte{}},
		{name: "empty-topic-and-micro-topic", header: h(":topic", "", "Micro-Topic", "fallback"), body: nil},
		{
			name:   "invalid-utf8",
			note:   "Go writes each byte that is not part of valid UTF-8 as \\ufffd",
			header: h(":topic", "bad\xffutf8", "lone", "a\xffb", "truncated", "a\xe6\x97b", "surrogate", "a\xed\xa0\x80b", "overlong", "\xc0\x80", "too-big", "\xf4\x90\x80\x80", "k\xfe", "v"),
			body:   []byte("u"),
		},
	}
}

// nest is an unknown field holding arrays nested n deep.
func nest(n int) string {
	return `{"X":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `,"Header":{":topic":"deep"}}`
}

func decodeCases() []decodeCase {
	return []decodeCase{
		// field names and document shape
		{name: "field-names-lower-case", input: `{"header":{":topic":"lower","x":"y"},"body":"AAEC"}`},
		{name: "field-names-upper-case", input: `{"HEADER":{":topic":"UPPER","X":"y"},"BODY":"/w=="}`},
		{name: "field-names-mixed-case-body-first", input: `{"bOdY":"+/8=","hEaDeR":{":topic":"mixed"}}`},
		{name: "field-names-escaped", note: "keys are unescaped before matching", input: `{"H\u0065ader":{":topic":"esc"},"B\u006fdy":"aGk="}`},
		{name: "field-names-near-miss", note: "not the fields: ignored", input: `{"Headers":{":topic":"x"},"Header ":{":topic":"y"},"Bodies":"aGk=","Header":{":topic":"t"}}`},
		{name: "field-names-non-ascii-fold", note: "no Unicode case folding reaches Header or Body", input: `{"Ｈeader":{":topic":"x"},"Header":{":topic":"t"},"BODY\u0130":"aGk="}`},
		{
			name:  "unknown-fields-ignored",
			input: `{"Id":"42","Header":{":topic":"unk"},"Extra":{"nested":[1,2.5e3,{"a":null}],"b":true},"Body":"aGk=","Timestamp":"2024-01-01T00:00:00Z","Zeros":null,"Headers":{"no":1}}`,
		},
		{name: "unknown-field-numbers", note: "numbers of unknown fields are never converted", input: `{"a":1e999,"b":-0,"c":1E+2,"d":123456789012345678901234567890,"e":0.0e-0,"f":-1.5E-400,"Header":{":topic":"n"}}`},
		{name: "marshal-indent", input: "{\n  \"Header\": {\n    \":topic\": \"pretty\",\n    \"id\": \"1\"\n  },\n  \"Body\": \"aGk=\"\n}"},
		{name: "surrounding-whitespace", input: " \t\r\n{ \"Header\" : { \":topic\" : \"ws\" } , \"Body\" : \"aGk=\" } \n"},
		{name: "empty-object", input: `{}`},
		{name: "top-level-null", note: "Unmarshal of null into a struct is a no-op", input: `null`},
		{name: "top-level-array", input: `[1]`},
		{name: "top-level-string", input: `"str"`},
		{name: "top-level-number", input: `42`},
		{name: "top-level-bool", input: `true`},
		{name: "top-level-empty-array", input: `[]`},

		// the Header
		{name: "header-null", input: `{"Header":null,"Body":"aGk="}`},
		{name: "header-missing", input: `{"Body":"aGk="}`},
		{name: "header-empty", input: `{"Header":{},"Body":""}`},
		{name: "header-null-and-empty-values", note: "a null value stores \"\"", input: `{"Header":{":topic":"t","gone":null,"empty":""},"Body":""}`},
		{name: "header-duplicate-key-last-wins", input: `{"Header":{":topic":"dup","k":"first","k":"second"},"Body":""}`},
		{name: "header-repeated-field-merges", note: "a repeated field decodes into the same map", input: `{"Header":{":topic":"t","a":"1"},"header":{"b":"2","a":"3"}}`},
		{name: "header-repeated-field-null-clears", note: "null sets the map to nil, a later object starts a new map", input: `{"Header":{":topic":"t","a":"1"},"Header":null,"header":{"b":"2"}}`},
		{name: "header-repeated-field-null-last", input: `{"Header":{":topic":"t","a":"1"},"Header":null}`},
		{name: "header-value-number", input: `{"Header":{":topic":"t","n":3}}`},
		{name: "header-value-object", input: `{"Header":{":topic":"t","obj":{"a":"b"}}}`},
		{name: "header-value-array", input: `{"Header":{":topic":"t","arr":["x"]}}`},
		{name: "header-value-bool", input: `{"Header":{":topic":"t","b":true}}`},
		{name: "header-topic-number", input: `{"Header":{":topic":1}}`},
		{name: "header-value-non-ascii-key", input: `{"Header":{":topic":"t","件名":1}}`},
		{name: "header-array", input: `{"Header":[1]}`},
		{name: "header-string", input: `{"Header":"s"}`},
		{name: "header-number", input: `{"Header":5}`},
		{name: "header-bool-lower-case", input: `{"header":true,"Body":""}`},

		// the topic
		{name: "topic-empty", input: `{"Header":{":topic":""}}`},
		{name: "topic-null", input: `{"Header":{":topic":null}}`},
		{name: "topic-micro-topic", input: `{"Header":{"Content-Type":"application/json","Micro-Topic":"go.micro.new"},"Body":"e30="}`},
		{name: "topic-micro-topic-empty", input: `{"Header":{"Micro-Topic":""}}`},
		{name: "topic-both-empty", input: `{"Header":{":topic":"","Micro-Topic":""}}`},
		{name: "topic-wins-over-micro-topic", input: `{"Header":{":topic":"old","Micro-Topic":"new"},"Body":""}`},
		{name: "topic-empty-falls-back-to-micro-topic", input: `{"Header":{":topic":"","Micro-Topic":"fallback"},"Body":null}`},
		{name: "topic-near-miss-keys", input: `{"Header":{"topic":"t","micro-topic":"t",":Topic":"t","MICRO-TOPIC":"t"}}`},

		// strings: escapes, UTF-8, surrogates
		{name: "string-unicode-escapes", input: `{"Header":{":topic":"\u65e5\u672c","k\u00e9y":"\ud83d\ude00 \u0041\/\b\f\n\r\t\"\\"},"Body":""}`},
		{name: "string-escape-upper-hex", input: `{"Header":{":topic":"\u00C9\u00e9"}}`},
		{name: "string-raw-del-and-non-ascii", input: "{\"Header\":{\":topic\":\"t\",\"k\":\"\x7f\u00e9\U0001F600\"}}"},
		{name: "string-invalid-utf8-lone-byte", input: "{\"Header\":{\":topic\":\"t\",\"x\":\"a\xffb\"}}"},
		{name: "string-invalid-utf8-truncated-sequence", note: "Go replaces each byte of a broken sequence", input: "{\"Header\":{\":topic\":\"t\",\"x\":\"a\xe6\x97b\"}}"},
		{name: "string-invalid-utf8-truncated-4-byte", input: "{\"Header\":{\":topic\":\"t\",\"x\":\"a\xf0\x9f\x98b\"}}"},
		{name: "string-invalid-utf8-encoded-surrogate", input: "{\"Header\":{\":topic\":\"t\",\"x\":\"a\xed\xa0\x80b\"}}"},
		{name: "string-invalid-utf8-overlong", input: "{\"Header\":{\":topic\":\"t\",\"x\":\"\xc0\x80\xe0\x80\x80\"}}"},
		{name: "string-invalid-utf8-above-max", input: "{\"Header\":{\":topic\":\"t\",\"x\":\"\xf4\x90\x80\x80\"}}"},
		{name: "string-invalid-utf8-in-key", input: "{\"Header\":{\":topic\":\"t\",\"k\xfe\xff\":\"v\"}}"},
		{name: "string-invalid-utf8-in-topic", input: "{\"Header\":{\":topic\":\"t\xff\"}}"},
		{name: "string-invalid-utf8-at-end", input: "{\"Header\":{\":topic\":\"t\",\"x\":\"a\xe6\"}}"},
		{name: "string-invalid-utf8-in-unknown-field", input: "{\"X\":\"\xff\",\"Header\":{\":topic\":\"t\"}}"},
		{name: "string-invalid-utf8-outside-string", input: "{\"Header\":{\":topic\":\"t\"}\xff}"},
		{name: "string-lone-high-surrogate", input: `{"Header":{":topic":"t","x":"a\ud800b"}}`},
		{name: "string-lone-low-surrogate", input: `{"Header":{":topic":"t","x":"a\udc00b"}}`},
		{name: "string-high-surrogate-then-escape", input: `{"Header":{":topic":"t","x":"\ud800\u0041"}}`},
		{name: "string-two-high-surrogates-then-low", input: `{"Header":{":topic":"t","x":"\ud800\ud800\udc00"}}`},
		{name: "string-high-surrogate-at-end", input: `{"Header":{":topic":"t","x":"\ud83d"}}`},
		{name: "string-escaped-backslash-before-u", input: `{"Header":{":topic":"t","x":"\\ud800"}}`},
		{name: "string-surrogate-in-key", input: `{"Header":{":topic":"t","\udfff":"v"}}`},
		{name: "string-raw-tab", input: "{\"Header\":{\":topic\":\"t\tx\"}}"},
		{name: "string-raw-newline", input: "{\"Header\":{\":topic\":\"t\nx\"}}"},
		{name: "string-raw-nul", input: "{\"Header\":{\":topic\":\"t\x00x\"}}"},
		{name: "string-bad-escape-a", input: `{"Header":{":topic":"t\a"}}`},
		{name: "string-bad-escape-x", input: `{"Header":{":topic":"t\x41"}}`},
		{name: "string-bad-escape-short-u", input: `{"Header":{":topic":"t\u00"}}`},
		{name: "string-bad-escape-upper-u", input: `{"Header":{":topic":"t\U0041"}}`},
		{name: "string-bad-escape-single-quote", input: `{"Header":{":topic":"t\'"}}`},

		// the Body
		{name: "body-null", input: `{"Header":{":topic":"nil"},"Body":null}`},
		{name: "body-missing", input: `{"Header":{":topic":"nobody"}}`},
		{name: "body-empty", input: `{"Header":{":topic":"empty"},"Body":""}`},
		{name: "body-base64-one-pad", input: `{"Header":{":topic":"pad"},"Body":"YWI="}`},
		{name: "body-base64-no-pad", input: `{"Header":{":topic":"nopad"},"Body":"YWJj"}`},
		{name: "body-base64-crlf", note: "Go's base64 skips \\r and \\n", input: `{"Header":{":topic":"wrapped"},"Body":"QUJD\r\nREVG\n"}`},
		{name: "body-base64-only-newlines", input: `{"Header":{":topic":"t"},"Body":"\r\n\n"}`},
		{name: "body-base64-newline-in-padding", input: `{"Header":{":topic":"t"},"Body":"QQ=\n="}`},
		{name: "body-base64-raw-newline", note: "a raw newline inside a JSON string is a syntax error", input: "{\"Header\":{\":topic\":\"t\"},\"Body\":\"QUJD\nREVG\"}"},
		{name: "body-base64-escaped", note: "the string is unescaped before base64 decoding", input: `{"Header":{":topic":"t"},"Body":"QUJD\u0051\u0051\u003d\u003d"}`},
		{name: "body-base64-escaped-slash", note: "encoders that escape / (PHP, some Java) write \\/ in base64", input: `{"Header":{":topic":"t"},"Body":"\/w\/\/"}`},
		{name: "body-base64-nonzero-trailing-bits", note: "StdEncoding is not Strict: non-zero padding bits are ignored", input: `{"Header":{":topic":"t"},"Body":"QR=="}`},
		{name: "body-base64-nonzero-trailing-bits-one-pad", input: `{"Header":{":topic":"t"},"Body":"QUJ="}`},
		{name: "body-base64-bad-symbols", input: `{"Header":{":topic":"t"},"Body":"!!"}`},
		{name: "body-base64-missing-padding", input: `{"Header":{":topic":"t"},"Body":"QQ"}`},
		{name: "body-base64-missing-one-pad", input: `{"Header":{":topic":"t"},"Body":"QUI"}`},
		{name: "body-base64-one-char", input: `{"Header":{":topic":"t"},"Body":"Q"}`},
		{name: "body-base64-space-inside", input: `{"Header":{":topic":"t"},"Body":"Q Q=="}`},
		{name: "body-base64-tab-inside", input: `{"Header":{":topic":"t"},"Body":"QQ\t=="}`},
		{name: "body-base64-url-safe", input: `{"Header":{":topic":"t"},"Body":"-_8="}`},
		{name: "body-base64-padding-in-middle", input: `{"Header":{":topic":"t"},"Body":"QQ==QQ=="}`},
		{name: "body-base64-only-padding", input: `{"Header":{":topic":"t"},"Body":"===="}`},
		{name: "body-base64-one-equals", input: `{"Header":{":topic":"t"},"Body":"="}`},
		{name: "body-base64-extra-padding", input: `{"Header":{":topic":"t"},"Body":"QQ==="}`},
		{name: "body-base64-three-pad", input: `{"Header":{":topic":"t"},"Body":"Q==="}`},
		{name: "body-base64-invalid-utf8", input: "{\"Header\":{\":topic\":\"t\"},\"Body\":\"QQ\xff=\"}"},
		{name: "body-number", input: `{"Header":{":topic":"t"},"Body":5}`},
		{name: "body-bool", input: `{"Header":{":topic":"t"},"Body":true}`},
		{name: "body-object-lower-case", input: `{"Header":{":topic":"t"},"body":{"a":1}}`},
		{name: "body-array-of-strings", input: `{"Header":{":topic":"t"},"Body":["a"]}`},
		{name: "body-array-of-numbers", note: "Go decodes a JSON array of numbers into []byte", input: `{"Header":{":topic":"t"},"Body":[1,2,255]}`},
		{name: "body-array-empty", input: `{"Header":{":topic":"t"},"Body":[]}`},
		{name: "body-array-with-null", input: `{"Header":{":topic":"t"},"Body":[null,7]}`},
		{name: "body-array-out-of-range", input: `{"Header":{":topic":"t"},"Body":[256]}`},
		{name: "body-array-negative", input: `{"Header":{":topic":"t"},"Body":[-1]}`},
		{name: "body-array-fraction", input: `{"Header":{":topic":"t"},"Body":[1.5]}`},
		{name: "body-duplicate-last-wins", input: `{"Header":{":topic":"a"},"Body":"YQ==","Body":null}`},
		{name: "body-duplicate-null-then-value", input: `{"Header":{":topic":"a"},"Body":null,"body":"YQ=="}`},
		{name: "body-duplicate-bad-then-good", note: "the first base64 error is kept", input: `{"Header":{":topic":"a"},"Body":"!!","Body":"YQ=="}`},

		// several errors in one document: which one Go reports
		{name: "errors-body-before-header", input: `{"Body":"!!","Header":5}`},
		{name: "errors-header-before-body", input: `{"Header":5,"Body":"!!"}`},
		{name: "errors-header-value-before-body", input: `{"Header":{":topic":1},"Body":"!!"}`},
		{name: "errors-type-before-syntax", note: "the whole document is checked before decoding", input: `{"Header":5,"Body":"!!"`},

		// syntax
		{name: "syntax-empty-input", input: ``},
		{name: "syntax-whitespace-only", input: " \n"},
		{name: "syntax-unterminated-object", input: `{`},
		{name: "syntax-not-json", input: `not json`},
		{name: "syntax-trailing-garbage", input: `{} x`},
		{name: "syntax-two-documents", input: `{"Header":{":topic":"t"}}{}`},
		{name: "syntax-trailing-nul", input: "{\"Header\":{\":topic\":\"t\"}}\x00"},
		{name: "syntax-trailing-comma", input: `{"Header":{":topic":"t"},}`},
		{name: "syntax-single-quotes", input: `{'Header':{}}`},
		{name: "syntax-utf8-bom", input: "\xef\xbb\xbf{\"Header\":{\":topic\":\"t\"}}"},
		{name: "syntax-comment", input: `{"Header":{":topic":"t"}/* c */}`},
		{name: "syntax-nan", input: `{"X":NaN,"Header":{":topic":"t"}}`},
		{name: "syntax-infinity", input: `{"X":Infinity,"Header":{":topic":"t"}}`},
		{name: "syntax-leading-zero", input: `{"X":01,"Header":{":topic":"t"}}`},
		{name: "syntax-plus-sign", input: `{"X":+1,"Header":{":topic":"t"}}`},
		{name: "syntax-leading-dot", input: `{"X":.5,"Header":{":topic":"t"}}`},
		{name: "syntax-hex-number", input: `{"X":0x1,"Header":{":topic":"t"}}`},
		{name: "syntax-unquoted-key", input: `{Header:{":topic":"t"}}`},
		{name: "syntax-truncated-after-body", input: `{"Header":{":topic":"t"},"Body":"QQ=="`},
		{name: "syntax-broken-unknown-field", input: `{"Header":{":topic":"t"},"X":[1,}`},
		{name: "syntax-truncated-inside-header", input: `{"Header":{":topic":"t"`},
		{name: "syntax-truncated-inside-header-value", input: `{"Header":{":topic":"t`},
		{name: "syntax-missing-colon-in-header", input: `{"Header":{":topic" "t"}}`},
		{name: "syntax-trailing-comma-in-header", input: `{"Header":{":topic":"t",}}`},
		{name: "syntax-truncated-inside-body", input: `{"Header":{":topic":"t"},"Body":"QQ`},
		{name: "syntax-unterminated-body-string", input: `{"Header":{":topic":"t"},"Body":"QQ==}`},
		{name: "syntax-vertical-tab-whitespace", input: "{\v\"Header\":{\":topic\":\"t\"}}"},
		{name: "syntax-nbsp-whitespace", input: "{\u00a0\"Header\":{\":topic\":\"t\"}}"},

		// nesting depth: Go refuses more than 10000 levels
		{name: "nesting-depth-128", input: nest(127)},
		{name: "nesting-depth-129", input: nest(128)},
		{name: "nesting-depth-10000", input: nest(9999)},
		{name: "nesting-depth-10001", input: nest(10000)},
		{name: "nesting-in-header-value", input: `{"Header":{":topic":"t","k":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}}`},
	}
}
