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
