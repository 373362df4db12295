package llmratelimit

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

// gatewayInstances provisions n handlers that behave as n gateway
// processes sharing one Redis. Handlers of one process with one zone name
// share that zone's in-process state, which separate gateways never do;
// so each instance splits the same Redis key base ({prefix + zone}:)
// differently between its prefix and its zone name: its own zone (own
// counters, own seen keys, own metrics) and its own client, over the same
// Redis keys.
func gatewayInstances(t *testing.T, addr string, n int, h Handler) []*Handler {
	t.Helper()
	joined := "t:" + t.Name()
	var hs []*Handler
	for i := range n {
		cut := len(joined) - 6 - i
		inst := h
		inst.Zone = joined[cut:]
		inst.Store = &StoreConfig{Redis: &RedisConfig{Address: addr, Fail: "closed", Prefix: joined[:cut],
			Timeout: testRedisTimeout}}
		p := provisioned(t, &inst)
		p.logger = zap.NewNop()
		hs = append(hs, p)
	}
	if hs[0].rs.zoneBase(hs[0].Zone) != hs[n-1].rs.zoneBase(hs[n-1].Zone) {
		t.Fatal("the instances do not share one Redis key base")
	}
	return hs
}

// statsOf is what GET /llm_ratelimit/stats and GET
// /llm_ratelimit/stats/<zone>/<key_id> answer for one key of h's zone.
func statsOf(t *testing.T, h *Handler, keyID string) (inZone, one KeyStats) {
	t.Helper()
	get := func(path string, v any) {
		w := httptest.NewRecorder()
		if err := (adminAPI{}).serveStats(w, httptest.NewRequest(http.MethodGet, path, nil)); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, w.Body)
		}
	}
	var all Stats
	get("/llm_ratelimit/stats", &all)
	for _, k := range all.Zones[h.Zone].Keys {
		if k.KeyID == keyID {
			inZone = k
		}
	}
	get("/llm_ratelimit/stats/"+h.Zone+"/"+keyID, &one)
	return inZone, one
}

// Requests spread over three gateway instances count once, in Redis: every
// instance's stats, the zone's list and the one-key endpoint alike, show
// the requests and tokens that all of them served.
func TestSharedStatsAgreeAcrossInstances(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	hs := gatewayInstances(t, srv.addr, 3, Handler{Limits: Limits{RPM: 1000, TPM: 1 << 30, Concurrent: 100}})
	c := srv.client(t)
	ctx := context.Background()
	const n = 9
	from := redisNow(t, c)
	if ok, _ := admitAcross(t, n, "sk-agree", chatBody, nil, hs...); ok != n {
		t.Fatalf("%d of %d admitted", ok, n)
	}
	// nextJSON's usage: 260 prompt and 9 completion tokens a request.
	want := KeyStats{KeyID: hashKey("sk-agree").id(), RequestsTotal: n, RequestsLastMinute: n,
		InputTokensTotal: n * 260, OutputTokensTotal: n * 9, TokensLastMinute: n * 269}
	for i, h := range hs {
		inZone, one := statsOf(t, h, want.KeyID)
		lastMinute := inLastMinute(t, c, from)
		for _, got := range []KeyStats{inZone, one} {
			if !lastMinute { // too late to tell: the totals still count
				want.RequestsLastMinute, want.TokensLastMinute = got.RequestsLastMinute, got.TokensLastMinute
			}
			if got.KeyID != want.KeyID || got.RequestsTotal != want.RequestsTotal || got.RequestsLastMinute != want.RequestsLastMinute ||
				got.InputTokensTotal != want.InputTokensTotal || got.OutputTokensTotal != want.OutputTokensTotal ||
				got.TokensLastMinute != want.TokensLastMinute || got.InFlight != 0 {
				t.Errorf("instance %d (zone %q): %+v\nwant the counts of all three instances: %+v", i, h.Zone, got, want)
			}
		}
	}

	// A request in flight on one instance is in flight on every
	// instance's stats (the key's lease set).
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(chatBody))
		r.Header.Set("Authorization", "Bearer sk-agree")
		if err := hs[0].ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			close(entered)
			<-release
			return nextJSON{}.ServeHTTP(w, r)
		})); err != nil {
			t.Error(err)
		}
	}()
	<-entered
	for i, h := range hs {
		if _, one := statsOf(t, h, want.KeyID); one.InFlight != 1 || one.RequestsTotal != n+1 {
			t.Errorf("instance %d while one request is in flight on instance 0: in_flight %d, requests_total %d; want 1, %d", i, one.InFlight, one.RequestsTotal, n+1)
		}
	}
	settling := redisNow(t, c) // before the last write: the in-flight request's settle
	close(release)
	<-done

	// The counters are one hash in the zone's slot, named by key_id, that
	// an idle key loses.
	statsKey := hs[0].rs.zoneBase(hs[0].Zone) + want.KeyID + ":stats"
	ttl, err := c.PTTL(ctx, statsKey).Result()
	to := redisNow(t, c)
	// It lives at least statsTTL after its last write, less what passed
	// since on Redis's clock (and a millisecond PTTL rounds off), and at
	// most the scripts' slack more (they set a TTL only when it would come
	// sooner).
	if least, most := statsTTL-to.Sub(settling)-time.Millisecond, statsTTL+luaSlackMs*time.Millisecond; err != nil || ttl < least || ttl > most {
		t.Errorf("%s expires in %v (%v), want %v to %v", statsKey, ttl, err, least, most)
	}
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, "sk-agree") {
			t.Errorf("a Redis key holds the raw API key: %s", k)
		}
	}
}

