package jsonscan

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
)

func TestParseInt(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"-0", 0, true},
		{"42", 42, true},
		{"-7", -7, true},
		{"1.0", 1, true},
		{"1.000000000000000000000000000", 1, true},
		{"1e3", 1000, true},
		{"1.5e1", 15, true},
		{"2500e-2", 25, true},
		{"0.0", 0, true},
		{"0e5", 0, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"-9223372036854775808", -1 << 63, true},
		{"9223372036854775808", 0, false},
		{"1e19", 0, false},
		{"1e30", 0, false},
		{"1e999999999999", 0, false},
		{"1.5", 0, false},
		{"0.5", 0, false},
		{"1e-1", 0, false},
		{"123456789012345678901234567890", 0, false},
	}
	for _, c := range cases {
		got, ok := ParseInt([]byte(c.in))
		if ok != c.ok || (ok && got != c.want) {
			t.Errorf("ParseInt(%s) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestSkipFeedsCompactJSON(t *testing.T) {
	for _, v := range []string{
		`{"a": [1, 2.5e3, true, null], "b" : {"c": "x y\n\"z\""}, "d": []}`,
		"[\n  {\n    \"name\": \"get_weather\",\n    \"parameters\": {}\n  }\n]",
		`"just a string"`,
	} {
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(v)); err != nil {
			t.Fatal(err)
		}
		s := New([]byte(v))
		var tc costmodel.Counter
		tc.Begin()
		if err := s.Skip(&tc); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if tc.Bytes() != int64(compact.Len()) {
			t.Errorf("%s: fed %d bytes, compact JSON has %d", v, tc.Bytes(), compact.Len())
		}
		p := costmodel.Part{Cost: tc.Cost(), Bytes: tc.Bytes()}
		if got, want := p.TextTokens(), costmodel.EstimateText(compact.Bytes()); got != want {
			t.Errorf("%s: %d tokens, compact JSON text gives %d", v, got, want)
		}
	}
}

func TestDecodeEscape(t *testing.T) {
	cases := []struct {
		in   string
		want string
		adv  int
	}{
		{`\n`, "\n", 2},
		{`\/`, "/", 2},
		{`\u4e2d`, "中", 6},
		{`\u00e9`, "é", 6},
		{`\ud83d\ude00`, "😀", 12},
		{`\ud83dx`, "\uFFFD", 6},
		{`\ude00`, "\uFFFD", 6},
		{`\ud83d\u0041`, "\uFFFD", 6},
	}
	for _, c := range cases {
		var buf [4]byte
		n, adv := decodeEscape([]byte(c.in), &buf)
		if n < 0 || string(buf[:n]) != c.want || adv != c.adv {
			t.Errorf("decodeEscape(%s) = %q, %d; want %q, %d", c.in, buf[:max(n, 0)], adv, c.want, c.adv)
		}
	}
	for _, bad := range []string{`\`, `\x`, `\u12`, `\u12g4`} {
		var buf [4]byte
		if n, _ := decodeEscape([]byte(bad), &buf); n >= 0 {
			t.Errorf("decodeEscape(%s) accepted", bad)
		}
	}
}

func TestAppendString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " and \ backslash`, "line\nbreak\ttab\rcr", "\x00\x01\x1f\x7f",
		"unicode é 中 😀", "bad \xff utf8 \xc3", "</script>&", "\u2028\u2029",
	} {
		out := AppendString(nil, s)
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Errorf("%q: output %s is not valid JSON: %v", s, out, err)
			continue
		}
		var want []rune // each invalid byte becomes U+FFFD
		for i := 0; i < len(s); {
			r, size := utf8.DecodeRuneInString(s[i:])
			want = append(want, r)
			i += size
		}
		if got != string(want) {
			t.Errorf("%q round-trips to %q", s, got)
		}
	}
}

// TestInternReturnsEqualStringsWithoutKeepingTheBuffer: an interned string
// equals its bytes, does not change when the bytes do, and a name seen
// before comes back without an allocation.
func TestInternReturnsEqualStringsWithoutKeepingTheBuffer(t *testing.T) {
	b := []byte("gpt-4o-mini")
	s := intern(b)
	if s != "gpt-4o-mini" {
		t.Fatalf("intern = %q", s)
	}
	b[0] = 'X' // the caller's buffer is reused for the next request
	if s != "gpt-4o-mini" {
		t.Fatalf("the interned string changed with its buffer: %q", s)
	}
	if got := intern([]byte("Xpt-4o-mini")); got != "Xpt-4o-mini" {
		t.Fatalf("intern = %q", got)
	}
	name := []byte("claude-sonnet-4-5")
	intern(name)
	if n := testing.AllocsPerRun(100, func() { _ = intern(name) }); n != 0 {
		t.Errorf("intern of a name seen before: %v allocations, want 0", n)
	}
	long := bytes.Repeat([]byte("m"), maxInterned+1)
	if got := intern(long); got != string(long) {
		t.Errorf("a long string: %q", got)
	}
}
