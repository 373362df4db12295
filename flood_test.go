package llmratelimit

import (
	"crypto/rand"
	"runtime"
	"strings"
	"testing"
)

// TestKeyFloodIsBoundedAndKnownKeysAreServed offers a million distinct
// random keys to a zone with the default max_keys: the zone never holds
// more than that, its heap stays under the documented bound, keys that
// already have state keep their (used) buckets, and configured keys are
// always served.
func TestKeyFloodIsBoundedAndKnownKeysAreServed(t *testing.T) {
	if testing.Short() {
		t.Skip("a million keys")
	}
	z := newZone("flood-test")
	defer z.Destruct()
	lim := Limits{RPM: 2}
	nowNs := now().UnixNano()

	// A key that is already at its limit before the flood.
	early := ask{kh: hashKey("sk-early"), lim: lim, maxKeys: defaultMaxKeys}
	for i := 0; i < 2; i++ {
		tk, dec := z.admit(early, nowNs, false, false)
		if !dec.ok {
			t.Fatal("early key rejected before the flood")
		}
		tk.finish(nowNs, nil, false)
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var raw [16]byte
	admitted, turnedAway := 0, 0
	for i := 0; i < 1_000_000; i++ {
		_, _ = rand.Read(raw[:])
		tk, dec := z.admit(ask{kh: hashKey(string(raw[:])), lim: lim, maxKeys: defaultMaxKeys}, nowNs, false, false)
		if dec.ok {
			admitted++
			tk.finish(nowNs, nil, false)
		} else if dec.blocking.dim == dimKeys {
			turnedAway++
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := z.keyCount(); n > defaultMaxKeys {
		t.Errorf("zone holds %d keys, max_keys is %d", n, defaultMaxKeys)
	}
	const bound = 40 << 20 // docs/operating.md "Guarantees": ~25 MB per zone at the default max_keys
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > bound {
		t.Errorf("heap grew by %d MB under the flood, bound %d MB", grown>>20, bound>>20)
	}
	if admitted+turnedAway != 1_000_000 || turnedAway < 1_000_000-defaultMaxKeys {
		t.Errorf("admitted %d, turned away %d", admitted, turnedAway)
	}

	// The early key kept its state: it has no quota left, flood or not.
	if _, dec := z.admit(early, nowNs, false, false); dec.ok || dec.blocking.dim != dimRequests {
		t.Errorf("the early key regained quota it had used: %+v", dec.verdict)
	}
	// A configured key is served even though the zone is full.
	tk, dec := z.admit(ask{kh: hashKey("sk-configured"), known: true, lim: lim, maxKeys: defaultMaxKeys}, nowNs, false, false)
	if !dec.ok {
		t.Fatalf("a configured key was turned away by the flood: %+v", dec.verdict)
	}
	tk.finish(nowNs, nil, false)
	// Once the flood's keys are idle (full again), the sweeper frees them.
	if dropped := z.sweep(nowNs + int64(sweepInterval)); dropped < defaultMaxKeys-10 {
		t.Errorf("sweep dropped %d idle keys", dropped)
	}
	if _, dec := z.admit(ask{kh: hashKey("sk-after"), lim: lim, maxKeys: defaultMaxKeys}, nowNs+int64(sweepInterval), false, false); !dec.ok {
		t.Errorf("a new key after the sweep was turned away")
	}
}

func TestKeyFloodAnswersNewKeysWith429OverHTTP(t *testing.T) {
	mustLoad(t, "zone flood_http\nrpm 10\nmax_keys 3\napi_key sk-flood-known gold\ntier gold {\n\trpm 10\n}")
	// Configured keys count towards max_keys but are never turned away.
	for _, k := range []string{"sk-flood-1", "sk-flood-known", "sk-flood-2"} {
		if r := send(t, "/v1/chat/completions", k, chatBody); r.status != 200 {
			t.Fatalf("%s: %d", k, r.status)
		}
	}
	r := send(t, "/v1/chat/completions", "sk-flood-3", chatBody)
	if r.status != 429 || r.header.Get("Retry-After") != "60" || !strings.Contains(r.errorBody(t).Error.Message, "Too many active API keys") {
		t.Fatalf("a new key past max_keys: %d %v %s", r.status, r.header, r.body)
	}
	if r := send(t, "/v1/chat/completions", "sk-flood-1", chatBody); r.status != 200 {
		t.Fatalf("a key with state was turned away: %d", r.status)
	}
	if r := send(t, "/v1/chat/completions", "sk-flood-known", chatBody); r.status != 200 {
		t.Fatalf("a configured key was turned away: %d", r.status)
	}
}

func TestDryRunPastMaxKeysForwardsAndHoldsNothing(t *testing.T) {
	mustLoad(t, "zone flood_dry\nrpm 10\nmax_keys 1\ndry_run")
	for _, k := range []string{"sk-dry-a", "sk-dry-b", "sk-dry-b"} {
		if r := send(t, "/v1/chat/completions", k, chatBody); r.status != 200 {
			t.Fatalf("%s: %d %s", k, r.status, r.body)
		}
	}
	if n := zoneOf(t, "flood_dry").keyCount(); n != 1 {
		t.Errorf("keys %d, want 1 (max_keys)", n)
	}
}
