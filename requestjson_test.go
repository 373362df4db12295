package llmratelimit

import (
	"encoding/json"
	"strings"
	"testing"
)

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
