package llmratelimit

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// keyInfoConfig is a zone with key_info, every kind of limit, a tier, a
// price and a daily budget. The upstream's usage is 10 input and 5 output
// tokens a request: at $2 and $8 per million, $0.00006.
func keyInfoConfig(zone string) string {
	return "zone " + zone + "\n" + `key_info
rpm 10
tpm 100000
concurrent 4
tier pro {
	rpm 20
	itpm 50000
	otpm 20000
}
api_key sk-ki-pro pro
default_price input 2 output 8
budget 1 daily`
}

// getKeyInfo sends GET path with a bearer key (none for "").
func getKeyInfo(t *testing.T, path, key string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+gateway+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return sendReq(t, req)
}

// keyInfoOf is a 200 answer of key_info, decoded; it checks that the
// answer has exactly SPEC's fields.
func keyInfoOf(t *testing.T, r reply) keyInfoJSON {
	t.Helper()
	if r.status != 200 || r.header.Get("Content-Type") != "application/json" || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("key_info: %d %v %s", r.status, r.header, r.body)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.body), &raw); err != nil {
		t.Fatalf("key_info is not a JSON object: %v: %s", err, r.body)
	}
	fields := func(m map[string]json.RawMessage) string {
		var names []string
		for k := range m {
			names = append(names, k)
		}
		sort.Strings(names)
		return strings.Join(names, " ")
	}
	want := map[string]string{
		"":            "budget key_id limits remaining resets_at tier usage_today",
		"limits":      "concurrent itpm otpm rpm tpm",
		"remaining":   "concurrent input_tokens output_tokens requests tokens",
		"resets_at":   "input_tokens output_tokens requests tokens",
		"usage_today": "cost_usd input_tokens output_tokens requests",
		"budget":      "period remaining_usd resets_at spent_usd usd",
	}
	if got := fields(raw); got != want[""] {
		t.Errorf("key_info's fields: %s, want %s", got, want[""])
	}
	for name, w := range want {
		var sub map[string]json.RawMessage
		if name == "" || string(raw[name]) == "null" {
			continue
		}
		if err := json.Unmarshal(raw[name], &sub); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := fields(sub); got != w {
			t.Errorf("key_info's %s fields: %s, want %s", name, got, w)
		}
	}
	var ki keyInfoJSON
	if err := json.Unmarshal([]byte(r.body), &ki); err != nil {
		t.Fatal(err)
	}
	return ki
}

// ceilSecond is t rounded up to the second, as resets_at says it.
func ceilSecond(t time.Time) string {
	return t.Add(time.Second - 1).UTC().Truncate(time.Second).Format(time.RFC3339)
}

func i64(v int64) *int64 { return &v }

func str(v string) *string { return &v }

