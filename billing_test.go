package llmratelimit

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// usageReply is the usage endpoint's JSON.
type usageReply struct {
	Zone string     `json:"zone"`
	From string     `json:"from"`
	To   string     `json:"to"`
	Rows []UsageRow `json:"rows"`
}

// getUsage asks the admin API for a zone's usage; query is what follows
// the "?" and accept the Accept header ("" for none).
func getUsage(t *testing.T, zone, query, accept string) (status int, contentType, body string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+testAdmin+"/llm_ratelimit/usage/"+zone+"?"+query, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// usageRows is the zone's rows of days from..to as JSON.
func usageRows(t *testing.T, zone, from, to string) []UsageRow {
	t.Helper()
	status, ct, body := getUsage(t, zone, "from="+from+"&to="+to, "")
	if status != 200 || ct != "application/json" {
		t.Fatalf("GET usage of %s: %d %s %s", zone, status, ct, body)
	}
	var r usageReply
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("usage JSON: %v: %s", err, body)
	}
	if r.Zone != zone || r.From != from || r.To != to {
		t.Errorf("usage of %s from %s to %s answers zone %q from %q to %q", zone, from, to, r.Zone, r.From, r.To)
	}
	return r.Rows
}

// cachedCompletion answers like OpenAI with a usage whose prompt was
// partly read from the prompt cache.
func cachedCompletion(prompt, cached, completion int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}}}`,
			prompt, completion, prompt+completion, cached)
	}
}

func today() string { return clk.Now().UTC().Format(time.DateOnly) }

func sameUSD(a, b float64) bool { return math.Abs(a-b) < 1e-12 }

// The usage endpoint has one row per key and UTC day with what the traffic
// used: its requests, all the input (cached included), the cached part,
// the output, and the cost at the configured price (cached input at its
// own price), and the key's tier. CSV has the same rows after a header
// line, by format=csv or by Accept: text/csv.
func TestUsageRowsPerKeyAndDayMatchTheTraffic(t *testing.T) {
	mustLoad(t, "zone usage-rows\nrpm 1000\napi_key sk-usage-gold gold\ntier gold {\n\trpm 1000\n}\n"+
		"default_price input 2 output 8 cached_input 1")
	setUpstream(t, cachedCompletion(1000, 400, 200))
	for range 3 {
		if r := send(t, "/v1/chat/completions", "sk-usage-gold", chatBody); r.status != 200 {
			t.Fatalf("gold: %d %s", r.status, r.body)
		}
	}
	for range 2 {
		if r := send(t, "/v1/chat/completions", "sk-usage-free", chatBody); r.status != 200 {
			t.Fatalf("free: %d %s", r.status, r.body)
		}
	}
	// A request the upstream fails counts as a request, with no tokens
	// and no cost.
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadRequest) })
	if r := send(t, "/v1/chat/completions", "sk-usage-free", chatBody); r.status != 400 {
		t.Fatalf("failed request: %d %s", r.status, r.body)
	}

	// A request: 600 uncached input tokens at $2, 400 cached at $1 and
	// 200 output at $8 per million.
	const perRequest = (600*2 + 400*1 + 200*8) / 1e6
	gold, free := hashKey("sk-usage-gold").id(), hashKey("sk-usage-free").id()
	want := []UsageRow{
		{Day: today(), KeyID: gold, Tier: "gold", Requests: 3, InputTokens: 3000, CachedInputTokens: 1200, OutputTokens: 600, CostUSD: 3 * perRequest},
		{Day: today(), KeyID: free, Tier: "", Requests: 3, InputTokens: 2000, CachedInputTokens: 800, OutputTokens: 400, CostUSD: 2 * perRequest},
	}
	if want[0].KeyID > want[1].KeyID {
		want[0], want[1] = want[1], want[0]
	}
	rows := usageRows(t, "usage-rows", today(), today())
	if len(rows) != len(want) {
		t.Fatalf("rows %+v\nwant %+v", rows, want)
	}
	for i := range want {
		got := rows[i]
		if !sameUSD(got.CostUSD, want[i].CostUSD) {
			t.Errorf("row %d cost_usd %v, want %v", i, got.CostUSD, want[i].CostUSD)
		}
		got.CostUSD = want[i].CostUSD
		if got != want[i] {
			t.Errorf("row %d: %+v\nwant %+v", i, got, want[i])
		}
	}
	// Asking again changes nothing: the rows add up once.
	if again := usageRows(t, "usage-rows", today(), today()); len(again) != 2 || again[0] != rows[0] || again[1] != rows[1] {
		t.Errorf("asked again: %+v, want %+v", again, rows)
	}

	for _, how := range []struct{ query, accept string }{
		{"format=csv&from=" + today(), ""},
		{"from=" + today() + "&to=" + today(), "text/csv"},
	} {
		status, ct, body := getUsage(t, "usage-rows", how.query, how.accept)
		if status != 200 || ct != "text/csv; charset=utf-8" {
			t.Fatalf("CSV (%+v): %d %s %s", how, status, ct, body)
		}
		recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
		if err != nil {
			t.Fatalf("CSV (%+v): %v\n%s", how, err, body)
		}
		wantCSV := [][]string{{"day", "key_id", "tier", "requests", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd"}}
		for _, r := range rows {
			wantCSV = append(wantCSV, []string{r.Day, r.KeyID, r.Tier, fmt.Sprint(r.Requests), fmt.Sprint(r.InputTokens),
				fmt.Sprint(r.CachedInputTokens), fmt.Sprint(r.OutputTokens), fmt.Sprint(r.CostUSD)})
		}
		if fmt.Sprint(recs) != fmt.Sprint(wantCSV) {
			t.Errorf("CSV (%+v):\n%s\nwant %v", how, body, wantCSV)
		}
	}
	// A day without traffic has no rows, in either format.
	yesterday := clk.Now().UTC().AddDate(0, 0, -1).Format(time.DateOnly)
	if rows := usageRows(t, "usage-rows", yesterday, yesterday); len(rows) != 0 {
		t.Errorf("yesterday: %+v, want no rows", rows)
	}
	if status, _, body := getUsage(t, "usage-rows", "format=csv&from="+yesterday+"&to="+yesterday, ""); status != 200 ||
		body != strings.Join(usageCSVHeader, ",")+"\n" {
		t.Errorf("yesterday as CSV: %d %q, want the header line alone", status, body)
	}
	// The rows are saved under the zone's usage in Caddy's storage, by
	// key_id: never the raw key.
	zoneOf(t, "usage-rows").flush()
	files, _ := filepath.Glob(filepath.Join(testStorage, "llm_ratelimit", "usage-rows", "usage", today(), "*.json"))
	if len(files) != 1 {
		t.Fatalf("day files %v, want this gateway's one", files)
	}
	raw, _ := os.ReadFile(files[0])
	if !strings.Contains(string(raw), gold) || strings.Contains(string(raw), "sk-usage") {
		t.Errorf("the day file names keys by key_id only: %s", raw)
	}
}

// Traffic before 00:00 UTC counts on the day before, traffic after it on
// the new day: two rows of the same key.
func TestUsageDayBoundaryIsMidnightUTC(t *testing.T) {
	mustLoad(t, "zone usage-midnight\nrpm 1000\ndefault_price input 1 output 1")
	setUpstream(t, cachedCompletion(100, 0, 10))
	nowT := clk.Now().UTC()
	midnight := time.Date(nowT.Year(), nowT.Month(), nowT.Day()+1, 0, 0, 0, 0, time.UTC)
	clk.Advance(midnight.Sub(nowT) - 2*time.Second) // 23:59:58
	before := clk.Now().UTC().Format(time.DateOnly)
	for range 2 {
		if r := send(t, "/v1/chat/completions", "sk-midnight", chatBody); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	clk.Advance(4 * time.Second) // 00:00:02
	after := clk.Now().UTC().Format(time.DateOnly)
	if r := send(t, "/v1/chat/completions", "sk-midnight", chatBody); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	rows := usageRows(t, "usage-midnight", before, after)
	id := hashKey("sk-midnight").id()
	if len(rows) != 2 || rows[0].Day != before || rows[0].KeyID != id || rows[0].Requests != 2 || rows[0].InputTokens != 200 ||
		rows[1].Day != after || rows[1].KeyID != id || rows[1].Requests != 1 || rows[1].InputTokens != 100 {
		t.Errorf("rows %+v\nwant 2 requests on %s and 1 on %s", rows, before, after)
	}
}

// A key busy across midnight, with no flush in between: the counts of the
// day that ended wait apart, and each day gets its own.
func TestUsageOfAKeyBusyAcrossMidnightLandsInTwoDays(t *testing.T) {
	z := newZone("usage-unit-midnight")
	defer z.Destruct()
	z.use.on.Store(true)
	q := ask{kh: hashKey("sk-across"), tier: "t1", lim: Limits{RPM: 1000}, d: demand{in: 50, out: 50}}
	midnight := time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC).UnixNano()
	u := usage{Input: 30, Read: 30, Cached: 10, Output: 7}
	for _, at := range []int64{midnight - 2e9, midnight - 1e9, midnight + 1e9} {
		tk, dec := z.admit(q, at, false, false)
		if !dec.ok {
			t.Fatal("rejected")
		}
		tk.finish(at, &u, false)
	}
	got := z.drainUsage(nil)
	want := map[int32]keyUsage{
		dayOf(midnight) - 1: {day: dayOf(midnight) - 1, requests: 2, in: 60, cached: 20, out: 14},
		dayOf(midnight):     {day: dayOf(midnight), requests: 1, in: 30, cached: 10, out: 7},
	}
	if len(got) != 2 {
		t.Fatalf("drained %+v, want one delta per day", got)
	}
	for _, d := range got {
		if d.u != want[d.u.day] || d.tier != "t1" || d.kp != q.kh.prefix() {
			t.Errorf("drained %+v, want %+v", d, want[d.u.day])
		}
	}
	if again := z.drainUsage(nil); len(again) != 0 {
		t.Errorf("drained again: %+v, want nothing", again)
	}
}

// A key whose state the sweeper drops keeps its counts until the flusher
// takes them.
func TestUsageOfASweptKeyIsKept(t *testing.T) {
	z := newZone("usage-unit-swept")
	defer z.Destruct()
	z.use.on.Store(true)
	q := ask{kh: hashKey("sk-swept"), tier: "t2", lim: Limits{RPM: 1000}, d: demand{in: 50, out: 50}}
	at := time.Date(2030, 1, 2, 12, 0, 0, 0, time.UTC).UnixNano()
	tk, dec := z.admit(q, at, false, false)
	if !dec.ok {
		t.Fatal("rejected")
	}
	tk.finish(at, &usage{Input: 30, Read: 30, Output: 7}, false)
	if n := z.sweep(at + int64(time.Hour)); n != 1 {
		t.Fatalf("swept %d keys, want 1", n)
	}
	got := z.drainUsage(nil)
	if len(got) != 1 || got[0].kp != q.kh.prefix() || got[0].tier != "t2" || got[0].u != (keyUsage{day: dayOf(at), requests: 1, in: 30, out: 7}) {
		t.Errorf("drained %+v, want the swept key's request", got)
	}
}

// The rows outlive the zone: a config without it lets it go (its usage
// saved), and a config with it again reads them back from storage; what
// the new zone counts adds to them, never doubling them.
func TestUsageSurvivesARestart(t *testing.T) {
	conf := "zone usage-restart\nrpm 1000\ndefault_price input 1 output 1"
	mustLoad(t, conf)
	setUpstream(t, cachedCompletion(100, 20, 10))
	for range 2 {
		if r := send(t, "/v1/chat/completions", "sk-restart-usage", chatBody); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	mustLoad(t, "zone usage-restart-other\nrpm 1000")
	eventually(t, "the zone let go", func() bool { return zoneNamed("usage-restart") == nil })
	mustLoad(t, conf)
	if r := send(t, "/v1/chat/completions", "sk-restart-usage", chatBody); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	rows := usageRows(t, "usage-restart", today(), today())
	if len(rows) != 1 || rows[0].Requests != 3 || rows[0].InputTokens != 300 || rows[0].CachedInputTokens != 60 ||
		rows[0].OutputTokens != 30 || !sameUSD(rows[0].CostUSD, 3*(100+10)/1e6) {
		t.Errorf("after the restart: %+v, want the 2 requests before and the 1 after", rows)
	}
	zoneOf(t, "usage-restart").flush()
	files, _ := filepath.Glob(filepath.Join(testStorage, "llm_ratelimit", "usage-restart", "usage", today(), "*.json"))
	if len(files) != 2 {
		t.Errorf("day files %v, want one per gateway process that served the zone that day", files)
	}
	if again := usageRows(t, "usage-restart", today(), today()); len(again) != 1 || again[0] != rows[0] {
		t.Errorf("after a flush: %+v, want %+v", again, rows)
	}
}

// Days older than usage_retention are dropped: left out of the answers,
// and deleted from storage.
func TestUsageRetentionDropsOlderDays(t *testing.T) {
	mustLoad(t, "zone usage-retention\nrpm 1000\nusage_retention 2")
	setUpstream(t, cachedCompletion(100, 0, 10))
	day1 := today()
	if r := send(t, "/v1/chat/completions", "sk-retention", chatBody); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	z := zoneOf(t, "usage-retention")
	z.flush()
	dir1 := filepath.Join(testStorage, "llm_ratelimit", "usage-retention", "usage", day1)
	if _, err := os.Stat(dir1); err != nil {
		t.Fatalf("day 1 not saved: %v", err)
	}
	clk.Advance(24 * time.Hour)
	day2 := today()
	if r := send(t, "/v1/chat/completions", "sk-retention", chatBody); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if rows := usageRows(t, "usage-retention", day1, day2); len(rows) != 2 || rows[0].Day != day1 || rows[1].Day != day2 {
		t.Fatalf("within 2 days: %+v, want a row on each day", rows)
	}
	clk.Advance(24 * time.Hour)
	day3 := today()
	if rows := usageRows(t, "usage-retention", day1, day3); len(rows) != 1 || rows[0].Day != day2 {
		t.Errorf("on day 3: %+v, want day 2's row alone", rows)
	}
	z.flush()
	if _, err := os.Stat(dir1); !os.IsNotExist(err) {
		t.Errorf("day 1 is still in storage (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(testStorage, "llm_ratelimit", "usage-retention", "usage", day2)); err != nil {
		t.Errorf("day 2 is gone from storage: %v", err)
	}
}

// from and to must be dates, in order and within the bound; the format
// json or csv; the zone one that exists; the method GET.
func TestUsageEndpointRefusesBadRequests(t *testing.T) {
	mustLoad(t, "zone usage-bad\nrpm 1000")
	for _, c := range []struct {
		name, method, path string
		want               int
	}{
		{"from not a date", "GET", "usage-bad?from=yesterday", 400},
		{"to not a date", "GET", "usage-bad?to=2026-13-01", 400},
		{"from with a time", "GET", "usage-bad?from=2026-11-26T00:00:00Z", 400},
		{"from after to", "GET", "usage-bad?from=2026-11-27&to=2026-11-26", 400},
		{"a range too long", "GET", "usage-bad?from=2000-01-01&to=2026-11-26", 400},
		{"an unknown format", "GET", "usage-bad?format=xml", 400},
		{"an unknown zone", "GET", "usage-nowhere?from=2026-11-26", 404},
		{"no zone", "GET", "", 404},
		{"a path below the zone", "GET", "usage-bad/x", 404},
		{"POST", "POST", "usage-bad", 405},
		{"dates alone", "GET", "usage-bad?from=2026-11-20&to=2026-11-26", 200},
		{"no dates: today", "GET", "usage-bad", 200},
	} {
		req, _ := http.NewRequest(c.method, "http://"+testAdmin+"/llm_ratelimit/usage/"+c.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, resp.StatusCode, body, c.want)
		}
	}
}

// A day holds at most usageMaxRows keys; the keys past it add up in one
// row, so that a key flood cannot grow the record without bound.
func TestUsageDayFoldsKeysPastTheBound(t *testing.T) {
	d := &usageDay{rows: make(map[string]*usageRow, usageMaxRows)}
	for i := range usageMaxRows {
		d.add(fmt.Sprintf("%012x", i), &usageRow{Requests: 1})
	}
	one := &usageRow{Tier: "gold", Requests: 1, Input: 5}
	if !d.add("ffffffffffff", one) || !d.add("eeeeeeeeeeee", one) || d.add(fmt.Sprintf("%012x", 7), one) {
		t.Error("a new key past the bound is folded, a key already counted is not")
	}
	if o := d.rows[usageOther]; len(d.rows) != usageMaxRows+1 || o == nil || o.Requests != 2 || o.Input != 10 || o.Tier != "" {
		t.Errorf("%d rows, %s %+v; want %d and the two keys past the bound in it", len(d.rows), usageOther, o, usageMaxRows+1)
	}
}

func TestUsageRetentionInTheCaddyfile(t *testing.T) {
	for _, c := range []struct {
		line string
		want int
		err  string
	}{
		{"usage_retention 30", 30, ""},
		{"usage_retention off", -1, ""},
		{"usage_retention 3660", 3660, ""},
		{"usage_retention 0", 0, "want a number of days or off"},
		{"usage_retention -3", 0, "must be 1 to 3660 days"},
		{"usage_retention 3661", 0, "must be 1 to 3660 days"},
		{"usage_retention many", 0, "want a number of days or off"},
		{"usage_retention", 0, "wants one argument"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("llm_ratelimit {\n" + c.line + "\n}"))
		switch {
		case c.err == "" && (err != nil || h.UsageRetention != c.want):
			t.Errorf("%s: %v, %d; want %d", c.line, err, h.UsageRetention, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want an error with %q", c.line, err, c.err)
		}
	}
	if err := (&Handler{UsageRetention: -2}).Validate(); err == nil {
		t.Error("usage_retention -2 in JSON is valid")
	}
}

// usage_retention off counts nothing: the zone has no rows.
func TestUsageRetentionOffRecordsNothing(t *testing.T) {
	mustLoad(t, "zone usage-off\nrpm 1000\nusage_retention off")
	if r := send(t, "/v1/chat/completions", "sk-off", chatBody); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if rows := usageRows(t, "usage-off", today(), today()); len(rows) != 0 {
		t.Errorf("rows %+v, want none", rows)
	}
}
