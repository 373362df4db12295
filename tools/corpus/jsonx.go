package main

// Ordered JSON: request bodies are built from Obj values so that key order,
// and therefore every output byte, is fixed. No Go map is ever encoded.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// KV is one object member.
type KV struct {
	K string
	V any
}

// Obj is a JSON object whose members keep their order.
type Obj []KV

// Get returns the value of key k and whether it is present.
func (o Obj) Get(k string) (any, bool) {
	for _, kv := range o {
		if kv.K == k {
			return kv.V, true
		}
	}
	return nil, false
}

// Style is how a body is serialised.
type Style struct {
	Name   string
	Indent string // "" = single line
	Spaced bool   // single line with ", " and ": " (Python's json.dumps default)
	ASCII  bool   // escape every non-ASCII rune as \uXXXX (Python's ensure_ascii)
}

var (
	// StyleCompact is Go's json.Marshal output without HTML escaping. It is
	// also the canonical form the reference counts tool definitions,
	// tool-call inputs and Gemini function parts in.
	StyleCompact = Style{Name: "compact"}
	// StylePretty is json.MarshalIndent(v, "", "  ") without HTML escaping.
	StylePretty = Style{Name: "pretty", Indent: "  "}
	// StylePython is Python's json.dumps(v): ", " / ": " separators, ASCII only.
	StylePython = Style{Name: "python", Spaced: true, ASCII: true}
	// StylePythonIndent is json.dumps(v, indent=4), ASCII only.
	StylePythonIndent = Style{Name: "python-indent", Indent: "    ", ASCII: true}
)

// Encode serialises v in style st.
func Encode(v any, st Style) []byte {
	var b bytes.Buffer
	encodeValue(&b, v, st, 0)
	return b.Bytes()
}

// Compact is the canonical compact encoding of v.
func Compact(v any) string { return string(Encode(v, StyleCompact)) }

func newline(b *bytes.Buffer, st Style, depth int) {
	b.WriteByte('\n')
	for range depth {
		b.WriteString(st.Indent)
	}
}

func encodeValue(b *bytes.Buffer, v any, st Style, depth int) {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case int:
		b.WriteString(strconv.Itoa(x))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case float64:
		js, err := json.Marshal(x)
		if err != nil {
			panic(err)
		}
		b.Write(js)
	case json.Number:
		b.WriteString(x.String())
	case string:
		encodeString(b, x, st.ASCII)
	case Obj:
		encodeSeq(b, st, depth, len(x), '{', '}', func(i int) {
			encodeString(b, x[i].K, st.ASCII)
			b.WriteByte(':')
			if st.Indent != "" || st.Spaced {
				b.WriteByte(' ')
			}
			encodeValue(b, x[i].V, st, depth+1)
		})
	case []any:
		encodeSeq(b, st, depth, len(x), '[', ']', func(i int) { encodeValue(b, x[i], st, depth+1) })
	case []string:
		encodeValue(b, anys(x), st, depth)
	case []Obj:
		encodeValue(b, anys(x), st, depth)
	default:
		panic(fmt.Sprintf("jsonx: cannot encode %T", v))
	}
}

// encodeSeq writes an object or array of n members or elements between opening
// and closing, in style st at nesting depth; item writes member or element i.
func encodeSeq(b *bytes.Buffer, st Style, depth, n int, opening, closing byte, item func(i int)) {
	b.WriteByte(opening)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
			if st.Spaced && st.Indent == "" {
				b.WriteByte(' ')
			}
		}
		if st.Indent != "" {
			newline(b, st, depth+1)
		}
		item(i)
	}
	if n > 0 && st.Indent != "" {
		newline(b, st, depth)
	}
	b.WriteByte(closing)
}

// anys converts a typed slice into the []any the encoder and Decode use.
func anys[T any](xs []T) []any {
	a := make([]any, len(xs))
	for i, x := range xs {
		a[i] = x
	}
	return a
}

const hexDigits = "0123456789abcdef"

func writeU(b *bytes.Buffer, r rune) {
	b.WriteString(`\u`)
	b.WriteByte(hexDigits[r>>12&0xf])
	b.WriteByte(hexDigits[r>>8&0xf])
	b.WriteByte(hexDigits[r>>4&0xf])
	b.WriteByte(hexDigits[r&0xf])
}

func encodeString(b *bytes.Buffer, s string, ascii bool) {
	if !utf8.ValidString(s) {
		panic("jsonx: invalid UTF-8 in string")
	}
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			writeU(b, r)
		case r == 0x2028 || r == 0x2029:
			writeU(b, r)
		case ascii && r > 0x7e:
			if r > 0xffff {
				r -= 0x10000
				writeU(b, 0xd800+(r>>10))
				writeU(b, 0xdc00+(r&0x3ff))
			} else {
				writeU(b, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

// Decode parses JSON into ordered values: Obj, []any, string, json.Number,
// bool and nil.
func Decode(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := Obj{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key is %T", kt)
				}
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				o = append(o, KV{k, v})
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return o, nil
		case '[':
			a := []any{}
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return a, nil
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	default:
		return tok, nil // string, json.Number, bool, nil
	}
}

// normalize converts builder values ([]string, []Obj, int) into the shapes
// Decode produces, so builder and decoder values compare equal as text.
func normalize(v any) any {
	switch x := v.(type) {
	case int:
		return json.Number(strconv.Itoa(x))
	case int64:
		return json.Number(strconv.FormatInt(x, 10))
	case float64:
		return json.Number(strings.TrimSpace(string(Encode(x, StyleCompact))))
	case []string:
		return anys(x)
	case []Obj:
		return normalize(anys(x))
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = normalize(e)
		}
		return a
	case Obj:
		o := make(Obj, len(x))
		for i, kv := range x {
			o[i] = KV{kv.K, normalize(kv.V)}
		}
		return o
	}
	return v
}