// After three requests with known usage, key_info shows the key's own
// limits, what is left of each bucket, when each is full again, the
// budget and today's usage; the buckets refill on the clock.
func TestKeyInfoShowsTheKeysQuotaAfterKnownTraffic(t *testing.T) {
	mustLoad(t, keyInfoConfig("keyinfo-traffic"))
	var calls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		chatCompletion(w, r, 10, 5)
	})
	for i := range 3 {
		if r := send(t, "/v1/chat/completions", "sk-ki-pro", chatBody); r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	at := clk.Now()
	got := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-pro"))
	const cost = 3 * 60e-6
	want := keyInfoJSON{
		KeyID: hashKey("sk-ki-pro").id(), Tier: "pro",
		// The tier sets rpm, itpm and otpm, and inherits tpm and concurrent.
		Limits:    keyInfoLimits{RPM: i64(20), TPM: i64(100000), ITPM: i64(50000), OTPM: i64(20000), Concurrent: i64(4)},
		Remaining: keyInfoRemaining{Requests: i64(17), Tokens: i64(100000 - 45), InputTokens: i64(50000 - 30), OutputTokens: i64(20000 - 15), Concurrent: i64(4)},
		// 3 requests at 20 a minute refill in 9 s; 45 tokens at 100000 a
		// minute in 27 ms.
		ResetsAt: keyInfoResets{Requests: str(ceilSecond(at.Add(9 * time.Second))), Tokens: str(ceilSecond(at.Add(27 * time.Millisecond))),
			InputTokens: str(ceilSecond(at.Add(36 * time.Millisecond))), OutputTokens: str(ceilSecond(at.Add(45 * time.Millisecond)))},
		Budget: &keyInfoBudget{USD: 1, Period: "daily", SpentUSD: cost, RemainingUSD: 1 - cost,
			ResetsAt: periodDaily.next(periodDaily.start(at)).Format(time.RFC3339)},
		UsageToday: keyInfoUsage{Requests: 3, InputTokens: 30, OutputTokens: 15, CostUSD: cost},
	}
	if !sameUSD(got.Budget.SpentUSD, cost) || !sameUSD(got.Budget.RemainingUSD, 1-cost) || !sameUSD(got.UsageToday.CostUSD, cost) {
		t.Errorf("spend: budget %+v, usage today %+v; want $%v spent", got.Budget, got.UsageToday, cost)
	}
	got.Budget.SpentUSD, got.Budget.RemainingUSD, got.UsageToday.CostUSD = want.Budget.SpentUSD, want.Budget.RemainingUSD, want.UsageToday.CostUSD
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("key_info after 3 requests:\n got %s\nwant %s", g, w)
	}

	// A request in flight holds one concurrency slot.
	entered, release := make(chan struct{}), make(chan struct{})
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		chatCompletion(w, r, 10, 5)
	})
	done := make(chan reply)
	go func() { done <- send(t, "/v1/chat/completions", "sk-ki-pro", chatBody) }()
	<-entered
	if ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-pro")); *ki.Remaining.Concurrent != 3 || ki.UsageToday.Requests != 4 {
		t.Errorf("with a request in flight: remaining %+v, usage today %+v; want 3 slots, 4 requests", ki.Remaining, ki.UsageToday)
	}
	close(release)
	if r := <-done; r.status != 200 {
		t.Fatalf("the request in flight: %d %s", r.status, r.body)
	}

	// 4 requests; 6 s later 2 came back.
	clk.Advance(6 * time.Second)
	if ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-pro")); *ki.Remaining.Requests != 18 || *ki.Remaining.Concurrent != 4 {
		t.Errorf("6 s after 4 requests at rpm 20: remaining %+v, want 18 requests, 4 slots", ki.Remaining)
	}
}

// Asking costs nothing: ten GETs change no bucket, no count, no spend and
// no metric, and none reaches the upstream.
func TestKeyInfoTenTimesChangesNothing(t *testing.T) {
	mustLoad(t, keyInfoConfig("keyinfo-ten"))
	var calls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		chatCompletion(w, r, 10, 5)
	})
	for range 2 {
		send(t, "/v1/chat/completions", "sk-ki-pro", chatBody)
	}
	z := zoneOf(t, "keyinfo-ten")
	statsBefore := keyTotals(t, "keyinfo-ten", "sk-ki-pro")
	allowed := testutil.ToFloat64(z.m.outcomes[outcomeAllowed])
	first := getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-pro")
	keyInfoOf(t, first)
	for i := range 10 {
		if r := getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-pro"); r.body != first.body {
			t.Fatalf("GET %d changed the answer:\n%s\nthen\n%s", i+2, first.body, r.body)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("the upstream saw %d requests, want the 2 chat requests only", n)
	}
	if st := keyTotals(t, "keyinfo-ten", "sk-ki-pro"); !reflect.DeepEqual(st, statsBefore) {
		t.Errorf("the key's stats changed:\n%+v\n%+v", statsBefore, st)
	}
	if a := testutil.ToFloat64(z.m.outcomes[outcomeAllowed]); a != allowed {
		t.Errorf("requests_total{outcome=allowed} went from %v to %v", allowed, a)
	}
}

