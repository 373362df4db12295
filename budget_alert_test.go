package llmratelimit

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The budget alert tests subscribe the recorder of events_recorder_test.go
// to llm_ratelimit.budget_threshold through the events global option, as
// an operator subscribes exec or any other events handler.

// alertZone is a zone name of its own for each test run (go test -count
// runs a test again in the same process, with the same storage).
func alertZone(name string) string { return fmt.Sprintf("%s%d", name, alertRuns.Add(1)) }

var alertRuns atomic.Int32

// alertGlobals subscribes the recorder to the budget alerts.
const alertGlobals = "\tevents {\n\t\ton llm_ratelimit.budget_threshold llm_ratelimit_test_recorder\n\t}"

// checkAlert checks an event against SPEC: its name and origin, its data
// fields exactly, and no raw key anywhere in it.
func checkAlert(t *testing.T, e recordedEvent, zoneName, rawKey, tier string, percent, spentUSD, budgetUSD float64, resetsAt time.Time) {
	t.Helper()
	if e.name != budgetThresholdEvent || e.origin != "http.handlers.llm_ratelimit" {
		t.Errorf("event %q from %q, want %s from http.handlers.llm_ratelimit", e.name, e.origin, budgetThresholdEvent)
	}
	fields := slices.Sorted(maps.Keys(e.data))
	if want := []string{"budget_usd", "key_id", "percent", "period", "resets_at", "spent_usd", "tier", "zone"}; !slices.Equal(fields, want) {
		t.Errorf("event data fields %v, want %v", fields, want)
	}
	keyID := hashKey(rawKey).id()
	for name, c := range map[string]struct{ got, want any }{
		"zone":       {e.data["zone"], zoneName},
		"key_id":     {e.data["key_id"], keyID},
		"tier":       {e.data["tier"], tier},
		"percent":    {e.data["percent"], percent},
		"budget_usd": {e.data["budget_usd"], budgetUSD},
		"period":     {e.data["period"], "daily"},
		"resets_at":  {e.data["resets_at"], resetsAt.UTC().Format(time.RFC3339)},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#v, want %#v", name, c.got, c.want)
		}
	}
	if spent, _ := e.data["spent_usd"].(float64); spentUSD >= 0 && math.Abs(spent-spentUSD) > 1e-12 {
		t.Errorf("spent_usd = %v, want %v", spent, spentUSD)
	}
	if want := fmt.Sprintf("%s %s %s %v %s", budgetThresholdEvent, zoneName, keyID, percent, resetsAt.UTC().Format(time.RFC3339)); e.expanded != want {
		t.Errorf("placeholders expand to %q, want %q", e.expanded, want)
	}
	for what, s := range map[string]string{"data": fmt.Sprint(e.data), "CloudEvent": e.cloud, "placeholders": e.expanded} {
		if strings.Contains(s, rawKey) || strings.Contains(s, "sk-") {
			t.Errorf("the event's %s shows the raw key: %s", what, s)
		}
	}
}

