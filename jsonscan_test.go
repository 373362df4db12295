package llmratelimit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseJSONInt(t *testing.T) {
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
		got, ok := parseJSONInt([]byte(c.in))
		if ok != c.ok || (ok && got != c.want) {
			t.Errorf("parseJSONInt(%s) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// validityCases are values placed inside {"metadata": …}: the scanner must
// agree with encoding/json on which are valid.
var validityCases = []string{
	`1`, `-0.5e+10`, `"a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00"`, `true`, `false`, `null`,
	`[]`, `{}`, `[1,[2,[3]],{"a":{}}]`, `{"a":1,"b":[true,null]}`, ` [ 1 , 2 ] `,
	`"\ud800"`, `"\udc00x"`,
	`01`, `1.`, `.5`, `1e`, `+1`, `-`, `0x10`, `NaN`, `Infinity`,
	`[1,]`, `[,1]`, `{"a":1,}`, `{,}`, `{"a"}`, `{"a":}`, `{1:2}`, `[1 2]`, `{"a":1 "b":2}`,
	`"abc`, `"\x"`, `"\u00g0"`, "\"a\x01b\"", `tru`, `nul`, `falsey`, `[`, `{`, `]`, `}`,
	`"\u"`, `"\ud83d\u"`,
}

func TestScannerAgreesWithEncodingJSON(t *testing.T) {
	for _, v := range validityCases {
		body := `{"metadata":` + v + `}`
		var info requestInfo
		err := parseRequest(dOpenAI, "", []byte(body), &info)
		if want := json.Valid([]byte(body)); (err == nil) != want {
			t.Errorf("%s: parseRequest error %v, but json.Valid = %v", body, err, want)
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
		s := jsonScanner{data: []byte(v)}
		var tc textCounter
		p, err := countCompact(&s, &tc)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if p.bytes != int64(compact.Len()) {
			t.Errorf("%s: fed %d bytes, compact JSON has %d", v, p.bytes, compact.Len())
		}
		if got, want := p.textTokens(), estimateText(compact.Bytes()); got != want {
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

func TestEscapedKeysMatch(t *testing.T) {
	var info requestInfo
	if err := parseRequest(dOpenAI, "", []byte(`{"m\u0061x_tokens":7,"\u006dodel":"gpt"}`), &info); err != nil {
		t.Fatal(err)
	}
	if info.MaxOutput != 7 || info.Model != "gpt" {
		t.Errorf("got %+v", info)
	}
	if err := parseRequest(dOpenAI, "", []byte(`{"model":"a\u00e9\n"}`), &info); err != nil || info.Model != "aé\n" {
		t.Errorf("model = %q, %v", info.Model, err)
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " and \ backslash`, "line\nbreak\ttab\rcr", "\x00\x01\x1f\x7f",
		"unicode é 中 😀", "bad \xff utf8 \xc3", "</script>&", "\u2028\u2029",
	} {
		out := appendJSONString(nil, s)
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

// FuzzParseRequest: no panic, invalid JSON is always rejected, and valid
// JSON is only rejected for a type, depth or empty-body reason.
func FuzzParseRequest(f *testing.F) {
	for _, v := range validityCases {
		f.Add([]byte(`{"messages":[{"content":`+v+`}]}`), false)
		f.Add([]byte(`{"system":[`+v+`]}`), true)
	}
	f.Add([]byte(`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x","detail":"low"}}]}],"n":2}`), false)
	f.Add([]byte(`{"input":[[1,2],"a",{"type":"function_call","arguments":"{}"}],"prompt":[1,2]}`), false)
	f.Add([]byte(`{"messages":[{"content":[{"type":"tool_result","content":[{"type":"document","source":{"type":"text","data":"x"}}]}]}]}`), true)
	f.Add([]byte(`{"contents":[{"role":"user","parts":[{"text":"hi"},{"inlineData":{"data":"AAAA"}},{"functionCall":{"name":"f","args":{}}}]}],"generationConfig":{"maxOutputTokens":5,"candidateCount":2}}`), false)
	f.Add([]byte(`{"system_instruction":{"parts":[{"text":"x"}]},"tools":[{"function_declarations":[{"name":"f"}]}],"generation_config":{"max_output_tokens":1}}`), true)
	f.Fuzz(func(t *testing.T, body []byte, anthropic bool) {
		f := dOpenAI
		if anthropic {
			f = dAnthropic
		}
		// Every body is also read as a Gemini request.
		for _, d := range []dialect{f, dGemini} {
			var info requestInfo
			err := parseRequest(d, geminiModelPath+":generateContent", body, &info)
			valid := json.Valid(body)
			if !valid && err == nil {
				t.Fatalf("%s accepted invalid JSON %q", d.spec().name, body)
			}
			if valid && err != nil {
				msg := err.Error()
				if strings.HasPrefix(msg, "invalid JSON") && !strings.Contains(msg, "nesting") {
					t.Fatalf("%s rejected valid JSON %q: %v", d.spec().name, body, err)
				}
			}
			if err == nil && (info.TextTokens < 0 || info.N < 1 || info.MaxOutput < 0) {
				t.Fatalf("%s: %q: bad info %+v", d.spec().name, body, info)
			}
		}
	})
}