// usage_today counts since 00:00 UTC: it survives the sweeper dropping
// the idle key, and starts again at midnight, with a daily budget.
func TestKeyInfoUsageTodayRollsAtMidnightUTC(t *testing.T) {
	mustLoad(t, keyInfoConfig("keyinfo-day"))
	// Start the day's traffic at 10:00 UTC of the next day.
	nowT := clk.Now()
	clk.Advance(periodDaily.next(periodDaily.start(nowT)).Add(10 * time.Hour).Sub(nowT))
	for range 2 {
		send(t, "/v1/chat/completions", "sk-ki-day", chatBody)
	}
	// Idle: the sweeper drops the key's buckets, not its day.
	clk.Advance(2 * time.Minute)
	z := zoneOf(t, "keyinfo-day")
	if z.sweep(clk.Now().UnixNano()) == 0 || z.keyCount() != 0 {
		t.Fatalf("the sweeper kept the idle key (%d keys)", z.keyCount())
	}
	if ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-day")); ki.UsageToday.Requests != 2 || ki.UsageToday.InputTokens != 20 || *ki.Remaining.Requests != 10 {
		t.Errorf("after the sweep: usage today %+v, remaining %+v; want 2 requests, 20 input tokens, a full bucket", ki.UsageToday, ki.Remaining)
	}
	send(t, "/v1/chat/completions", "sk-ki-day", chatBody)
	if ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-day")); ki.UsageToday.Requests != 3 || ki.UsageToday.OutputTokens != 15 {
		t.Errorf("back after the sweep: usage today %+v, want 3 requests, 15 output tokens", ki.UsageToday)
	}

	// 23:59:59: still today. 00:00:00: a new day, and a new budget period.
	nowT = clk.Now()
	midnight := periodDaily.next(periodDaily.start(nowT))
	clk.Advance(midnight.Add(-time.Second).Sub(nowT))
	if ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-day")); ki.UsageToday.Requests != 3 || !sameUSD(ki.Budget.SpentUSD, 3*60e-6) {
		t.Errorf("at 23:59:59: usage today %+v, budget %+v; want 3 requests", ki.UsageToday, ki.Budget)
	}
	clk.Advance(time.Second)
	ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-day"))
	if ki.UsageToday != (keyInfoUsage{}) || ki.Budget.SpentUSD != 0 || ki.Budget.ResetsAt != midnight.Add(24*time.Hour).Format(time.RFC3339) {
		t.Errorf("at 00:00:00 UTC: usage today %+v, budget %+v; want nothing yet", ki.UsageToday, ki.Budget)
	}
	send(t, "/v1/chat/completions", "sk-ki-day", chatBody)
	if ki := keyInfoOf(t, getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-day")); ki.UsageToday.Requests != 1 {
		t.Errorf("the new day's first request: usage today %+v", ki.UsageToday)
	}
}

// A key sees only itself: its own key_id, limits and usage, never another
// key's, and no raw key.
func TestKeyInfoShowsOnlyTheCallersKey(t *testing.T) {
	mustLoad(t, keyInfoConfig("keyinfo-other"))
	for range 3 {
		send(t, "/v1/chat/completions", "sk-ki-pro", chatBody)
	}
	r := getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-other")
	ki := keyInfoOf(t, r)
	if ki.KeyID != hashKey("sk-ki-other").id() || ki.Tier != "" || *ki.Limits.RPM != 10 || ki.Limits.ITPM != nil ||
		*ki.Remaining.Requests != 10 || ki.Remaining.InputTokens != nil || ki.ResetsAt.InputTokens != nil || ki.UsageToday != (keyInfoUsage{}) || ki.Budget.SpentUSD != 0 {
		t.Errorf("another key's key_info: %s", r.body)
	}
	for _, leak := range []string{"sk-ki-other", "sk-ki-pro", hashKey("sk-ki-pro").id(), sha256Hex("sk-ki-other")} {
		if strings.Contains(r.body, leak) {
			t.Errorf("key_info holds %q: %s", leak, r.body)
		}
	}
}

// The key is found as for any request: none, or one that no api_key names
// under require_known_keys, is a 401 in the zone's shape, and nothing
// reaches the upstream. Only GET and HEAD are answered; key_info off
// leaves the path to the upstream.
func TestKeyInfoAnswersOnlyAKnownKeysGet(t *testing.T) {
	var calls atomic.Int32
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		chatCompletion(w, r, 10, 5)
	})
	mustLoad(t, keyInfoConfig("keyinfo-401"))
	r := getKeyInfo(t, "/v1/llm_ratelimit/key", "")
	if e := r.errorBody(t); r.status != 401 || e.Error.Code == nil || *e.Error.Code != "invalid_api_key" {
		t.Errorf("no key: %d %s", r.status, r.body)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+gateway+"/v1/llm_ratelimit/key", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer sk-ki-pro")
	if r := sendReq(t, req); r.status != 405 || r.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d %v %s", r.status, r.header, r.body)
	}
	req, _ = http.NewRequest(http.MethodHead, "http://"+gateway+"/v1/llm_ratelimit/key", nil)
	req.Header.Set("Authorization", "Bearer sk-ki-pro")
	if r := sendReq(t, req); r.status != 200 || r.header.Get("Content-Type") != "application/json" {
		t.Errorf("HEAD: %d %v", r.status, r.header)
	}

	mustLoad(t, "zone keyinfo-known\nformat anthropic\nrequire_known_keys\nkey_info /me\nrpm 10\ntier t {\nrpm 5\n}\napi_key sk-ki-known t")
	for _, key := range []string{"", "sk-ki-unknown"} {
		r := getKeyInfo(t, "/me", key)
		if e := r.errorBody(t); r.status != 401 || e.Type != "error" || e.Error.Type != "authentication_error" || strings.Contains(r.body, "sk-ki-unknown") {
			t.Errorf("key %q under require_known_keys: %d %s", key, r.status, r.body)
		}
	}
	if ki := keyInfoOf(t, getKeyInfo(t, "/me", "sk-ki-known")); ki.Tier != "t" || *ki.Limits.RPM != 5 || ki.Budget != nil || ki.Limits.TPM != nil || ki.Limits.Concurrent != nil || ki.Remaining.Concurrent != nil {
		t.Errorf("the known key: %+v", ki)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the upstream saw %d requests", n)
	}

	mustLoad(t, "zone keyinfo-off\nrpm 10")
	if r := getKeyInfo(t, "/v1/llm_ratelimit/key", "sk-ki-pro"); r.status != 200 || calls.Load() != 1 {
		t.Errorf("key_info off: %d %s, upstream calls %d; want the upstream's answer", r.status, r.body, calls.Load())
	}
}

func TestKeyInfoCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		line, want, err string
	}{
		{"key_info", "/v1/llm_ratelimit/key", ""},
		{"key_info /me/quota", "/me/quota", ""},
		{"key_info me", "", "must start with /"},
		{"key_info /v1/chat/completions", "", "is an LLM API path"},
		{"key_info /a /b", "", "at most one argument"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("llm_ratelimit {\n" + tc.line + "\n}"))
		switch {
		case tc.err == "" && (err != nil || h.KeyInfo != tc.want):
			t.Errorf("%s: %q, %v; want %q", tc.line, h.KeyInfo, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: %v, want an error with %q", tc.line, err, tc.err)
		}
	}
	if err := (&Handler{KeyInfo: "me"}).Validate(); err == nil {
		t.Error("JSON key_info \"me\" is valid")
	}
}

// keyInfoVia is key_info answered by one handler (a gateway instance).
func keyInfoVia(t *testing.T, h *Handler, key string) (*httptest.ResponseRecorder, keyInfoJSON) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/v1/llm_ratelimit/key", nil)
	r.Header.Set("Authorization", "Bearer "+key)
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, nextJSON{}); err != nil {
		t.Fatal(err)
	}
	var ki keyInfoJSON
	if w.Code == 200 {
		if err := json.Unmarshal(w.Body.Bytes(), &ki); err != nil {
			t.Fatal(err)
		}
	}
	return w, ki
}

// redisSnapshot is every key of a Redis with its serialized value: what a
// read-only call must leave as it is (TTLs aside).
func redisSnapshot(t *testing.T, c *redis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		v, err := c.Dump(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[k] = v
	}
	return out
}