// The last minute is the ring's slots of the last minute, the oldest
// weighted by its share still inside it; older slots and the totals never
// count in it.
func TestSharedLastMinuteCountsOnlyTheLastMinute(t *testing.T) {
	const slot = int64(statsSlotUs)
	nowSlot := int64(400_000_000)
	type at struct{ age, req, tok int64 } // a ring slot's counts, age slots ago
	for _, tc := range []struct {
		name             string
		into             int64 // µs into the current slot
		slots            []at
		wantReq, wantTok int64
	}{
		{"none", 0, nil, 0, 0},
		{"this slot", slot / 2, []at{{0, 3, 300}}, 3, 300},
		{"every slot of the last 55 s", 0, []at{{0, 1, 10}, {5, 2, 20}, {11, 4, 40}}, 7, 70},
		{"the oldest slot, three quarters in the minute", slot / 4, []at{{0, 1, 10}, {12, 4, 400}}, 4, 310},
		{"the oldest slot, a fifth in the minute", slot * 4 / 5, []at{{12, 10, 1000}}, 2, 200},
		{"a slot a lap ago", 0, []at{{13, 5, 50}, {25, 6, 60}}, 0, 0},
		{"a slot from the future (another node's clock)", 0, []at{{-1, 5, 50}}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals := make([]any, len(counterFields))
			vals[0], vals[1], vals[2] = "100", "2000", "300" // totals: never the last minute
			for _, s := range tc.slots {
				k := int((nowSlot - s.age) % statsSlots)
				vals[3+3*k] = strconv.FormatInt(nowSlot-s.age, 10)
				vals[4+3*k] = strconv.FormatInt(s.req, 10)
				vals[5+3*k] = strconv.FormatInt(s.tok, 10)
			}
			c := readCounters(vals, nowSlot*slot+tc.into)
			if c.reqLastMinute != tc.wantReq || c.tokLastMinute != tc.wantTok {
				t.Errorf("last minute %d requests, %d tokens; want %d, %d", c.reqLastMinute, c.tokLastMinute, tc.wantReq, tc.wantTok)
			}
			if c.requests != 100 || c.inTokens != 2000 || c.outTokens != 300 {
				t.Errorf("totals %+v, want 100, 2000, 300", c)
			}
		})
	}
}

// histogramOf is the sample count and sum of o, a histogram child.
func histogramOf(t *testing.T, o prometheus.Observer) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// sleepRecorder is the real clock that records, for every sleep the
// package asks of it, how long it had left to sleep when asked.
type sleepRecorder struct {
	mu     sync.Mutex
	sleeps []time.Duration
}

func (r *sleepRecorder) Now() time.Time { return time.Now() }