// Each threshold of a daily budget fires once, when the spend first
// reaches it, in the order reached, and never for the request the budget
// then refuses; after 00:00 UTC the spend starts over and each fires once
// more. The events carry SPEC's fields and no raw key.
func TestBudgetAlertFiresEachThresholdOncePerPeriod(t *testing.T) {
	const key = "sk-alert-daily-secret"
	zoneName := alertZone("alerts_daily")
	if err := load(t, siteConfigWith(alertGlobals, "zone "+zoneName+`
calibrate off
default_price input 1 output 2
tier gold {
	budget 0.01 daily
}
api_key `+key+` gold
budget_alert 80 50 100`)); err != nil {
		t.Fatal(err)
	}
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 1000, 500) }) // $0.002 a request
	const body = `{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
	seen := 0
	for period := range 2 {
		midnight := periodDaily.next(periodDaily.start(clk.Now()))
		for i, crosses := range []float64{0, 0, 50, 80, 100} { // spend $0.002, 0.004, 0.006, 0.008, 0.010
			if r := send(t, "/v1/chat/completions", key, body); r.status != 200 {
				t.Fatalf("period %d, request %d: %d %s", period, i+1, r.status, r.body)
			}
			if crosses != 0 {
				seen++
			}
			got := waitAlerts(t, seen, zoneName)
			if crosses != 0 {
				checkAlert(t, got[seen-1], zoneName, key, "gold", crosses, 0.002*float64(i+1), 0.01, midnight)
			}
		}
		if r := send(t, "/v1/chat/completions", key, body); r.status != 429 {
			t.Fatalf("period %d: a request past the budget: %d, want 429", period, r.status)
		}
		if got := percentsOf(waitAlerts(t, seen, zoneName)); !slices.Equal(got[len(got)-3:], []float64{50, 80, 100}) {
			t.Fatalf("period %d: thresholds fired %v", period, got)
		}
		clk.Advance(midnight.Sub(clk.Now()) + time.Minute)
	}
}

// A restart does not fire again what the period already crossed: the
// spend comes back from the ledger above 50 %, and only the next
// threshold fires.
func TestBudgetAlertDoesNotFireAgainAfterARestart(t *testing.T) {
	const key = "sk-alert-restart"
	zoneName := alertZone("alerts_restart")
	conf := "zone " + zoneName + "\ncalibrate off\ndefault_price input 1 output 2\nbudget 0.01 daily\nbudget_alert 50 80"
	if err := load(t, siteConfigWith(alertGlobals, conf)); err != nil {
		t.Fatal(err)
	}
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 1000, 500) }) // $0.002 a request
	for range 3 {
		if r := send(t, "/v1/chat/completions", key, chatBody); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	waitAlerts(t, 1, zoneName)
	// A config without the zone lets it go (its ledger is saved); the next
	// one makes it anew from the ledger, as a restart does.
	mustLoad(t, "zone "+zoneName+"_elsewhere")
	if err := load(t, siteConfigWith(alertGlobals, conf)); err != nil {
		t.Fatal(err)
	}
	if sp, ok := zoneOf(t, zoneName).spendOf(hashKey(key)); !ok || sp.spent != 6_000_000 {
		t.Fatalf("spend after the restart: %+v (%v), want $0.006 from the ledger", sp, ok)
	}
	if r := send(t, "/v1/chat/completions", key, chatBody); r.status != 200 { // $0.008: 80 %
		t.Fatalf("%d %s", r.status, r.body)
	}
	if got := percentsOf(waitAlerts(t, 2, zoneName)); !slices.Equal(got, []float64{50, 80}) {
		t.Fatalf("thresholds fired %v, want 50 before the restart and 80 after", got)
	}
}

// An events handler that blocks or fails never holds a request, nor the
// key's next one; a zone without budget_alert, or a config without the
// events app, emits nothing and serves as before.
func TestBudgetAlertNeverHoldsOrFailsARequest(t *testing.T) {
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 500, 250) }) // $0.001 a request
	const key = "sk-alert-hold"
	hold := make(chan struct{})
	recorderHold.Store(&hold)
	recorderFails.Store(true)
	t.Cleanup(func() {
		recorderHold.Store(nil)
		recorderFails.Store(false)
	})
	hz, nz, az := alertZone("alerts_hold"), alertZone("alerts_none"), alertZone("alerts_noapp")
	if err := load(t, siteConfigWith(alertGlobals, "zone "+hz+"\ncalibrate off\ndefault_price input 1 output 2\nbudget 0.01 daily\nbudget_alert 10 20 30")); err != nil {
		t.Fatal(err)
	}
	// The spend reaches 10 % on the first request, 20 on the second, 30 on
	// the third: each event's handler blocks, and every request is served.
	for i := range 4 {
		if r := send(t, "/v1/chat/completions", key, chatBody); r.status != 200 {
			t.Fatalf("request %d while the events handler blocks: %d %s", i+1, r.status, r.body)
		}
	}
	eventually(t, "the blocked handler to be given the three events", func() bool { return len(alertsOf(hz)) == 3 })
	close(hold)
	if got := percentsOf(waitAlerts(t, 3, hz)); !slices.Contains(got, 10) || !slices.Contains(got, 20) || !slices.Contains(got, 30) {
		t.Fatalf("thresholds fired %v", got)
	}

	for _, c := range []struct{ globals, conf string }{
		{alertGlobals, "zone " + nz + "\ncalibrate off\ndefault_price input 1 output 2\nbudget 0.01 daily"},
		{"", "zone " + az + "\ncalibrate off\ndefault_price input 1 output 2\nbudget 0.01 daily\nbudget_alert 10 20 30"},
	} {
		if err := load(t, siteConfigWith(c.globals, c.conf)); err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			if r := send(t, "/v1/chat/completions", key, chatBody); r.status != 200 {
				t.Fatalf("%s: request %d: %d %s", c.conf, i+1, r.status, r.body)
			}
		}
	}
	waitAlerts(t, 0, nz, az)
}

// Two gateway instances share one budget through Redis, and each
// threshold fires exactly once across them: on the instance whose settle
// carries the shared spend across it. Sent one at a time, alternately,
// the 5th request (instance A) crosses 50 %, the 8th and the 10th
// (instance B) 80 and 100 %. After 00:00 UTC, of requests sent at once
// to both, exactly one settle crosses each threshold once more.
func TestBudgetAlertFiresOnceAcrossTwoInstancesThroughRedis(t *testing.T) {
	srv := startRedis(t)
	// A clock of its own that starts now: the budget's hash expires a day
	// after its period, which must lie ahead of Redis's own clock.
	fc := &fakeClock{t: time.Now().UTC()}
	setClock(fc)
	t.Cleanup(func() { setClock(clk) })
	const key = "sk-alert-redis"
	// Two instances: each its own zone (own state, own sink), over the same
	// Redis key base {al:twoinst<n>}.
	instance := func(zoneName, prefix string) string {
		return fmt.Sprintf(`http://%s {
	llm_ratelimit {
		zone %s
		calibrate off
		default_price input 1 output 2
		budget 0.01 daily
		budget_alert 50 80 100
		store redis {
			address %s
			prefix %s
			fail closed
			timeout %s
		}
	}
	reverse_proxy %s
}
`, nextGateway(), zoneName, srv.addr, prefix, time.Duration(testRedisTimeout), upstream.Listener.Addr().String())
	}
	zoneA := alertZone("twoinst")
	zoneB := strings.TrimPrefix(zoneA, "two")
	a := instance(zoneA, "al:")
	addrA := pendingGateway
	b := instance(zoneB, "al:two")
	addrB := pendingGateway
	cfg := fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tstorage file_system %s\n%s\n}\n%s%s",
		testAdmin, testStorage, alertGlobals, a, b)
	if err := load(t, cfg); err != nil {
		t.Fatal(err)
	}
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 500, 250) }) // $0.001 a request
	post := func(i int) (int, error) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+[]string{addrA, addrB}[i%2]+"/v1/chat/completions", strings.NewReader(chatBody))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// check checks a period's three events, and says which instance
	// (zone) fired each threshold.
	check := func(period int, midnight time.Time) map[float64]string {
		got := waitAlerts(t, 3*(period+1), zoneA, zoneB)[3*period:]
		by := map[float64]string{}
		for _, e := range got {
			pct, _ := e.data["percent"].(float64)
			zn, _ := e.data["zone"].(string)
			if _, twice := by[pct]; twice {
				t.Errorf("period %d: %v %% fired twice", period, pct)
			}
			by[pct] = zn
			checkAlert(t, e, zn, key, "", pct, -1, 0.01, midnight)
			// The spend that crossed it: at or above the threshold, by
			// less than the request that crossed it.
			if s := e.data["spent_usd"].(float64); s < 0.01*pct/100-1e-12 || s >= 0.01*pct/100+0.001 {
				t.Errorf("period %d, %v %%: spent_usd %v", period, pct, s)
			}
		}
		return by
	}

	midnight := periodDaily.next(periodDaily.start(fc.Now()))
	for i := range 12 {
		status, err := post(i)
		if want := map[bool]int{true: 200, false: 429}[i < 10]; err != nil || status != want {
			t.Fatalf("request %d: %d %v, want %d", i+1, status, err, want)
		}
	}
	if by := check(0, midnight); !maps.Equal(by, map[float64]string{50: zoneA, 80: zoneB, 100: zoneB}) {
		t.Fatalf("thresholds fired by %v, want 50 by instance A (%s), 80 and 100 by B (%s)", by, zoneA, zoneB)
	}

	fc.Advance(midnight.Sub(fc.Now()) + time.Minute)
	midnight = periodDaily.next(midnight)
	var wg sync.WaitGroup
	var served atomic.Int32
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch status, err := post(i); {
			case err != nil:
				t.Error(err)
			case status == 200:
				served.Add(1)
			case status != 429:
				t.Errorf("status %d", status)
			}
		}()
	}
	wg.Wait()
	if served.Load() < 10 {
		t.Fatalf("%d requests served at once; the budget covers 10", served.Load())
	}
	by := check(1, midnight)
	if len(by) != 3 {
		t.Fatalf("thresholds fired %v after midnight, want 50, 80 and 100 once each", by)
	}
	t.Logf("%d served at once; thresholds fired by %v", served.Load(), by)
}

// While Redis cannot be reached, fail open decides and settles on this
// instance alone: that spend is not the key's, and alerts nothing.
func TestBudgetAlertStaysQuietWhileRedisIsDown(t *testing.T) {
	srv := startRedis(t)
	zoneName := alertZone("alerts_redis_down")
	if err := load(t, siteConfigWith(alertGlobals, "zone "+zoneName+`
