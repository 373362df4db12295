package llmratelimit

import (
	"strings"
	"testing"
)

func TestReloadKeepsBucketLevelsAndReleasesThePool(t *testing.T) {
	mustLoad(t, "zone reload\nrpm 10\ntpm 100000")
	for i := 0; i < 5; i++ {
		if r := send(t, "/v1/chat/completions", "sk-reload", chatBody); r.status != 200 {
			t.Fatalf("request %d: %d", i, r.status)
		}
	}
	refs := func() int {
		n, _ := zones.References("reload")
		return n
	}
	if got := refs(); got != 1 {
		t.Fatalf("zone references before reload = %d, want 1", got)
	}

	// POST /load with a changed tpm: the key's requests bucket keeps its
	// level (5 used of 10; the clock has not moved).
	for i := 0; i < 3; i++ {
		mustLoad(t, "zone reload\nrpm 10\ntpm 200000")
		mustLoad(t, "zone reload\nrpm 10\ntpm 100000")
	}
	if got := refs(); got != 1 {
		t.Fatalf("zone references after 6 reloads = %d, want 1 (leak)", got)
	}
	r := send(t, "/v1/chat/completions", "sk-reload", chatBody)
	if got := r.header.Get("x-ratelimit-remaining-requests"); got != "4" {
		t.Fatalf("6th request: remaining-requests %q, want 4 (5 remained before it)", got)
	}

	// A changed limit applies to the live bucket at once.
	mustLoad(t, "zone reload\nrpm 20\ntpm 100000")
	r = send(t, "/v1/chat/completions", "sk-reload", chatBody)
	if got := r.header.Get("x-ratelimit-limit-requests"); got != "20" {
		t.Errorf("limit after raising rpm: %q, want 20", got)
	}

	// A config whose Provision fails leaves the live zone alone.
	err := load(t, siteConfig("zone reload\nrpm 20\nkeys_file /does/not/exist"))
	if err == nil || !strings.Contains(err.Error(), "keys_file") {
		t.Fatalf("bad config loaded: %v", err)
	}
	if got := refs(); got != 1 {
		t.Fatalf("zone references after a failed load = %d, want 1", got)
	}
	r = send(t, "/v1/chat/completions", "sk-reload", chatBody)
	if r.status != 200 || r.header.Get("x-ratelimit-remaining-requests") != "2" {
		t.Fatalf("after failed load: %d remaining %q, want 200 and 2", r.status, r.header.Get("x-ratelimit-remaining-requests"))
	}

	// Moving to another zone lets this one go.
	mustLoad(t, "zone reload_other\nrpm 10")
	if n, ok := zones.References("reload"); ok || n != 0 {
		t.Fatalf("old zone still referenced: %d", n)
	}
}
