package llmratelimit

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// scrape returns the admin endpoint's /metrics text.
func scrape(t *testing.T) string {
	t.Helper()
	resp, err := client.Get("http://" + testAdmin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// metricValue finds one sample: name{labels} value. Labels must match in
// Prometheus's (sorted) order.
func metricValue(t *testing.T, text, name, labels string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+"{"+labels+"}") + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no sample %s{%s} in /metrics", name, labels)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("sample %s{%s}: %v", name, labels, err)
	}
	return v
}

func TestMetricsCountAndSurviveReloads(t *testing.T) {
	mustLoad(t, "zone metrics\nrpm 3")
	var calls atomic.Int32
	setUpstream(t, after429(&calls, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 8, 2) }))
	send(t, "/v1/chat/completions", "sk-metrics", chatBody)       // retried once, then allowed
	send(t, "/v1/chat/completions", "sk-metrics", chatBody)       // allowed
	send(t, "/v1/chat/completions", "sk-metrics", chatBody)       // allowed
	send(t, "/v1/chat/completions", "sk-metrics", chatBody)       // rejected
	send(t, "/v1/chat/completions", "", chatBody)                 // unauthorized
	send(t, "/v1/chat/completions", "sk-metrics", `{"messages":`) // invalid

	text := scrape(t)
	for _, tc := range []struct {
		name, labels string
		want         float64
	}{
		{"caddy_llm_ratelimit_requests_total", `outcome="allowed",zone="metrics"`, 3},
		{"caddy_llm_ratelimit_requests_total", `outcome="rejected",zone="metrics"`, 1},
		{"caddy_llm_ratelimit_requests_total", `outcome="unauthorized",zone="metrics"`, 1},
		{"caddy_llm_ratelimit_requests_total", `outcome="invalid",zone="metrics"`, 1},
		{"caddy_llm_ratelimit_requests_total", `outcome="queued",zone="metrics"`, 0},
		{"caddy_llm_ratelimit_requests_total", `outcome="dry_run_rejected",zone="metrics"`, 0},
		{"caddy_llm_ratelimit_tokens_total", `kind="actual_input",zone="metrics"`, 24},
		{"caddy_llm_ratelimit_tokens_total", `kind="actual_output",zone="metrics"`, 6},
		{"caddy_llm_ratelimit_tokens_total", `kind="reserved_output",zone="metrics"`, 300},
		{"caddy_llm_ratelimit_upstream_retries_total", `status="429",zone="metrics"`, 1},
		{"caddy_llm_ratelimit_keys", `zone="metrics"`, 1},
		{"caddy_llm_ratelimit_in_flight", `zone="metrics"`, 0},
		{"caddy_llm_ratelimit_estimate_ratio_count", `zone="metrics"`, 3},
		{"caddy_llm_ratelimit_queue_wait_seconds_count", `zone="metrics"`, 0},
	} {
		if got := metricValue(t, text, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s{%s} = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if est := metricValue(t, text, "caddy_llm_ratelimit_tokens_total", `kind="estimated_input",zone="metrics"`); est < 3*8*0.8 || est > 3*8*1.5 {
		t.Errorf("estimated_input %v for three ~8-token prompts", est)
	}

	// A reload with changed limits: the counters go on from where they were.
	mustLoad(t, "zone metrics\nrpm 100")
	send(t, "/v1/chat/completions", "sk-metrics-2", chatBody)
	send(t, "/v1/chat/completions", "sk-metrics-3", chatBody)
	text = scrape(t)
	if got := metricValue(t, text, "caddy_llm_ratelimit_requests_total", `outcome="allowed",zone="metrics"`); got != 5 {
		t.Errorf("allowed after reload = %v, want 5 (3 before + 2 after)", got)
	}
	if got := metricValue(t, text, "caddy_llm_ratelimit_keys", `zone="metrics"`); got != 3 {
		t.Errorf("keys after reload = %v, want 3", got)
	}
}

func TestNoRawKeyInLogsOrMetrics(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cfg := siteConfigWith(fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}", logFile), "zone secrets\nrpm 1\napi_key sk-secret-known gold\ntier gold {\n\trpm 1\n}")
	if err := load(t, cfg); err != nil {
		t.Fatal(err)
	}
	keys := []string{"sk-secret-known", "sk-secret-other", "sk-secret-third"}
	for _, k := range keys {
		send(t, "/v1/chat/completions", k, chatBody)
		send(t, "/v1/chat/completions", k, chatBody) // over rpm: an info line
	}
	mustLoad(t, "zone secrets_after") // flushes and closes the log file
	logs, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	text := scrape(t)
	for _, k := range keys {
		if strings.Contains(string(logs), k) {
			t.Errorf("the log holds the raw key %q", k)
		}
		if strings.Contains(text, k) {
			t.Errorf("/metrics holds the raw key %q", k)
		}
		if !strings.Contains(string(logs), `"key_id":"`+hashKey(k).id()+`"`) {
			t.Errorf("the log has no line with key_id %s", hashKey(k).id())
		}
	}
	if !strings.Contains(string(logs), `"outcome":"rejected"`) {
		t.Errorf("no rejection logged:\n%s", logs)
	}
}

func getJSON(t *testing.T, method, path string, v any) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+testAdmin+path, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil && resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

func TestStatsEndpointShowsTheLimiterState(t *testing.T) {
	mustLoad(t, "zone stats\nrpm 10\ntpm 100000\napi_key sk-stats gold\ntier gold {\n\trpm 20\n}\nupstream {\n\trpm 1000\n}")
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Hold") != "" {
			arrived <- struct{}{}
			<-release
		}
		chatCompletion(w, r, 10, 5)
	})
	r1 := send(t, "/v1/chat/completions", "sk-stats", chatBody)
	send(t, "/v1/chat/completions", "sk-other", chatBody)
	held := make(chan reply, 1)
	req := newReq(t, "/v1/chat/completions", "sk-stats", chatBody)
	req.Header.Set("X-Hold", "1")
	go func() { held <- sendReq(t, req) }()
	<-arrived

	id := hashKey("sk-stats").id()
	var ks KeyStats
	if code := getJSON(t, http.MethodGet, "/llm_ratelimit/stats/stats/"+id, &ks); code != 200 {
		t.Fatalf("GET key: %d", code)
	}
	if ks.KeyID != id || ks.Tier != "gold" || ks.InFlight != 1 || ks.RequestsTotal != 2 || ks.RequestsLastMinute != 2 {
		t.Errorf("key stats %+v", ks)
	}
	rem1 := intHeader(t, r1, "x-ratelimit-remaining-requests")
	if ks.RPMAvailable == nil || *ks.RPMAvailable != int64(rem1-1) {
		t.Errorf("rpm_available %v, want %d (one more request than the first response saw)", ks.RPMAvailable, rem1-1)
	}
	if ks.TPMAvailable == nil || *ks.TPMAvailable > 100000-15 || *ks.TPMAvailable < 100000-15-200 {
		t.Errorf("tpm_available %v: one settled request (15) and one held reservation", ks.TPMAvailable)
	}
	if ks.InputTokensTotal != 10 || ks.OutputTokensTotal != 5 {
		t.Errorf("totals in=%d out=%d, want the settled request's 10 and 5", ks.InputTokensTotal, ks.OutputTokensTotal)
	}

	var all Stats
	if code := getJSON(t, http.MethodGet, "/llm_ratelimit/stats", &all); code != 200 {
		t.Fatalf("GET all: %d", code)
	}
	z, ok := all.Zones["stats"]
	if !ok || len(z.Keys) != 2 || z.Keys[0].KeyID > z.Keys[1].KeyID {
		t.Fatalf("zone stats %+v", z)
	}
	if z.Upstream.RPMAvailable == nil || *z.Upstream.RPMAvailable != 997 || z.Upstream.InFlight != 1 || z.QueueLength != 0 {
		t.Errorf("upstream stats %+v", z.Upstream)
	}
	close(release)
	<-held

	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/llm_ratelimit/stats", 405},
		{http.MethodDelete, "/llm_ratelimit/stats/stats/" + id, 405},
		{http.MethodGet, "/llm_ratelimit/stats/stats/000000000000", 404},
		{http.MethodGet, "/llm_ratelimit/stats/nozone/" + id, 404},
		{http.MethodGet, "/llm_ratelimit/stats/stats", 404},
	} {
		if code := getJSON(t, tc.method, tc.path, nil); code != tc.want {
			t.Errorf("%s %s = %d, want %d", tc.method, tc.path, code, tc.want)
		}
	}
}