calibrate off
default_price input 1 output 2
budget 0.01 daily
budget_alert 10 20
store redis {
	address `+srv.addr+`
	fail open
	timeout 500ms
}`)); err != nil {
		t.Fatal(err)
	}
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 500, 250) }) // $0.001 a request
	srv.stop()
	for i := range 3 {
		if r := send(t, "/v1/chat/completions", "sk-alert-down", chatBody); r.status != 200 {
			t.Fatalf("request %d, fail open: %d %s", i+1, r.status, r.body)
		}
	}
	if sp, ok := zoneOf(t, zoneName).spendOf(hashKey("sk-alert-down")); !ok || sp.spent != 3_000_000 {
		t.Fatalf("spend settled on this instance: %+v (%v), want $0.003", sp, ok)
	}
	waitAlerts(t, 0, zoneName)
}

// budget_alert in the Caddyfile becomes the handler's budget_alert; a
// threshold out of range or given twice, or thresholds without a budget,
// are refused with the message Validate gives a JSON config.
func TestBudgetAlertCaddyfile(t *testing.T) {
	out, err := adaptCaddyfileForTest(":8080 {\n\tllm_ratelimit {\n\t\tdefault_price input 1 output 2\n\t\tbudget 5 daily\n\t\tbudget_alert 50 80% 100\n\t}\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"budget_alert":[50,80,100]`) {
		t.Fatalf("adapted JSON has no budget_alert [50,80,100]: %s", out)
	}
	for _, c := range []struct {
		line string
		json []float64
		want string
	}{
		{"budget_alert 0", []float64{0}, "budget_alert: a threshold must be a percent above 0 and at most 1000, not 0"},
		{"budget_alert 50 1001", []float64{50, 1001}, "not 1001"},
		{"budget_alert 50 80 50", []float64{50, 80, 50}, "budget_alert: threshold 50 given twice"},
		{"budget_alert NaN", []float64{math.NaN()}, "not NaN"},
	} {
		h := Handler{DefaultPrice: &Price{Input: 1, Output: 2}, Budget: &Budget{USD: 5, Period: "daily"}, BudgetAlert: c.json}
		jsonErr := h.Validate()
		_, cfErr := adaptCaddyfileForTest(":8080 {\n\tllm_ratelimit {\n\t\t" + c.line + "\n\t}\n}\n")
		for what, err := range map[string]error{"Validate": jsonErr, "Caddyfile": cfErr} {
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %s error %v, want %q", c.line, what, err, c.want)
			}
		}
	}
	for _, line := range []string{"budget_alert", "budget_alert half"} {
		if _, err := adaptCaddyfileForTest(":8080 {\n\tllm_ratelimit {\n\t\t" + line + "\n\t}\n}\n"); err == nil || !strings.Contains(err.Error(), "Caddyfile:3") {
			t.Errorf("%s: %v, want an error at Caddyfile:3", line, err)
		}
	}
	h := Handler{DefaultPrice: &Price{Input: 1, Output: 2}, BudgetAlert: []float64{50}}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "budget_alert needs a budget") {
		t.Errorf("budget_alert without a budget: %v", err)
	}
}

