package llmratelimit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestReadmeCaddyfilesLoad adapts and validates (provisions) every
// complete Caddyfile in README.md, so that no example rots. The grammar
// block (with <placeholders>) is the only one skipped; keys_file paths
// point at a real file with a real key line (readmeKeysFile).
func TestReadmeCaddyfilesLoad(t *testing.T) {
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```caddyfile\n(.*?)```").FindAllStringSubmatch(string(raw), -1)
	checked, grammar := 0, 0
	for i, b := range blocks {
		cfg := b[1]
		if strings.Contains(cfg, "<name>") {
			grammar++
			continue // the grammar, not a Caddyfile
		}
		cfg = regexp.MustCompile(`keys_file \S+`).ReplaceAllString(cfg, "keys_file "+readmeKeysFile(t, cfg))
		cfg = strings.ReplaceAll(cfg, "admin localhost:2019", "admin off")
		cfg = regexp.MustCompile(`prices_file \S+`).ReplaceAllString(cfg, "prices_file testdata/prices/model_prices_sample.json")
		cfg = regexp.MustCompile(`storage file_system \S+`).ReplaceAllString(cfg, "storage file_system "+t.TempDir())
		out, err := adaptCaddyfileForTest(cfg)
		if err != nil {
			t.Errorf("README Caddyfile %d does not adapt: %v\n%s", i+1, err, cfg)
			continue
		}
		var c caddy.Config
		if err := json.Unmarshal(out, &c); err != nil {
			t.Fatal(err)
		}
		if err := caddy.Validate(&c); err != nil {
			t.Errorf("README Caddyfile %d does not load: %v\n%s", i+1, err, cfg)
		}
		checked++
	}
	if grammar != 1 || checked != len(blocks)-1 || checked < 12 {
		t.Fatalf("checked %d of %d README Caddyfile blocks (%d grammar blocks skipped); want every one but the grammar", checked, len(blocks), grammar)
	}
	t.Logf("adapted and provisioned %d README Caddyfiles", checked)
}

// readmeClient is the customer key that README recipes' keys files hold.
const readmeClient = "sk-readme-customer"

// readmeKeysFile writes a keys file for a README Caddyfile: one real line,
// readmeClient with the first tier the Caddyfile defines. A Caddyfile with
// keys_file and no tier fails t: no line of its keys file could load.
func readmeKeysFile(t *testing.T, cfg string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.txt")
	if !strings.Contains(cfg, "keys_file") {
		return path
	}
	m := regexp.MustCompile(`(?m)^\s*tier (\S+) \{`).FindStringSubmatch(cfg)
	if m == nil {
		t.Errorf("a README Caddyfile has keys_file and no tier, so no key line can load:\n%s", cfg)
		return path
	}
	if err := os.WriteFile(path, []byte(readmeClient+" "+m[1]+"  # a customer\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
