package llmratelimit

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestDocPoolOnRedisServes loads the documented pool on Redis (the one
// Caddyfile of README.md and docs/ with "zone relay" and "store redis") —
// the block as it is written, only its keys file, Redis address and
// upstream made local — into the in-process Caddy with a real
// redis-server, and sends requests through it: a customer key of the keys
// file is served by one of the pool's accounts with that account's own
// credentials, an unknown key is refused, and the pool's state is in
// Redis under the block's prefix.
func TestDocPoolOnRedisServes(t *testing.T) {
	setClock(nil)
	t.Cleanup(func() { setClock(clk) })
	srv := startRedis(t)
	var block string
	for _, b := range docCaddyfiles(t) {
		if strings.Contains(b.text, "zone relay") && strings.Contains(b.text, "store redis") {
			if block != "" {
				t.Fatalf("more than one pool-on-Redis Caddyfile (zone relay, store redis); the test wants one, at %s", b.where)
			}
			block = b.text
		}
	}
	start, end := strings.Index(block, "\tllm_ratelimit {\n"), strings.Index(block, "\n\t}\n\treverse_proxy")
	if block == "" || start < 0 || end < 0 {
		t.Fatal("README.md and docs/ have no pool-on-Redis Caddyfile (zone relay, store redis)")
	}
	body := block[start+len("\tllm_ratelimit {\n") : end]
	keys := filepath.Join(t.TempDir(), "gateway-keys.txt")
	if err := os.WriteFile(keys, []byte("sk-relay-acme standard  # a customer\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	body = keysFileRE.ReplaceAllString(body, "keys_file "+keys)
	body = regexp.MustCompile(`address \S+`).ReplaceAllString(body, "address "+srv.addr)
	// The tests' Redis timeout: a slow call on a loaded machine must not
	// make an instance decide alone (fail open) on another account.
	body = regexp.MustCompile(`timeout \S+`).ReplaceAllString(body, "timeout "+time.Duration(testRedisTimeout).String())
	for i, k := range []string{"OPENAI_KEY_1", "OPENAI_KEY_2", "OPENAI_KEY_3"} {
		t.Setenv(k, "sk-provider-org-"+string(rune('1'+i)))
	}
	var mu sync.Mutex
	seen := map[string]int{} // the provider credentials the upstream got
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("Authorization")]++
		mu.Unlock()
		chatCompletion(w, r, 12, 5)
	})
	mustLoad(t, body)

	for range 5 {
		rep := send(t, "/v1/chat/completions", "sk-relay-acme", chatBody)
		if rep.status != 200 {
			t.Fatalf("a customer key of the keys file: %d %s", rep.status, rep.body)
		}
		if a := rep.header.Get("x-llm-ratelimit-upstream"); a != "openai-1" && a != "openai-2" {
			t.Fatalf("served by %q, want openai-1 or openai-2 (priority 0)", a)
		}
	}
	if rep := send(t, "/v1/chat/completions", "sk-not-a-customer", chatBody); rep.status != 401 {
		t.Fatalf("an unknown key under require_known_keys: %d %s", rep.status, rep.body)
	}
	mu.Lock()
	if len(seen) != 1 || (seen["Bearer sk-provider-org-1"] != 5 && seen["Bearer sk-provider-org-2"] != 5) {
		t.Errorf("the provider saw %v: want 5 calls with one account's credentials (the key's affinity), never the customer's", seen)
	}
	mu.Unlock()
	c := redis.NewClient(&redis.Options{Addr: srv.addr})
	defer c.Close()
	found, err := c.Keys(context.Background(), "{relay:relay}:a:openai-*").Result()
	if err != nil || len(found) == 0 {
		t.Fatalf("no account state under the block's prefix in Redis: %v %v", found, err)
	}
}
