package llmratelimit

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// The documentation's Caddyfiles are test fixtures: README.md and every
// docs/*.md page are walked for ```caddyfile blocks, so that a new page's
// blocks are tested without a change here.

// minDocCaddyfiles is how many Caddyfiles (the grammar block left out) the
// README and docs/ held when this was written: finding fewer means blocks
// went missing or lost their ```caddyfile mark, and the tests fail.
const minDocCaddyfiles = 16

// docCaddyfile is one ```caddyfile block of the documentation.
type docCaddyfile struct {
	where string // file:line of the block's first line
	text  string
}

// grammar reports whether the block is the grammar (<placeholders>), not
// a Caddyfile.
func (b docCaddyfile) grammar() bool { return strings.Contains(b.text, "<name>") }

var (
	fenceRE     = regexp.MustCompile("(?ms)^```([a-z]*)\n(.*?)^```")
	tierLineRE  = regexp.MustCompile(`(?m)^\s*tier (\S+) \{`)
	keysFileRE  = regexp.MustCompile(`keys_file \S+`)
	pricesRE    = regexp.MustCompile(`prices_file \S+`)
	fsStorageRE = regexp.MustCompile(`storage file_system \S+`)
)

// docPages is README.md and docs/*.md, in that order.
func docPages(t testing.TB) []string {
	t.Helper()
	pages, err := filepath.Glob(filepath.Join("docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs/*.md pages (%v)", err)
	}
	return append([]string{"README.md"}, pages...)
}

// docCaddyfiles returns every ```caddyfile block of README.md and
// docs/*.md, the grammar included. It fails t when a fenced block under
// another mark holds an llm_ratelimit directive (a Caddyfile the tests
// would miss), and when there are fewer Caddyfiles than minDocCaddyfiles
// or not exactly one grammar block.
func docCaddyfiles(t testing.TB) []docCaddyfile {
	t.Helper()
	var blocks []docCaddyfile
	grammar := 0
	for _, page := range docPages(t) {
		raw, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		s := string(raw)
		for _, m := range fenceRE.FindAllStringSubmatchIndex(s, -1) {
			mark, text := s[m[2]:m[3]], s[m[4]:m[5]]
			where := fmt.Sprintf("%s:%d", page, strings.Count(s[:m[0]], "\n")+1)
			if mark != "caddyfile" {
				if strings.Contains(text, "llm_ratelimit {") {
					t.Errorf("%s: a Caddyfile with llm_ratelimit fenced as %q: mark it ```caddyfile so that the tests load it", where, mark)
				}
				continue
			}
			b := docCaddyfile{where: where, text: text}
			if b.grammar() {
				grammar++
			}
			blocks = append(blocks, b)
		}
	}
	if grammar != 1 || len(blocks)-grammar < minDocCaddyfiles {
		t.Fatalf("found %d Caddyfiles and %d grammar blocks in README.md and docs/*.md; want at least %d and exactly 1", len(blocks)-grammar, grammar, minDocCaddyfiles)
	}
	return blocks
}

// TestDocCaddyfilesLoad adapts and validates (provisions) every Caddyfile
// of the README and docs/ as written, global options included, so that
// no example rots. Only what cannot be here changes: keys_file is a real
// file with a real key line (docKeysFile), prices_file the LiteLLM
// sample, the storage a temporary directory, the admin API off.
func TestDocCaddyfilesLoad(t *testing.T) {
	checked := 0
	for _, b := range docCaddyfiles(t) {
		if b.grammar() {
			continue
		}
		cfg := keysFileRE.ReplaceAllString(b.text, "keys_file "+docKeysFile(t, b))
		cfg = strings.ReplaceAll(cfg, "admin localhost:2019", "admin off")
		cfg = pricesRE.ReplaceAllString(cfg, "prices_file testdata/prices/model_prices_sample.json")
		cfg = fsStorageRE.ReplaceAllString(cfg, "storage file_system "+t.TempDir())
		out, err := adaptCaddyfileForTest(cfg)
		if err != nil {
			t.Errorf("%s: the Caddyfile does not adapt: %v\n%s", b.where, err, cfg)
			continue
		}
		var c caddy.Config
		if err := json.Unmarshal(out, &c); err != nil {
			t.Fatal(err)
		}
		if err := caddy.Validate(&c); err != nil {
			t.Errorf("%s: the Caddyfile does not load: %v\n%s", b.where, err, cfg)
			continue
		}
		checked++
	}
	t.Logf("adapted and provisioned %d Caddyfiles of README.md and docs/", checked)
}

// docClient is the customer key that the docs' keys files hold.
const docClient = "sk-docs-customer"

// docKeysFile writes a keys file for a documented Caddyfile: one real
// line, docClient with the first tier the Caddyfile defines. A Caddyfile
// with keys_file and no tier fails t: no line of its keys file could load.
func docKeysFile(t *testing.T, b docCaddyfile) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.txt")
	if !strings.Contains(b.text, "keys_file") {
		return path
	}
	m := tierLineRE.FindStringSubmatch(b.text)
	if m == nil {
		t.Errorf("%s: the Caddyfile has keys_file and no tier, so no key line can load:\n%s", b.where, b.text)
		return path
	}
	if err := os.WriteFile(path, []byte(docClient+" "+m[1]+"  # a customer\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// docCaddyfileWith is the one documented Caddyfile that contains marker;
// t fails unless there is exactly one.
func docCaddyfileWith(t *testing.T, marker string) docCaddyfile {
	t.Helper()
	var found []docCaddyfile
	for _, b := range docCaddyfiles(t) {
		if strings.Contains(b.text, marker) {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one Caddyfile with %q in README.md and docs/*.md, found %d", marker, len(found))
	}
	return found[0]
}

// TestDocsNameEveryMetricAndConfigField fails when a metric (with its
// labels, as `name{label,…}`) or a JSON config field of the module is
// named nowhere in README.md and docs/*.md together.
func TestDocsNameEveryMetricAndConfigField(t *testing.T) {
	var all strings.Builder
	for _, page := range docPages(t) {
		raw, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		all.Write(raw)
	}
	docs := all.String()
	nameRE := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	metrics := 0
	for _, c := range collectors {
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			m := nameRE.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name and labels of %s", d)
			}
			metrics++
			if want := "`" + m[1] + "{" + m[2] + "}`"; !strings.Contains(docs, want) {
				t.Errorf("the metric %s is named nowhere in README.md and docs/", want)
			}
		}
	}
	fields := 0
	for _, v := range []any{Handler{}, Limits{}, Tier{}, APIKey{}, Model{}, Account{}, RetryConfig{}, StoreConfig{}, RedisConfig{}, Price{}, Budget{}} {
		typ := reflect.TypeOf(v)
		for i := 0; i < typ.NumField(); i++ {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			fields++
			if !strings.Contains(docs, "`"+name+"`") && !strings.Contains(docs, `"`+name+`"`) {
				t.Errorf("the config field %s.%s (JSON %q) is named nowhere in README.md and docs/", typ.Name(), typ.Field(i).Name, name)
			}
		}
	}
	if metrics < 17 || fields < 60 {
		t.Fatalf("checked %d metrics and %d config fields; want every one (17 metrics, 60 fields or more)", metrics, fields)
	}
	t.Logf("checked that README.md and docs/ name %d metrics and %d config fields", metrics, fields)
}
