package llmratelimit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Fuzz targets beyond FuzzParseRequest (requestjson_test.go) and FuzzRetryHint
// (retryhint_test.go). Their checked-in seeds are in testdata/fuzz/<name>.
// Run one with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzSSEUsageReader$' -fuzztime 1m .

// estimateTemplates are request bodies of each shape the estimator reads;
// TEXT is replaced by a JSON string.
var estimateTemplates = []struct {
	name string
	f    dialect
	body string
}{
	{"chat", dOpenAI, `{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":TEXT}],"max_tokens":64,"n":2}`},
	{"completions", dOpenAI, `{"model":"gpt-3.5-turbo-instruct","prompt":TEXT,"max_tokens":16}`},
	{"responses", dOpenAI, `{"model":"gpt-4o","instructions":"Be brief.","input":[{"role":"user","content":[{"type":"input_text","text":TEXT},{"type":"input_image","detail":"low","image_url":"data:x"}]}],"max_output_tokens":64}`},
	{"embeddings", dOpenAI, `{"model":"text-embedding-3-small","input":[TEXT,"second input"]}`},
	{"anthropic", dAnthropic, `{"model":"claude-sonnet-4-5","max_tokens":256,"system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":TEXT}]}]}`},
	{"gemini", dGemini, `{"systemInstruction":{"parts":[{"text":"Be brief."}]},"contents":[{"role":"user","parts":[{"text":TEXT},{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]},{"role":"model","parts":[{"functionCall":{"name":"f","args":{"q":"x"}}}]}],"generationConfig":{"maxOutputTokens":64,"candidateCount":2}}`},
}

// FuzzEstimateMonotone: a well-formed body is never rejected whatever its
// text; the text moves only TextTokens, never below 0, and more text never
// estimates fewer tokens. Raw bytes as a body never panic, and an accepted
// one has no negative count.
func FuzzEstimateMonotone(f *testing.F) {
	for _, s := range [][2]string{
		{"Hello", "world"},
		{"", ""},
		{"What is the capital of France? Answer in one word.", "Paris."},
		{"func main() {\n\tfmt.Println(\"hi\")\n}\n", "// done"},
		{"日本語のテキストです。", "もっと"},
		{"Привет, как дела?", "Хорошо"},
		{"emoji 🙂🚀 and “quotes” — dashes…", "✓"},
		{"tab\there\r\nand \\ backslash \"quoted\" </script> & <b>", "\u2028\u2029"},
		{"bad utf-8 \xff\xfe \xe3\x81", "\x80\xc3"},
		{"1234567890 3.14159 -42 1e10", "0000"},
		{"ALLCAPS camelCaseWord snake_case_word", "   indented"},
		{`{"messages":[{"role":"user","content":"nested json"}]}`, `{"input":[1,2,3]}`},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, text, extra string) {
		// The appended text starts with a space so that an incomplete UTF-8
		// sequence at the end of text stays invalid (and is escaped alike).
		texts := []string{"", text, text + " " + extra}
		for _, tpl := range estimateTemplates {
			var prev requestInfo
			for i, s := range texts {
				js, err := json.Marshal(s)
				if err != nil {
					t.Fatal(err)
				}
				body := []byte(strings.Replace(tpl.body, "TEXT", string(js), 1))
				var info requestInfo
				if err := parseRequest(tpl.f, "", body, &info); err != nil {
					t.Fatalf("%s: rejected a valid body %q: %v", tpl.name, body, err)
				}
				checkCounts(t, tpl.name, body, &info)
				if i > 0 {
					if info.TextTokens < prev.TextTokens {
						t.Fatalf("%s: %q estimates %d tokens, fewer than %d for its prefix %q",
							tpl.name, s, info.TextTokens, prev.TextTokens, texts[i-1])
					}
					got, want := info, prev
					got.TextTokens, want.TextTokens = 0, 0
					if got != want {
						t.Fatalf("%s: the text changed more than TextTokens: %+v, then %+v", tpl.name, prev, info)
					}
				}
				prev = info
			}
		}
		raw := []byte(text + extra)
		for _, fm := range []dialect{dOpenAI, dAnthropic, dGemini} {
			var info requestInfo
			if err := parseRequest(fm, "", raw, &info); err == nil {
				checkCounts(t, "raw body", raw, &info)
			}
		}
	})
}

