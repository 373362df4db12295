package llmratelimit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The Grafana dashboard in dashboards/ is proven against a real
// Prometheus: it scrapes a real gateway under a short mixed load
// (allowed, rejected, queued, retried, streamed, priced), and every panel's
// query must return data. promtool checks the gateway's /metrics and the
// suggested alert rules.
func TestDashboardPanelsReturnDataFromARealPrometheus(t *testing.T) {
	needTool(t, "prometheus", "prometheus")
	needTool(t, "promtool", "prometheus")

	// promtool: the alert rules, and the exposition of our metrics.
	if out, err := exec.Command("promtool", "check", "rules", "dashboards/rules.yml").CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}

	mustLoad(t, `zone prom
rpm 4
max_wait 2s
calibrate on
default_price input 2 output 8
budget 100 daily
upstream a {
	rpm 1000
	header_up Authorization "Bearer sk-provider-a"
}
upstream b {
	rpm 1000
	header_up Authorization "Bearer sk-provider-b"
	priority 1
}`)
	var calls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch n := calls.Add(1); {
		case n == 1: // the first call: the provider says slow down; retried on the other account
			w.Header().Set("Retry-After", "1")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}`)
		case bytes.Contains(b, []byte(`"stream":true`)):
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"+
				"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n")
		default:
			chatCompletion(w, r, 12, 3)
		}
	})
	const body = `{"model":"gpt-4o","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`
	const stream = `{"model":"gpt-4o","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`
	for i := range 8 { // rpm 4: the first ones pass, then the queue, then rejections
		b := body
		if i%2 == 1 {
			b = stream
		}
		send(t, "/v1/chat/completions", fmt.Sprintf("sk-prom-%d", i%2), b)
	}
	metrics := func() string {
		resp, err := client.Get("http://" + testAdmin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	exposition := metrics()
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(exposition)
	out, _ := check.CombinedOutput() // it also judges Caddy's and Go's own metrics
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "caddy_llm_ratelimit") {
			t.Errorf("promtool check metrics: %s", line)
		}
	}

	// A real Prometheus scraping the gateway every second.
	dir := t.TempDir()
	promAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: gateway
    static_configs:
      - targets: [%q]
`, testAdmin)), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "prometheus", "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	query := func(expr string) (int, error) {
		resp, err := client.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(expr))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
			Error string `json:"error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return 0, err
		}
		if r.Status != "success" {
			return 0, fmt.Errorf("%s", r.Error)
		}
		return len(r.Data.Result), nil
	}
	// Enough scrapes for rate() over the load, with traffic in between.
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, err := query(`count_over_time(caddy_llm_ratelimit_in_flight{zone="prom"}[1m])`)
		if err == nil && n > 0 {
			if v, _ := query(`caddy_llm_ratelimit_in_flight{zone="prom"} and on() count_over_time(caddy_llm_ratelimit_in_flight{zone="prom"}[1m]) >= 4`); v > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus did not scrape the gateway within 60 s (%v)", err)
		}
		send(t, "/v1/chat/completions", "sk-prom-late", body)
		time.Sleep(500 * time.Millisecond)
	}

	raw, err := os.ReadFile("dashboards/llm-ratelimit.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct{ Name string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
	}
	if !vars["datasource"] || !vars["zone"] {
		t.Errorf("template variables %v, want datasource and zone", vars)
	}
	if len(dash.Panels) < 10 {
		t.Fatalf("%d panels", len(dash.Panels))
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			expr := strings.NewReplacer("$__rate_interval", "1m", "$zone", "prom").Replace(tg.Expr)
			n, err := query(expr)
			t.Logf("panel %-44q %d series", p.Title, n)
			if err != nil || n == 0 {
				t.Errorf("panel %q: %q returned %d series (%v)", p.Title, expr, n, err)
			}
		}
	}
}
