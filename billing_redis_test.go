package llmratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// usageOfInstance is what GET /llm_ratelimit/usage/<zone> answers for h's
// zone today.
func usageOfInstance(t *testing.T, h *Handler) []UsageRow {
	t.Helper()
	w := httptest.NewRecorder()
	if err := (adminAPI{}).serveUsage(w, httptest.NewRequest(http.MethodGet, "/llm_ratelimit/usage/"+h.Zone, nil)); err != nil {
		t.Fatalf("GET usage of %s: %v", h.Zone, err)
	}
	var r usageReply
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
		t.Fatalf("usage JSON: %v: %s", err, w.Body)
	}
	return r.Rows
}

// Two gateway instances on one Redis: a day's row is the sum of what both
// served, whichever instance is asked and however often; a batch sent
// again (its reply lost) counts once. The day's hash lives in the zone's
// hash slot, names keys by key_id only, and expires with the retention.
func TestUsageOfTwoInstancesOnRedisAddsUpNeverDoubles(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	hs := gatewayInstances(t, srv.addr, 2, Handler{Limits: Limits{RPM: 1000}, DefaultPrice: &Price{Input: 2, Output: 8}, UsageRetention: 30})
	const n = 10
	if ok, _ := admitAcross(t, n, "sk-usage-redis", chatBody, nil, hs...); ok != n {
		t.Fatalf("%d of %d admitted", ok, n)
	}
	// nextJSON's usage: 260 prompt and 9 completion tokens a request.
	want := UsageRow{Day: time.Now().UTC().Format(time.DateOnly), KeyID: hashKey("sk-usage-redis").id(),
		Requests: n, InputTokens: n * 260, OutputTokens: n * 9, CostUSD: n * (260*2 + 9*8) / 1e6}
	check := func(when string) {
		t.Helper()
		for i, h := range hs {
			rows := usageOfInstance(t, h)
			if len(rows) != 1 || !sameUSD(rows[0].CostUSD, want.CostUSD) {
				t.Fatalf("%s, instance %d: %+v\nwant %+v", when, i, rows, want)
			}
			got := rows[0]
			got.CostUSD = want.CostUSD
			if got != want {
				t.Errorf("%s, instance %d: %+v\nwant %+v", when, i, got, want)
			}
		}
	}
	// Each instance's flusher adds its counts within ledgerFlush; asking
	// one instance adds its own at once.
	for _, h := range hs {
		h.zone.flush()
	}
	check("after both flushed")
	for _, h := range hs {
		h.zone.flush()
	}
	check("after flushing again")

	// A batch whose reply was lost is sent again: the writer's mark in
	// Redis makes the second one a no-op.
	b := hs[1].zone.bookOf()
	b.mu.Lock()
	b.seq++
	bt := usageBatch{seq: b.seq, rows: []usageDelta{{kp: hashKey("sk-usage-redis").prefix(), u: keyUsage{day: dayOf(time.Now().UnixNano()), requests: 1, in: 7}}}}
	err1, err2 := b.send(hs[1].rs, &bt), b.send(hs[1].rs, &bt)
	b.mu.Unlock()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	want.Requests, want.InputTokens = n+1, n*260+7
	check("after one batch sent twice")

	// One key's rows alone (what the key's own quota view reads).
	var one []UsageRow
	if err := hs[0].zone.readUsage(dayOf(time.Now().UnixNano()), dayOf(time.Now().UnixNano()), want.KeyID, func(_ int32, rows []UsageRow) error {
		one = append(one, rows...)
		return nil
	}); err != nil || len(one) != 1 || one[0].Requests != n+1 {
		t.Errorf("the key's rows alone: %+v (%v)", one, err)
	}

	c := redis.NewClient(&redis.Options{Addr: srv.addr})
	defer c.Close()
	ctx := context.Background()
	dayKey := usageDayKey(hs[0].rs.zoneBase(hs[0].Zone), dayOf(time.Now().UnixNano()))
	// It expires when its day leaves the 30 days kept: what is left of
	// that, read between two instants (PTTL rounds to the millisecond).
	expires := time.UnixMilli((int64(dayOf(time.Now().UnixNano())) + 30) * 86_400_000)
	asked := time.Now()
	ttl, err := c.PTTL(ctx, dayKey).Result()
	least, most := expires.Sub(time.Now())-time.Millisecond, expires.Sub(asked)+time.Millisecond
	if err != nil || ttl < least || ttl > most {
		t.Errorf("%s expires in %v (%v), want %v to %v: when its day leaves the 30 days kept", dayKey, ttl, err, least, most)
	}
	fields, err := c.HKeys(ctx, dayKey).Result()
	if err != nil || len(fields) != 6 {
		t.Errorf("%s holds %v (%v), want the 6 fields of one key", dayKey, fields, err)
	}
	keys, _ := c.Keys(ctx, "*").Result()
	for _, s := range append(keys, fields...) {
		if strings.Contains(s, "sk-usage") {
			t.Errorf("Redis names the raw API key: %s", s)
		}
	}
}