func (r *sleepRecorder) SleepUntil(ctx context.Context, wake time.Time) error {
	d := time.Until(wake)
	r.mu.Lock()
	r.sleeps = append(r.sleeps, d)
	r.mu.Unlock()
	return wallSleepUntil(ctx, wake)
}

// take returns the sleeps recorded since the last take.
func (r *sleepRecorder) take() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sleeps
	r.sleeps = nil
	return s
}

// Through Redis, a request admitted on its first try is allowed, with no
// queue_wait observation, however long the round trip took; one that
// waited for the bucket to refill (max_wait) is queued, and its wait
// observed: at least the sleeps it asked for, at most the time it took.
func TestSharedAdmissionsQueueOnlyWhenTheyWaited(t *testing.T) {
	rec := &sleepRecorder{}
	setClock(rec) // the real clock: the round trips take real time, as in production
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	c := srv.client(t)
	// rpm 60: a full bucket holds 60 requests and refills one a second.
	// max_wait bounds the round trips too: a minute, which no loaded
	// machine's round trips exhaust.
	h := gatewayInstances(t, srv.addr, 1, Handler{Limits: Limits{RPM: 60}, MaxWait: caddy.Duration(time.Minute)})[0]
	m := h.zone.m
	// The zone's counters outlive a test run (-count): count from here.
	type counts struct {
		allowed, queued, observedSum float64
		observed                     uint64
	}
	read := func() counts {
		n, sum := histogramOf(t, m.queueWait)
		return counts{testutil.ToFloat64(m.outcomes[outcomeAllowed]), testutil.ToFloat64(m.outcomes[outcomeQueued]), sum, n}
	}
	zero := read()
	from := redisNow(t, c)
	for i := range 60 {
		if w := serveOnce(t, h, "sk-queued", chatBody); w.Code != 200 {
			t.Fatalf("request %d: %d %s", i, w.Code, w.Body)
		}
	}
	if got := read(); got.allowed-zero.allowed != 60 || got.queued != zero.queued || got.observed != zero.observed {
		t.Fatalf("60 requests admitted at once: allowed %v, queued %v, queue_wait observations %d; want 60, 0, 0",
			got.allowed-zero.allowed, got.queued-zero.queued, got.observed-zero.observed)
	}
	if s := rec.take(); len(s) != 0 {
		t.Fatalf("a full bucket of 60 made requests sleep %v", s)
	}
	// The bucket is empty, but for what it refilled on Redis's clock:
	// requests it refilled for are served at once, then one waits for it.
	for extra := 1; ; extra++ {
		before := read()
		start := time.Now()
		if w := serveOnce(t, h, "sk-queued", chatBody); w.Code != 200 {
			t.Fatalf("request %d after the 60: %d %s", extra, w.Code, w.Body)
		}
		took := time.Since(start)
		after, slept := read(), rec.take()
		if len(slept) == 0 {
			if most := refillBound(60, redisNow(t, c).Sub(from)+slack(60+extra)); int64(extra) > most {
				t.Fatalf("%d served at once after the 60, but the bucket refilled %d at most", extra, most)
			}
			if after.allowed-before.allowed != 1 || after.queued != before.queued || after.observed != before.observed {
				t.Fatalf("a request served at once: allowed +%v, queued +%v, queue_wait observations +%d; want 1, 0, 0",
					after.allowed-before.allowed, after.queued-before.queued, after.observed-before.observed)
			}
			continue
		}
		if after.allowed != before.allowed || after.queued-before.queued != 1 || after.observed-before.observed != 1 {
			t.Fatalf("a request that slept %v: allowed +%v, queued +%v, queue_wait observations +%d; want 0, 1, 1",
				slept, after.allowed-before.allowed, after.queued-before.queued, after.observed-before.observed)
		}
		// It slept for what the bucket lacked of one request: a second at
		// most. Its wait observed is at least those sleeps, at most the
		// time the request took.
		var total time.Duration
		for _, d := range slept {
			total += d
		}
		waited := time.Duration((after.observedSum - before.observedSum) * float64(time.Second))
		if slept[0] > time.Second || waited < total-time.Microsecond || waited > took {
			t.Errorf("queue_wait observed %v; the request slept %v and took %v: want at least the sleeps (the first at most 1 s), at most %v",
				waited, slept, took, took)
		}
		return
	}
}