func TestDryRunCountsTheRejectionsItWouldMake(t *testing.T) {
	traffic := func(zone string) (statuses []int) {
		for i := 0; i < 12; i++ {
			key := fmt.Sprintf("sk-dry-%d", i%2)
			statuses = append(statuses, send(t, "/v1/chat/completions", key, chatBody).status)
			clk.Advance(5 * time.Second)
		}
		return statuses
	}
	mustLoad(t, "zone dry_enforce\nrpm 3")
	enforced := traffic("dry_enforce")
	mustLoad(t, "zone dry_observe\nrpm 3\ndry_run")
	observed := traffic("dry_observe")
	rejected := 0
	for _, s := range enforced {
		if s == 429 {
			rejected++
		}
	}
	for _, s := range observed {
		if s != 200 {
			t.Fatalf("dry_run answered %d", s)
		}
	}
	text := scrape(t)
	if rejected == 0 {
		t.Fatal("the traffic never went over the limit: the test proves nothing")
	}
	if got := metricValue(t, text, "caddy_llm_ratelimit_requests_total", `outcome="rejected",zone="dry_enforce"`); int(got) != rejected {
		t.Errorf("enforced zone counted %v rejections, its clients saw %d", got, rejected)
	}
	if got := metricValue(t, text, "caddy_llm_ratelimit_requests_total", `outcome="dry_run_rejected",zone="dry_observe"`); int(got) != rejected {
		t.Errorf("dry_run counted %v would-be rejections, the enforced zone made %d", got, rejected)
	}
}