func checkCounts(t *testing.T, name string, body []byte, info *requestInfo) {
	t.Helper()
	if info.TextTokens < 0 || info.Messages < 0 || info.Images < 0 || info.ImagesLow < 0 ||
		info.MaxOutput < 0 || info.N < 1 {
		t.Fatalf("%s: %q gave a negative count: %+v", name, body, info)
	}
}

// recordingWriter is a ResponseWriter that keeps what reaches it.
type recordingWriter struct {
	h   http.Header
	out bytes.Buffer
}

func (r *recordingWriter) Header() http.Header         { return r.h }
func (r *recordingWriter) Write(p []byte) (int, error) { return r.out.Write(p) }
func (r *recordingWriter) WriteHeader(int)             {}

// Fuzz modes of FuzzSSEUsageReader, as bits of its mode argument.
const (
	fuzzAnthropic = 1 << iota // dAnthropic, else dOpenAI (unless fuzzGemini)
	fuzzStrip                 // strip the usage-only chunk
	fuzzJSON                  // Content-Type application/json, else text/event-stream
	fuzzBig                   // an event longer than maxHeldEvent, in large chunks
	fuzzGemini                // dGemini
	// The high 3 bits of mode place the long event's text within the stream.
)

// fuzzHandler holds the zone whose metrics a fuzzed writer's settle
// counts into.
var fuzzHandler = &Handler{zone: newZone("fuzz")}

// FuzzSSEUsageReader drives the usageWriter with a stream cut at fuzzed
// chunk sizes: the tail and the held event stay bounded, the usage is
// never negative, a stream passes byte for byte unless stripping, and
// stripping removes only whole usage-only events (all of them, unless the
// writer gave up on an over-long event).
func FuzzSSEUsageReader(f *testing.F) {
	chat := "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n" +
		"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":2}}\n\n" +
		"data: [DONE]\n\n"
	anth := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	js := `{"id":"x","choices":[{"message":{"content":"hi \"usage\":{}"}}],"usage":{"prompt_tokens":20,"completion_tokens":5}}`
	f.Add([]byte(chat), []byte{0}, uint8(fuzzStrip))
	f.Add([]byte(chat), []byte{7, 1, 30}, uint8(0))
	f.Add([]byte(strings.ReplaceAll(chat, "\n", "\r\n")), []byte{3}, uint8(fuzzStrip))
	f.Add([]byte(anth), []byte{11, 2}, uint8(fuzzAnthropic))
	f.Add([]byte(anth), []byte{}, uint8(fuzzAnthropic|fuzzStrip))
	f.Add([]byte(js), []byte{9}, uint8(fuzzJSON))
	f.Add([]byte(anth), []byte{200}, uint8(fuzzJSON|fuzzAnthropic))
	f.Add([]byte(chat+chat), []byte{255}, uint8(fuzzStrip|fuzzBig|0x80))
	f.Add([]byte("data: "), []byte{1, 140}, uint8(fuzzStrip|fuzzBig|0xf0))
	gem := "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}]}}], \"usageMetadata\": {\"promptTokenCount\": 9, \"candidatesTokenCount\": 1}}\r\n\r\n" +
		"data: {\"candidates\": [{\"finishReason\": \"STOP\"}], \"usageMetadata\": {\"promptTokenCount\": 9, \"candidatesTokenCount\": 4, \"thoughtsTokenCount\": 2}}\r\n\r\n"
	f.Add([]byte(gem), []byte{5, 17}, uint8(fuzzGemini))
	f.Add([]byte(`[{"usageMetadata":{"promptTokenCount":9}},`+"\r\n"+`{"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":4}}]`), []byte{6}, uint8(fuzzGemini|fuzzJSON))
	f.Fuzz(func(t *testing.T, stream, sizes []byte, mode uint8) {
		// Held events are searched again after each write: keep the
		// quadratic worst case (1-byte writes, no blank line) small.
		if len(stream) > 4<<10 {
			return
		}
		scale := 1
		if mode&fuzzBig != 0 {
			at := len(stream) * int(mode>>5) / 7
			long := bytes.Repeat([]byte("x"), maxHeldEvent+1)
			stream = append(append(append([]byte(nil), stream[:at]...), long...), stream[at:]...)
			scale = 512
		}
		ct := "text/event-stream"
		if mode&fuzzJSON != 0 {
			ct = "application/json"
		}
		fm := dOpenAI
		switch {
		case mode&fuzzGemini != 0:
			fm = dGemini
		case mode&fuzzAnthropic != 0:
			fm = dAnthropic
		}
		strip := mode&fuzzStrip != 0
		rw := &recordingWriter{h: http.Header{"Content-Type": {ct}}}
		uw := usageWriter{ResponseWriter: rw, h: fuzzHandler, d: fm, strip: strip}
		uw.WriteHeader(200)
		largest := 0
		for i, p := 0, stream; len(p) > 0; i++ {
			n := len(p)
			if len(sizes) > 0 {
				n = min(n, (1+int(sizes[i%len(sizes)]))*scale)
			}
			largest = max(largest, n)
			if w, err := uw.Write(p[:n]); w != n || err != nil {
				t.Fatalf("Write of %d bytes gave %d, %v", n, w, err)
			}
			p = p[n:]
			if len(uw.tail) > usageTailSize || cap(uw.tail) > usageTailSize {
				t.Fatalf("tail of %d bytes (cap %d) > %d", len(uw.tail), cap(uw.tail), usageTailSize)
			}
			if len(uw.held) > maxHeldEvent+largest {
				t.Fatalf("held %d bytes > %d + %d", len(uw.held), maxHeldEvent, largest)
			}
			if !strip && len(uw.held) != 0 {
				t.Fatalf("held %d bytes without strip", len(uw.held))
			}
		}
		if err := uw.flushHeld(true); err != nil || len(uw.held) != 0 {
			t.Fatalf("flushHeld: %v, %d bytes still held", err, len(uw.held))
		}
		if u, ok := uw.usage(); u.Input < 0 || u.Output < 0 || (!ok && u != usage{}) {
			t.Fatalf("usage %+v, %v", u, ok)
		}
		out := rw.out.Bytes()
		if !strip || mode&fuzzJSON != 0 {
			if !bytes.Equal(out, stream) {
				t.Fatalf("pass-through changed the stream:\n in %q\nout %q", stream, out)
			}
		} else {
			checkStripped(t, fm, stream, out, uw.strip)
		}
		uw.release()
	})
}