// Past usageMaxRows keys a day, Redis adds the new keys up in one row.
func TestUsageOnRedisFoldsKeysPastTheBound(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	h := gatewayInstances(t, srv.addr, 1, Handler{Limits: Limits{RPM: 1000}})[0]
	day := dayOf(time.Now().UnixNano())
	key := usageDayKey(h.rs.zoneBase(h.Zone), day)
	c := redis.NewClient(&redis.Options{Addr: srv.addr})
	defer c.Close()
	// A day already at the bound.
	ctx := context.Background()
	pipe := c.Pipeline()
	for i := range usageMaxRows {
		id := fmt.Sprintf("%012x", i)
		pipe.HSet(ctx, key, id+":t", "", id+":n", 1, id+":i", 0, id+":c", 0, id+":o", 0, id+":$", 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	b := h.zone.bookOf()
	b.mu.Lock()
	b.seq++
	err := b.send(h.rs, &usageBatch{seq: b.seq, rows: []usageDelta{
		{kp: hashKey("sk-past-1").prefix(), tier: "gold", u: keyUsage{day: day, requests: 2, in: 10}},
		{kp: hashKey("sk-past-2").prefix(), u: keyUsage{day: day, requests: 3, in: 20}},
	}})
	b.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	vals, err := c.HMGet(ctx, key, usageOther+":n", usageOther+":i", usageOther+":t", hashKey("sk-past-1").id()+":n").Result()
	if err != nil || vals[0] != "5" || vals[1] != "30" || vals[2] != "" || vals[3] != nil {
		t.Errorf("the row %s: %v (%v), want 5 requests and 30 tokens of the two keys past the bound, no tier, and no row of their own", usageOther, vals, err)
	}
}

// Counts that the flusher could not add while Redis was down stay pending
// and reach Redis, once, when it is back.
func TestUsageOnRedisWaitsOutAnOutage(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	h := gatewayInstances(t, srv.addr, 1, Handler{Limits: Limits{RPM: 1000}})[0]
	for range 3 {
		if w := serveOnce(t, h, "sk-outage", chatBody); w.Code != 200 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	srv.stop()
	b := h.zone.bookOf()
	b.mu.Lock()
	err := b.flushRedis(h.zone, h.rs)
	pending := len(b.pending)
	b.mu.Unlock()
	if err == nil || pending != 1 {
		t.Fatalf("flushing with Redis down: %v, %d batches pending; want an error and 1", err, pending)
	}
	srv.start(t) // empty: it kept nothing
	h.zone.flush()
	h.zone.flush()
	if rows := usageOfInstance(t, h); len(rows) != 1 || rows[0].Requests != 3 || rows[0].InputTokens != 3*260 {
		t.Errorf("after the outage: %+v, want the 3 requests counted once", rows)
	}
}