// With store redis the figures are Redis's: key_info on one instance shows
// the traffic another served (buckets, slots, budget, usage today), ten
// GETs change no Redis key, another key sees only itself, and a Redis that
// cannot be reached is a 503 rather than figures of one instance.
func TestKeyInfoOnRedisShowsEveryInstancesTraffic(t *testing.T) {
	setClock(nil) // Redis refills on its own clock
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	hs := gatewayInstances(t, srv.addr, 2, Handler{KeyInfo: defaultKeyInfoPath,
		Limits:       Limits{RPM: 60, TPM: 60000, ITPM: 30000, OTPM: 6000, Concurrent: 5},
		DefaultPrice: &Price{Input: 2, Output: 8}, Budget: &Budget{USD: 1, Period: "daily"}})
	const key = "sk-ki-redis"
	start := time.Now()
	for i := range 3 {
		if w := serveOnce(t, hs[0], key, chatBody); w.Code != 200 {
			t.Fatalf("request %d on instance 0: %d %s", i, w.Code, w.Body)
		}
	}
	asked := time.Now()
	w, ki := keyInfoVia(t, hs[1], key)
	answered := time.Now()
	elapsed := answered.Sub(start).Seconds()
	if w.Code != 200 {
		t.Fatalf("key_info on instance 1: %d %s", w.Code, w.Body)
	}
	// nextJSON's usage: 260 input and 9 output tokens a request, $0.000592.
	const cost = 3 * (260*2 + 9*8) / 1e6
	within := func(what string, got *int64, used, limit int64) {
		t.Helper()
		refill := int64(elapsed*float64(limit)/60) + 1
		if got == nil || *got < limit-used || *got > limit-used+refill {
			t.Errorf("remaining %s: %v, want %d (+%d refilled in %.3fs)", what, got, limit-used, refill, elapsed)
		}
	}
	within("requests", ki.Remaining.Requests, 3, 60)
	within("tokens", ki.Remaining.Tokens, 3*269, 60000)
	within("input_tokens", ki.Remaining.InputTokens, 3*260, 30000)
	within("output_tokens", ki.Remaining.OutputTokens, 3*9, 6000)
	if ki.KeyID != hashKey(key).id() || *ki.Limits.RPM != 60 || *ki.Remaining.Concurrent != 5 ||
		ki.UsageToday.Requests != 3 || ki.UsageToday.InputTokens != 3*260 || ki.UsageToday.OutputTokens != 3*9 || !sameUSD(ki.UsageToday.CostUSD, cost) ||
		ki.Budget == nil || !sameUSD(ki.Budget.SpentUSD, cost) || !sameUSD(ki.Budget.RemainingUSD, 1-cost) {
		t.Errorf("key_info on instance 1 after 3 requests on instance 0: %s", w.Body)
	}
	// The requests bucket is full again 3 s after the first request,
	// rounded up to the second; key_info counts from its own now, which
	// comes before Redis's TIME by at most the time the call took.
	least, most := start.Add(3*time.Second-answered.Sub(asked)), answered.Add(4*time.Second)
	if reset, err := time.Parse(time.RFC3339, *ki.ResetsAt.Requests); err != nil || reset.Before(least) || reset.After(most) {
		t.Errorf("resets_at.requests %q (%v): want 3 s after the first request, between %v and %v", *ki.ResetsAt.Requests, err, least, most)
	}

	// A request in flight on instance 0 holds a slot on instance 1's view.
	entered, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(chatBody))
		r.Header.Set("Authorization", "Bearer "+key)
		_ = hs[0].ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			close(entered)
			<-release
			return nextJSON{}.ServeHTTP(w, r)
		}))
	}()
	<-entered
	if _, ki := keyInfoVia(t, hs[1], key); *ki.Remaining.Concurrent != 4 || ki.UsageToday.Requests != 4 {
		t.Errorf("with a request in flight on instance 0: remaining %+v, usage today %+v", ki.Remaining, ki.UsageToday)
	}
	close(release)
	<-done

	// Ten GETs, on either instance, write nothing to Redis.
	c := redis.NewClient(&redis.Options{Addr: srv.addr})
	defer c.Close()
	before := redisSnapshot(t, c)
	for i := range 10 {
		if w, _ := keyInfoVia(t, hs[i%2], key); w.Code != 200 {
			t.Fatalf("GET %d: %d %s", i, w.Code, w.Body)
		}
	}
	if after := redisSnapshot(t, c); !reflect.DeepEqual(before, after) {
		t.Errorf("ten GETs changed Redis: %d keys before, %d after", len(before), len(after))
	}
	dk := dayKey(hs[0].rs.zoneBase(hs[0].Zone)+hashKey(key).id()+":", utcDay(time.Now().UnixNano()))
	if ttl, err := c.PTTL(context.Background(), dk).Result(); err != nil || ttl <= 0 || ttl > 25*time.Hour {
		t.Errorf("the day's usage %s expires in %v (%v), want by the end of the day", dk, ttl, err)
	}
	for k := range before {
		if strings.Contains(k, key) {
			t.Errorf("a Redis key holds the raw API key: %s", k)
		}
	}

	// Another key sees only itself.
	w, other := keyInfoVia(t, hs[0], "sk-ki-redis-other")
	if other.KeyID != hashKey("sk-ki-redis-other").id() || *other.Remaining.Requests != 60 || other.UsageToday != (keyInfoUsage{}) ||
		other.Budget.SpentUSD != 0 || strings.Contains(w.Body.String(), hashKey(key).id()) || strings.Contains(w.Body.String(), "sk-ki-redis") {
		t.Errorf("another key's key_info: %s", w.Body)
	}
	if w, _ := keyInfoVia(t, hs[1], ""); w.Code != 401 {
		t.Errorf("no key: %d %s", w.Code, w.Body)
	}

	srv.stop()
	if w, _ := keyInfoVia(t, hs[1], key); w.Code != 503 {
		t.Errorf("Redis down: %d %s, want 503", w.Code, w.Body)
	}
}
