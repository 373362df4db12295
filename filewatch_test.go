package llmratelimit

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fileChecks makes the file watchers of the configs loaded from now on
// check when the test says (tick), not every fileCheckEvery.
func fileChecks(t *testing.T) (tick func()) {
	t.Helper()
	ch := make(chan time.Time)
	old := fileTicks
	fileTicks = func() (<-chan time.Time, func()) { return ch, func() {} }
	t.Cleanup(func() { fileTicks = old })
	return func() {
		select {
		case ch <- time.Now():
		case <-time.After(time.Second): // no watcher took it (yet): the caller asks again
		}
	}
}

// writeFile replaces a file's content as an editor or a deploy does: a new
// file renamed over the old one.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// A key added to the keys file is accepted under require_known_keys with
// no reload; a broken rewrite keeps the keys in force, and both are
// counted.
func TestKeysFileReloadsItself(t *testing.T) {
	tick := fileChecks(t)
	keys := filepath.Join(t.TempDir(), "keys.txt")
	writeFile(t, keys, "sk-reload-a team\n")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 10, 2) })
	mustLoad(t, "zone keysreload\nkeys_file "+keys+"\nrequire_known_keys\ntier team {\nrpm 100\n}")
	if r := send(t, "/v1/chat/completions", "sk-reload-b", chatBody); r.status != 401 {
		t.Fatalf("a key not in the file yet: %d, want 401", r.status)
	}
	ok := func() float64 {
		return testutil.ToFloat64(metricFileReloads.WithLabelValues("keysreload", "keys_file", "ok"))
	}
	bad := func() float64 {
		return testutil.ToFloat64(metricFileReloads.WithLabelValues("keysreload", "keys_file", "error"))
	}
	okBefore, badBefore := ok(), bad()

	writeFile(t, keys, "sk-reload-a team\nsk-reload-b team  # added while serving\n")
	eventually(t, "the added key to be accepted", func() bool {
		tick()
		return send(t, "/v1/chat/completions", "sk-reload-b", chatBody).status == 200
	})
	if ok() != okBefore+1 {
		t.Errorf("file_reloads_total{result=ok} went from %v to %v, want one more", okBefore, ok())
	}

	// A tier that does not exist: the file is refused as a whole.
	writeFile(t, keys, "sk-reload-a team\nsk-reload-c nosuchtier\n")
	eventually(t, "the broken file to be counted", func() bool {
		tick()
		return bad() == badBefore+1
	})
	for _, k := range []string{"sk-reload-a", "sk-reload-b"} {
		if r := send(t, "/v1/chat/completions", k, chatBody); r.status != 200 {
			t.Errorf("%s after a broken rewrite: %d, want the keys in force kept", k, r.status)
		}
	}
	if r := send(t, "/v1/chat/completions", "sk-reload-c", chatBody); r.status != 401 {
		t.Errorf("a key of the broken file: %d, want 401", r.status)
	}
	// Checks with nothing changed count nothing.
	tick()
	tick()
	if ok() != okBefore+1 || bad() != badBefore+1 {
		t.Errorf("unchanged checks counted: ok %v, error %v", ok()-okBefore, bad()-badBefore)
	}
}

// A rewritten prices file changes the next request's cost with no reload;
// a broken rewrite keeps the prices in force.
func TestPricesFileReloadsItself(t *testing.T) {
	tick := fileChecks(t)
	prices := filepath.Join(t.TempDir(), "prices.json")
	writeFile(t, prices, `{"gpt-4o": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}`)
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 10, 2) })
	mustLoad(t, "zone pricesreload\nprices_file "+prices)
	cost := func() float64 { return testutil.ToFloat64(metricCost.WithLabelValues("pricesreload", calibStar)) }
	costOf := func() float64 {
		t.Helper()
		before := cost()
		if r := send(t, "/v1/chat/completions", "sk-prices-reload", chatBody); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		return cost() - before
	}
	const old, cheaper = 10*1e-6 + 2*2e-6, 10*1e-5 + 2*2e-5
	if c := costOf(); c < old*0.999 || c > old*1.001 {
		t.Fatalf("cost %v, want %v", c, old)
	}
	writeFile(t, prices, `{"gpt-4o": {"input_cost_per_token": 1e-05, "output_cost_per_token": 2e-05}}`)
	eventually(t, "the new prices to cost the next request", func() bool {
		tick()
		c := costOf()
		return c > cheaper*0.999 && c < cheaper*1.001
	})
	bad := func() float64 {
		return testutil.ToFloat64(metricFileReloads.WithLabelValues("pricesreload", "prices_file", "error"))
	}
	badBefore := bad()
	writeFile(t, prices, `[]`)
	eventually(t, "the broken file to be counted", func() bool {
		tick()
		return bad() == badBefore+1
	})
	if c := costOf(); c < cheaper*0.999 || c > cheaper*1.001 {
		t.Fatalf("cost after a broken rewrite %v, want the prices in force kept (%v)", c, cheaper)
	}
}