// checkStripped checks that out is in with whole events left out, each a
// usage-only chunk that dialect d added; exact means every usage-only event was left out (the
// writer did not give up stripping). The end of a stream without a blank
// line is never left out.
func checkStripped(t *testing.T, d dialect, in, out []byte, exact bool) {
	t.Helper()
	if len(out) > len(in) {
		t.Fatalf("stripping grew the stream: %d > %d bytes", len(out), len(in))
	}
	rest := out
	for len(in) > 0 {
		end := eventEnd(in, 0)
		last := end < 0
		if last {
			end = len(in)
		}
		ev := in[:end]
		in = in[end:]
		usageOnly := !last && isAddedUsageEvent(d, ev)
		switch {
		case exact && usageOnly:
			// left out
		case exact || !usageOnly:
			if !bytes.HasPrefix(rest, ev) {
				t.Fatalf("event %q missing from the output; output at that point %q", ev, rest)
			}
			rest = rest[len(ev):]
		case bytes.HasPrefix(rest, ev): // a usage-only event passed after the writer gave up
			rest = rest[len(ev):]
		}
	}
	if len(rest) != 0 {
		t.Fatalf("%d bytes in the output that the input does not have: %q", len(rest), rest)
	}
}

// FuzzKeysFile: a keys file never panics the parser, every entry has a
// tier, an accepted file has one entry per non-blank line, and an error
// never shows a key.
func FuzzKeysFile(f *testing.F) {
	for _, s := range []string{
		"sk-live-abcdefghijklmnop pro\nsk-free-0123456789 free\n",
		"# comment\n\nsha256:" + strings.Repeat("ab", 32) + " gold # trailing comment\n",
		"sk-secret-key-one\n",
		"sk-secret-key-two pro extra\n",
		"sha256:abcd pro\n",
		"sha256:" + strings.Repeat("zz", 32) + " pro\n",
		"\tsk-tabbed-key-123\tpro\r\nsk-crlf-key-4567 free\r\n",
		"#only a comment",
		"sk-hash-in-key#not-a-tier pro\n",
		"sk-unicode-ключ-1234 pro\u00a0extra\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, content string) {
		entries, err := parseKeys("k", bufio.NewScanner(strings.NewReader(content)))
		for _, e := range entries {
			if e.tier == "" || strings.ContainsAny(e.tier, " \t\r\n#") {
				t.Fatalf("entry with tier %q", e.tier)
			}
		}
		lines := strings.Split(content, "\n")
		if err == nil {
			want := 0
			for _, l := range lines {
				if len(strings.Fields(stripComment(l))) > 0 {
					want++
				}
			}
			if len(entries) != want {
				t.Fatalf("%d entries for %d non-blank lines", len(entries), want)
			}
			return
		}
		if errors.Is(err, bufio.ErrTooLong) {
			return
		}
		// The message after "k:<line>: " is fixed text, no run of which is
		// longer than 8 bytes: a longer first field in it is a leaked key.
		msg := err.Error()
		if rest, ok := strings.CutPrefix(msg, "k:"); ok {
			if _, after, ok := strings.Cut(rest, ": "); ok {
				msg = after
			}
		}
		for _, l := range lines {
			if fields := strings.Fields(stripComment(l)); len(fields) > 0 && len(fields[0]) > 8 &&
				strings.Contains(msg, fields[0]) {
				t.Fatalf("error %q shows the key %q", err, fields[0])
			}
		}
	})
}

