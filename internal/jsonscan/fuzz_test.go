package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
)

// FuzzScanner: the scanner alone on any bytes. It accepts a document
// exactly when encoding/json does (but for nesting past MaxDepth), whether
// or not it feeds a counter; and a string reads the same decoded length
// through the counter's fast path (Str into a counter) as decoded into a
// buffer. Run it with:
//
//	go test -run '^$' -fuzz '^FuzzScanner$' -fuzztime 1m ./internal/jsonscan
func FuzzScanner(f *testing.F) {
	for _, v := range []string{
		`1`, `-0.5e+10`, `"a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00"`, `true`, `null`, `[]`, `{}`,
		`[1,[2,[3]],{"a":{}}]`, `{"a":1,"b":[true,null]}`, ` [ 1 , 2 ] `, `"\ud800"`, `"\udc00x"`,
		`"\u4e2d中\ud83d\ude00中"`, `01`, `1.`, `[1,]`, `{"a":1,}`, `{"a"}`, `"abc`, `"\x"`, `"\u00g0"`,
		"\"a\x01b\"", `tru`, `"\u"`, `"\ud83d\u"`, `"trailing \`, "\"bad \xff utf-8\"",
		`{"tools":[{"name":"f","parameters":{"type":"object"}}],"x":"y"}`,
	} {
		f.Add([]byte(v))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		scan := func(tc *costmodel.Counter) error {
			s := New(doc)
			if err := s.Skip(tc); err != nil {
				return err
			}
			if s.Peek() != End {
				return s.SyntaxError()
			}
			return nil
		}
		var tc costmodel.Counter
		tc.Begin()
		err, counted := scan(nil), scan(&tc)
		if (err == nil) != (counted == nil) || err != nil && err.Error() != counted.Error() {
			t.Fatalf("%q: Skip says %v, Skip into a counter says %v", doc, err, counted)
		}
		valid := json.Valid(doc)
		if !valid && err == nil {
			t.Fatalf("accepted invalid JSON %q", doc)
		}
		if valid && err != nil && !strings.Contains(err.Error(), "nesting") {
			t.Fatalf("rejected valid JSON %q: %v", doc, err)
		}
		if err != nil && !isError(err) {
			t.Fatalf("%q: error %T is not an *Error", doc, err)
		}
		// A string, through the counter and into a buffer.
		a, b := New(doc), New(doc)
		if a.Peek() != String || b.Peek() != String {
			return
		}
		var c costmodel.Counter
		c.Begin()
		n1, err1 := a.Str(&c, nil)
		buf := make([]byte, len(doc))
		n2, err2 := b.Str(nil, buf)
		if (err1 == nil) != (err2 == nil) || n1 != n2 || a.Pos() != b.Pos() || int64(n1) != c.Bytes() {
			t.Fatalf("%q: counted %d bytes to %d (%v), counter has %d; decoded %d bytes to %d (%v)",
				doc, n1, a.Pos(), err1, c.Bytes(), n2, b.Pos(), err2)
		}
	})
}

func isError(err error) bool {
	_, ok := err.(*Error)
	return ok
}