// Thresholds resolve to the spend that reaches them, 100 % to the budget
// exactly, and a settle crosses those in (before, after].
func TestBudgetAlertThresholdArithmetic(t *testing.T) {
	sc := spendConfig{budgets: map[string]*budget{"": (&Budget{USD: 0.03, Period: "daily"}).resolve()}}
	sc.resolveAlerts([]float64{100, 33.3, 50})
	b := sc.budgets[""]
	if want := []alertAt{{33.3, 9_990_000}, {50, 15_000_000}, {100, 30_000_000}}; !slices.Equal(b.alerts, want) {
		t.Fatalf("thresholds %v, want %v", b.alerts, want)
	}
	for _, c := range []struct {
		before, after int64
		want          bool
	}{
		{0, 9_989_999, false}, {0, 9_990_000, true}, {9_990_000, 14_999_999, false},
		{14_999_999, 15_000_000, true}, {15_000_000, 29_999_999, false}, {29_999_999, 40_000_000, true},
		{30_000_000, 90_000_000, false}, {5, 5, false},
	} {
		if got := b.crossed(c.before, c.after); got != c.want {
			t.Errorf("crossed(%d, %d) = %v, want %v", c.before, c.after, got, c.want)
		}
	}
}

// BenchmarkAdmitSettleBudget is one admission and its settle for a key
// with a budget, without and with budget_alert (thresholds the spend does
// not reach in the run, as for all but one settle in a period).
func BenchmarkAdmitSettleBudget(b *testing.B) {
	for _, alerts := range [][]float64{nil, {50, 80, 100}} {
		b.Run(fmt.Sprintf("budget_alert=%v", alerts), func(b *testing.B) {
			z := newZone("bench-admit-budget")
			defer z.Destruct()
			sc := spendConfig{budgets: map[string]*budget{"": (&Budget{USD: 1e9, Period: "monthly"}).resolve()}}
			sc.resolveAlerts(alerts)
			sa := &spendAsk{p: price{in: 2500, out: 10000, cached: 2500, write: 2500}, b: sc.budgets[""], label: calibStar}
			q := ask{kh: hashKey("sk-one"), lim: Limits{RPM: 1 << 40, TPM: 1 << 50, ITPM: 1 << 50, OTPM: 1 << 50, Concurrent: 1 << 20},
				d: demand{in: 300, out: 512}, spend: sa}
			u := usage{Input: 280, Read: 280, Output: 40}
			t0 := time.Now().UnixNano()
			b.ReportAllocs()
			b.ResetTimer()
			var tk ticket
			var dec decision
			for i := 0; i < b.N; i++ {
				z.admitInto(&q, t0+int64(i), false, false, &tk, &dec)
				if !dec.ok {
					b.Fatal("rejected")
				}
				tk.finish(t0+int64(i), &u, false)
			}
		})
	}
}