func stripComment(line string) string {
	if i := strings.IndexByte(line, '#'); i >= 0 {
		return line[:i]
	}
	return line
}

// FuzzCaddyfile: any llm_ratelimit block body is parsed or rejected
// without a panic, Validate of what parsed does not panic, and no error
// shows the key of an api_key line.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{
		"rpm 60\ntpm 100000",
		"zone team\nkey {header.X-Team}\nformat openai\nmax_body 10MB\nrpm 60\ntpm 100000\nitpm 80000\notpm 20000\nconcurrent 4",
		"api_key sk-gold-key-123 gold\ntier gold {\n\trpm 600\n\ttpm 1000000\n}",
		"api_key sk-secret-one golden\ntier gold {\n\trpm 1\n}",
		"api_key sk-secret-two",
		"api_key sk-secret-three pro extra",
		"tier pro {\n\trpm 1\n}\napi_key sk-secret-four pro\napi_key sk-secret-four pro",
		"tier pro {\n\trpm 1\n}\napi_key sk-secret-five pro {\n\trpm 2\n}",
		"api_key sha256:abcd pro",
		"api_key \"sk-quoted key\" pro\ntier pro {\n}",
		"model gpt-4o* {\n\trpm 10\n\ttoken_ratio 1.25\n\tmax_output 8192\n}\nmodel \"gpt-[\" {\n}",
		"upstream {\n\trpm 100\n}\nretry {\n\tattempts 3\n\tstatuses 429 503\n\tjitter 0.2\n}",
		"retry off\nmax_wait 30s\nmax_keys 100\nmax_queue 10\ndefault_max_output 2048\nheaders on\ndry_run\nrequire_known_keys\nkeys_file keys.txt",
		"tier pro {\n\ttier free {\n\t}\n}",
		"rpm 0\nrpm -1\nmax_body 0",
		"}\napi_key sk-after-close pro",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		input := "llm_ratelimit {\n" + body + "\n}"
		// NewTestDispenser would log.Fatal on a lexer error.
		tokens, err := caddyfile.Tokenize([]byte(input), "Testfile")
		if err != nil {
			return
		}
		var keys []string // api_key values that appear once in the input
		for i := 0; i+1 < len(tokens); i++ {
			k := tokens[i+1].Text
			if tokens[i].Text == "api_key" && (i == 0 || tokens[i-1].Line != tokens[i].Line) &&
				tokens[i+1].Line == tokens[i].Line && strings.HasPrefix(k, "sk-") && len(k) >= 8 &&
				strings.Count(input, k) == 1 {
				keys = append(keys, k)
			}
		}
		h := &Handler{}
		err = h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
		if err == nil {
			err = h.Validate()
		}
		if err != nil {
			for _, k := range keys {
				if strings.Contains(err.Error(), k) {
					t.Fatalf("error %q shows the key %q", err, k)
				}
			}
		}
	})
}
