package llmratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// adaptCaddyfileForTest runs the Caddyfile adapter over body, named
// "Caddyfile" so that errors read "..., at Caddyfile:<line>".
func adaptCaddyfileForTest(body string) ([]byte, error) {
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return nil, fmt.Errorf("caddyfile adapter not registered")
	}
	out, _, err := adapter.Adapt([]byte(body), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// handlersInRouteOrder walks the adapted JSON depth first and returns every
// handler object ({"handler": ...}) in the order a request meets them.
func handlersInRouteOrder(v any) []map[string]any {
	var out []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v["handler"].(string); ok {
			out = append(out, v)
		}
		// Visit keys in a fixed order; only "routes" and "handle" hold
		// handlers, and they never sit side by side at one level.
		for _, k := range []string{"apps", "http", "servers", "srv0", "routes", "handle"} {
			if c, ok := v[k]; ok {
				out = append(out, handlersInRouteOrder(c)...)
			}
		}
	case []any:
		for _, e := range v {
			out = append(out, handlersInRouteOrder(e)...)
		}
	}
	return out
}

// TestAdaptsEverySubdirective adapts a site that uses every subdirective of
// this grammar and checks the handler JSON field by field, and that
// llm_ratelimit is ordered before reverse_proxy without an order line even
// though the site lists reverse_proxy first.
func TestAdaptsEverySubdirective(t *testing.T) {
	hashed := sha256.Sum256([]byte("sk-hashed-key"))
	hashedSpec := "sha256:" + hex.EncodeToString(hashed[:])
	body := `{
	admin off
}
:8080 {
	reverse_proxy 127.0.0.1:9
	llm_ratelimit /v1/* {
		zone team
		key {header.X-Team}
		format openai
		max_body 10MB
		rpm 60
		tpm 100000
		itpm 80000
		otpm 20000
		concurrent 4
		api_key sk-gold-key gold # named before the tier is defined
		tier gold {
			rpm 600
			tpm 1000000
			itpm 800000
			otpm 200000
			concurrent 40
		}
		tier free {
			rpm 3
		}
		api_key ` + hashedSpec + ` free
		keys_file /etc/caddy/llm-keys.txt
		require_known_keys
		model gpt-4o {
			rpm 30
			tpm 50000
			itpm 40000
			otpm 10000
			context_window 128000
			max_output 16384
			token_ratio 1.3
			image_tokens 800
		}
		model claude-* {
			context_window 200000
			token_ratio 1.25
		}
		default_max_output 2048
		headers off
		dry_run
		upstream {
			rpm 1000
			tpm 1000000
			itpm 800000
			otpm 200000
			concurrent 64
		}
		max_wait 30s
		max_queue 500
		max_keys 5000
		store redis {
			address 127.0.0.1:6379
			prefix gw:
			fail closed
			timeout 50ms
		}
		retry {
			attempts 6
			base 500ms
			max 30s
			jitter 0.3
			statuses 429 529
			max_total 90s
		}
	}
}
`
	out, err := adaptCaddyfileForTest(body)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("adapted config is not JSON: %v\n%s", err, out)
	}
	handlers := handlersInRouteOrder(cfg)
	rl, rp := -1, -1
	for i, h := range handlers {
		switch h["handler"] {
		case "llm_ratelimit":
			rl = i
		case "reverse_proxy":
			rp = i
		}
	}
	if rl < 0 || rp < 0 {
		t.Fatalf("want llm_ratelimit and reverse_proxy handlers, got %v\n%s", handlers, out)
	}
	if rl > rp {
		t.Errorf("llm_ratelimit (position %d) comes after reverse_proxy (position %d)\n%s", rl, rp, out)
	}
	// The matcher is Caddy's: it lands on the route, not in the handler.
	if !strings.Contains(string(out), `"path":["/v1/*"]`) {
		t.Errorf("matcher /v1/* missing from the adapted config\n%s", out)
	}

	off := false
	attempts, jitter := 6, 0.3
	want := Handler{
		Zone:    "team",
		Key:     "{http.request.header.X-Team}", // Caddy expands the shorthand
		Format:  "openai",
		MaxBody: 10_000_000,
		Limits:  Limits{RPM: 60, TPM: 100000, ITPM: 80000, OTPM: 20000, Concurrent: 4},
		Tiers: map[string]Tier{
			"gold": {Limits: Limits{RPM: 600, TPM: 1000000, ITPM: 800000, OTPM: 200000, Concurrent: 40}},
			"free": {Limits: Limits{RPM: 3}},
		},
		APIKeys: []APIKey{
			{Key: "sk-gold-key", Tier: "gold"},
			{Key: hashedSpec, Tier: "free"},
		},
		KeysFile:         "/etc/caddy/llm-keys.txt",
		RequireKnownKeys: true,
		Models: []Model{
			{
				Name:          "gpt-4o",
				Limits:        Limits{RPM: 30, TPM: 50000, ITPM: 40000, OTPM: 10000},
				ContextWindow: 128000,
				MaxOutput:     16384,
				TokenRatio:    1.3,
				ImageTokens:   800,
			},
			{Name: "claude-*", ContextWindow: 200000, TokenRatio: 1.25},
		},
		DefaultMaxOutput: 2048,
		Headers:          &off,
		DryRun:           true,
		Upstream:         &Account{Limits: Limits{RPM: 1000, TPM: 1000000, ITPM: 800000, OTPM: 200000, Concurrent: 64}},
		MaxWait:          caddy.Duration(30 * time.Second),
		MaxQueue:         500,
		MaxKeys:          5000,
		Store:            &StoreConfig{Redis: &RedisConfig{Address: "127.0.0.1:6379", Prefix: "gw:", Fail: "closed", Timeout: caddy.Duration(50 * time.Millisecond)}},
		Retry: &RetryConfig{
			Attempts: &attempts,
			Base:     caddy.Duration(500 * time.Millisecond),
			Max:      caddy.Duration(30 * time.Second),
			Jitter:   &jitter,
			Statuses: []int{429, 529},
			MaxTotal: caddy.Duration(90 * time.Second),
		},
	}
	wantJSON, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var wantMap map[string]any
	if err := json.Unmarshal(wantJSON, &wantMap); err != nil {
		t.Fatal(err)
	}
	wantMap["handler"] = "llm_ratelimit"
	if got := handlers[rl]; !reflect.DeepEqual(got, wantMap) {
		gotJSON, _ := json.MarshalIndent(got, "", "  ")
		wantIndented, _ := json.MarshalIndent(wantMap, "", "  ")
		t.Errorf("llm_ratelimit handler JSON:\n got %s\nwant %s", gotJSON, wantIndented)
	}
}

// TestUnmarshalsEachSubdirective feeds one subdirective at a time to
// UnmarshalCaddyfile and compares the struct it fills.
func TestUnmarshalsEachSubdirective(t *testing.T) {
	on, off := true, false
	hashed := sha256.Sum256([]byte("sk-x"))
	hashedSpec := "sha256:" + hex.EncodeToString(hashed[:])
	for _, tc := range []struct {
		name  string
		input string
		want  Handler
	}{
		{"no block at all", `llm_ratelimit`, Handler{}},
		{"empty block", `llm_ratelimit {
		}`, Handler{}},
		{"zone", `llm_ratelimit {
			zone team-a
		}`, Handler{Zone: "team-a"}},
		{"key template", `llm_ratelimit {
			key "{http.request.header.X-Team}-{http.request.header.X-Project}"
		}`, Handler{Key: "{http.request.header.X-Team}-{http.request.header.X-Project}"}},
		{"format auto", `llm_ratelimit {
			format auto
		}`, Handler{Format: "auto"}},
		{"format openai", `llm_ratelimit {
			format openai
		}`, Handler{Format: "openai"}},
		{"format anthropic", `llm_ratelimit {
			format anthropic
		}`, Handler{Format: "anthropic"}},
		{"format gemini", `llm_ratelimit {
			format gemini
		}`, Handler{Format: "gemini"}},
		{"max_keys -1 for no bound", `llm_ratelimit {
			max_keys -1
		}`, Handler{MaxKeys: -1}},
		{"max_body in MiB", `llm_ratelimit {
			max_body 16MiB
		}`, Handler{MaxBody: 16 << 20}},
		{"max_body in MB", `llm_ratelimit {
			max_body 10MB
		}`, Handler{MaxBody: 10_000_000}},
		{"max_body in plain bytes", `llm_ratelimit {
			max_body 4096
		}`, Handler{MaxBody: 4096}},
		{"rpm", `llm_ratelimit {
			rpm 60
		}`, Handler{Limits: Limits{RPM: 60}}},
		{"tpm", `llm_ratelimit {
			tpm 90000
		}`, Handler{Limits: Limits{TPM: 90000}}},
		{"itpm", `llm_ratelimit {
			itpm 70000
		}`, Handler{Limits: Limits{ITPM: 70000}}},
		{"otpm", `llm_ratelimit {
			otpm 20000
		}`, Handler{Limits: Limits{OTPM: 20000}}},
		{"concurrent", `llm_ratelimit {
			concurrent 8
		}`, Handler{Limits: Limits{Concurrent: 8}}},
		{"tier with every limit", `llm_ratelimit {
			tier pro {
				rpm 600
				tpm 2000000
				itpm 1500000
				otpm 500000
				concurrent 50
			}
		}`, Handler{Tiers: map[string]Tier{"pro": {Limits: Limits{RPM: 600, TPM: 2000000, ITPM: 1500000, OTPM: 500000, Concurrent: 50}}}}},
		{"tier with an empty block inherits everything", `llm_ratelimit {
			tier plain {
			}
		}`, Handler{Tiers: map[string]Tier{"plain": {}}}},
		{"api_key raw", `llm_ratelimit {
			tier pro {
				rpm 1
			}
			api_key sk-x pro
		}`, Handler{Tiers: map[string]Tier{"pro": {Limits: Limits{RPM: 1}}}, APIKeys: []APIKey{{Key: "sk-x", Tier: "pro"}}}},
		{"api_key hashed, before its tier", `llm_ratelimit {
			api_key ` + hashedSpec + ` pro
			tier pro {
				rpm 1
			}
		}`, Handler{Tiers: map[string]Tier{"pro": {Limits: Limits{RPM: 1}}}, APIKeys: []APIKey{{Key: hashedSpec, Tier: "pro"}}}},
		{"keys_file", `llm_ratelimit {
			keys_file /etc/caddy/keys.txt
		}`, Handler{KeysFile: "/etc/caddy/keys.txt"}},
		{"require_known_keys", `llm_ratelimit {
			require_known_keys
		}`, Handler{RequireKnownKeys: true}},
		{"model with everything", `llm_ratelimit {
			model gpt-4o {
				rpm 10
				tpm 20
				itpm 30
				otpm 40
				context_window 128000
				max_output 16384
				token_ratio 1.3
				image_tokens 765
			}
		}`, Handler{Models: []Model{{
			Name:          "gpt-4o",
			Limits:        Limits{RPM: 10, TPM: 20, ITPM: 30, OTPM: 40},
			ContextWindow: 128000,
			MaxOutput:     16384,
			TokenRatio:    1.3,
			ImageTokens:   765,
		}}}},
		{"models keep their order", `llm_ratelimit {
			model claude-* {
				token_ratio 1.25
			}
			model "gpt-4o*" {
				max_output 8192
			}
		}`, Handler{Models: []Model{{Name: "claude-*", TokenRatio: 1.25}, {Name: "gpt-4o*", MaxOutput: 8192}}}},
		{"default_max_output", `llm_ratelimit {
			default_max_output 2048
		}`, Handler{DefaultMaxOutput: 2048}},
		{"headers on", `llm_ratelimit {
			headers on
		}`, Handler{Headers: &on}},
		{"headers off", `llm_ratelimit {
			headers off
		}`, Handler{Headers: &off}},
		{"dry_run", `llm_ratelimit {
			dry_run
		}`, Handler{DryRun: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Handler
			if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(tc.want)
				t.Errorf("got  %s\nwant %s", g, w)
			}
		})
	}
}

// TestRejectsBadConfigsWithLine adapts a site whose llm_ratelimit block
// starts on line 2 (the case's first line is line 3) and checks that each
// error names the offending subdirective or value and the line it is on.
func TestRejectsBadConfigsWithLine(t *testing.T) {
	for _, tc := range []struct {
		name   string
		block  string   // lines inside llm_ratelimit { ... }, from line 3
		want   []string // substrings of the error
		secret string   // must not appear in the error
	}{
		{name: "unknown subdirective", block: "burst 10",
			want: []string{`unknown subdirective "burst"`, "Caddyfile:3"}},
		{name: "upstream with two names", block: "upstream openai eu {\n\trpm 1\n}",
			want: []string{"upstream openai: want one name", "Caddyfile:3"}},
		{name: "duplicate account names", block: "upstream a {\n\trpm 1\n}\nupstream b {\n\trpm 1\n}\nupstream a {\n\trpm 2\n}",
			want: []string{"upstream a: defined twice", "Caddyfile:9"}},
		{name: "named after unnamed", block: "upstream {\n\trpm 1\n}\nupstream a {\n\trpm 1\n}",
			want: []string{"cannot be mixed with the unnamed block", "Caddyfile:6"}},
		{name: "unnamed after named", block: "upstream a {\n\trpm 1\n}\nupstream {\n\trpm 1\n}",
			want: []string{"an unnamed block cannot be mixed with named upstream blocks", "Caddyfile:6"}},
		{name: "two unnamed upstreams", block: "upstream {\n\trpm 1\n}\nupstream {\n\trpm 1\n}",
			want: []string{"upstream: given twice", "Caddyfile:6"}},
		{name: "header_up without a value", block: "upstream a {\n\theader_up Authorization\n}",
			want: []string{"upstream a: header_up: want <field> <value>", "Caddyfile:4"}},
		{name: "header_up twice for one field", block: "upstream a {\n\theader_up X-A 1\n\theader_up x-a 2\n}",
			want: []string{"upstream a: header_up x-a: given twice", "Caddyfile:5"}},
		{name: "malformed models glob", block: "upstream a {\n\tmodels gpt-4o [gpt\n}",
			want: []string{"upstream a: models: model [gpt: bad glob pattern", "Caddyfile:4"}},
		{name: "models without a name", block: "upstream a {\n\tmodels\n}",
			want: []string{"upstream a: models: want one or more", "Caddyfile:4"}},
		{name: "priority not a number", block: "upstream a {\n\tpriority high\n}",
			want: []string{"upstream a: priority: want an integer", `"high"`, "Caddyfile:4"}},
		{name: "unknown lane", block: "tier t {\n\tlane fast\n}",
			want: []string{"tier t: lane: must be interactive or batch", `"fast"`, "Caddyfile:4"}},
		{name: "learn_limits maybe", block: "learn_limits maybe",
			want: []string{"learn_limits: must be on or off", "Caddyfile:3"}},
		{name: "account named default", block: "upstream default {\n\trpm 1\n}",
			want: []string{`the name "default" is the unnamed block's`, "Caddyfile:3"}},
		{name: "upstream unknown limit", block: "upstream {\n\tburst 5\n}",
			want: []string{"upstream", `unknown subdirective "burst"`, "Caddyfile:4"}},
		{name: "upstream negative rpm", block: "upstream {\n\trpm -5\n}",
			want: []string{"upstream", "rpm", "Caddyfile:4"}},
		{name: "store other than redis", block: "store memcached {\n\taddress x:1\n}",
			want: []string{`store: want "redis"`, "Caddyfile:3"}},
		{name: "store redis fail mode", block: "store redis {\n\taddress x:1\n\tfail maybe\n}",
			want: []string{"store redis fail", "maybe", "Caddyfile:5"}},
		{name: "store redis without an address", block: "store redis {\n\tprefix p\n}",
			want: []string{"address or url is required", "Caddyfile:"}},
		{name: "max_wait not a duration", block: "max_wait forever",
			want: []string{"max_wait", "forever", "Caddyfile:3"}},
		{name: "max_queue zero", block: "max_queue 0",
			want: []string{"max_queue", "Caddyfile:3"}},
		{name: "retry neither off nor a block", block: "retry on",
			want: []string{`retry: want "off" or a block`, "Caddyfile:3"}},
		{name: "retry jitter outside 0..1", block: "retry {\n\tjitter 1.5\n}",
			want: []string{"retry jitter", "1.5", "Caddyfile:4"}},
		{name: "retry status not an error status", block: "retry {\n\tstatuses 429 200\n}",
			want: []string{"retry statuses", "200", "Caddyfile:4"}},
		{name: "retry unknown subdirective", block: "retry {\n\tbackoff 1s\n}",
			want: []string{`retry: unknown subdirective "backoff"`, "Caddyfile:4"}},
		{name: "retry bad duration", block: "retry {\n\tmax_total soon\n}",
			want: []string{"retry max_total", "soon", "Caddyfile:4"}},
		{name: "unknown subdirective inside a tier", block: "tier pro {\n\tburst 5\n}",
			want: []string{"tier pro", `unknown subdirective "burst"`, "Caddyfile:4"}},
		{name: "arguments after the directive name", block: "}\nllm_ratelimit /v1/* extra {",
			want: []string{"wrong argument count", "extra", "Caddyfile:4"}},
		{name: "rpm without a value", block: "rpm",
			want: []string{"rpm: wants one argument", "Caddyfile:3"}},
		{name: "tpm with two values", block: "tpm 1 2",
			want: []string{"tpm: wants one argument", "Caddyfile:3"}},
		{name: "non-integer rpm", block: "rpm lots",
			want: []string{"rpm: must be a positive integer", `"lots"`, "Caddyfile:3"}},
		{name: "zero rpm", block: "zone z\nrpm 0",
			want: []string{"rpm: must be a positive integer, got 0", "Caddyfile:4"}},
		{name: "negative concurrent", block: "concurrent -3",
			want: []string{"concurrent: must be a positive integer, got -3", "Caddyfile:3"}},
		{name: "fractional itpm", block: "itpm 1.5",
			want: []string{"itpm: must be a positive integer", "Caddyfile:3"}},
		{name: "negative otpm in a tier", block: "tier pro {\n\totpm -1\n}",
			want: []string{"tier pro: otpm: must be a positive integer", "Caddyfile:4"}},
		{name: "zero default_max_output", block: "default_max_output 0",
			want: []string{"default_max_output: must be a positive integer", "Caddyfile:3"}},
		{name: "zero context_window in a model", block: "model gpt-4o {\n\tcontext_window 0\n}",
			want: []string{"model gpt-4o: context_window: must be a positive integer", "Caddyfile:4"}},
		{name: "bad size", block: "max_body sixteen",
			want: []string{"max_body: bad size", `"sixteen"`, "Caddyfile:3"}},
		{name: "zero size", block: "max_body 0MB",
			want: []string{"max_body: must be a positive size", "Caddyfile:3"}},
		{name: "bad format", block: "format cohere",
			want: []string{"format: must be auto or one of " + strings.Join(dialectNames(), ", "), `"cohere"`, "Caddyfile:3"}},
		{name: "headers neither on nor off", block: "headers yes",
			want: []string{"headers: must be on or off", `"yes"`, "Caddyfile:3"}},
		{name: "dry_run with an argument", block: "dry_run yes",
			want: []string{"dry_run: takes no arguments", "Caddyfile:3"}},
		{name: "non-numeric token_ratio", block: "model gpt-4o {\n\ttoken_ratio high\n}",
			want: []string{"model gpt-4o: token_ratio: must be a positive number", `"high"`, "Caddyfile:4"}},
		{name: "zero token_ratio", block: "model gpt-4o {\n\ttoken_ratio 0\n}",
			want: []string{"token_ratio: must be a positive number", "Caddyfile:4"}},
		{name: "negative token_ratio", block: "model gpt-4o {\n\ttoken_ratio -1.2\n}",
			want: []string{"token_ratio: must be a positive number", "Caddyfile:4"}},
		{name: "NaN token_ratio", block: "model gpt-4o {\n\ttoken_ratio NaN\n}",
			want: []string{"token_ratio: must be a positive number", "Caddyfile:4"}},
		{name: "duplicate tier", block: "tier pro {\n\trpm 1\n}\ntier pro {\n\trpm 2\n}",
			want: []string{"tier pro: defined twice", "Caddyfile:6"}},
		{name: "duplicate model", block: "model gpt-4o {\n\trpm 1\n}\nmodel gpt-4o {\n\trpm 2\n}",
			want: []string{"model gpt-4o: defined twice", "Caddyfile:6"}},
		{name: "tier nested in a tier", block: "tier pro {\n\trpm 1\n\ttier free {\n\t\trpm 1\n\t}\n}",
			want: []string{"tier pro", "a tier block cannot be nested", "Caddyfile:5"}},
		{name: "model nested in a tier", block: "tier pro {\n\tmodel gpt-4o {\n\t\trpm 1\n\t}\n}",
			want: []string{"tier pro", "a model block cannot be nested", "Caddyfile:4"}},
		{name: "tier without a block", block: "tier pro\nrpm 5",
			want: []string{"tier pro: expected a block", "Caddyfile:3"}},
		{name: "tier without a name", block: "tier {\n\trpm 1\n}",
			want: []string{"tier: wants one argument", "Caddyfile:3"}},
		{name: "block after a plain setting", block: "rpm 10 {\n\tburst 5\n}",
			want: []string{"rpm: takes no block", "Caddyfile:3"}},
		{name: "concurrent in a model", block: "model gpt-4o {\n\tconcurrent 2\n}",
			want: []string{"model gpt-4o: concurrent is not supported per model", "Caddyfile:4"}},
		{name: "bad glob in a model name", block: `model "gpt-[" {` + "\n\trpm 1\n}",
			want: []string{"model gpt-[: bad glob pattern", "Caddyfile:3"}},
		{name: "api_key naming an undefined tier", block: "api_key sk-secret-one golden\ntier gold {\n\trpm 1\n}",
			want: []string{`api_key: unknown tier "golden"`, "Caddyfile:3"}, secret: "sk-secret-one"},
		{name: "api_key with one argument", block: "api_key sk-secret-two",
			want: []string{"api_key: want <key | sha256:<hex>> <tier>, got 1 arguments", "Caddyfile:3"}, secret: "sk-secret-two"},
		{name: "api_key with a bad hash", block: "tier pro {\n\trpm 1\n}\napi_key sha256:abcd pro",
			want: []string{"api_key: sha256: key must be 64 hex digits", "Caddyfile:6"}},
		{name: "api_key given twice", block: "tier pro {\n\trpm 1\n}\napi_key sk-secret-three pro\napi_key sk-secret-three pro",
			want: []string{"api_key: the same key is given twice", "Caddyfile:7"}, secret: "sk-secret-three"},
		{name: "keys_file given twice", block: "keys_file a.txt\nkeys_file b.txt",
			want: []string{"keys_file: given twice", "Caddyfile:4"}},
		{name: "zone given twice", block: "zone a\nrpm 1\nzone b",
			want: []string{"zone: given twice", "Caddyfile:5"}},
		{name: "rpm given twice in a tier", block: "tier pro {\n\trpm 1\n\trpm 2\n}",
			want: []string{"tier pro: rpm: given twice", "Caddyfile:5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := ":8080 {\n\tllm_ratelimit {\n" + indentCaddyfileLines(tc.block, "\t\t") + "\n\t}\n\treverse_proxy 127.0.0.1:9\n}\n"
			_, err := adaptCaddyfileForTest(body)
			if err == nil {
				t.Fatalf("no error for:\n%s", body)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
				t.Errorf("error %q shows the API key", err)
			}
		})
	}
}

// TestValidateGivesTheCaddyfileErrors checks that every value the
// Caddyfile parser rejects by range or value is rejected by Validate too
// when a JSON config holds it, with the same message: the check is defined
// once, and the Caddyfile error only adds the file and line.
func TestValidateGivesTheCaddyfileErrors(t *testing.T) {
	attempts, jitter := 101, 1.5
	redis := func(rc RedisConfig) *StoreConfig { return &StoreConfig{Redis: &rc} }
	for _, tc := range []struct {
		name  string
		block string  // lines inside llm_ratelimit { ... }, from line 3
		json  Handler // the same value in a JSON config
		want  string  // in both errors; empty: Validate's whole message
	}{
		{name: "format", block: "format cohere", json: Handler{Format: "cohere"}},
		{name: "rpm", block: "rpm -5", json: Handler{Limits: Limits{RPM: -5}}},
		{name: "tier limit", block: "tier pro {\n\totpm -1\n}",
			json: Handler{Tiers: map[string]Tier{"pro": {Limits: Limits{OTPM: -1}}}}},
		{name: "tier name", block: "tier \"\" {\n}", json: Handler{Tiers: map[string]Tier{"": {}}}},
		{name: "upstream limit", block: "upstream {\n\tconcurrent -2\n}",
			json: Handler{Upstream: &Account{Limits: Limits{Concurrent: -2}}}},
		{name: "model limit", block: "model m {\n\titpm -3\n}",
			json: Handler{Models: []Model{{Name: "m", Limits: Limits{ITPM: -3}}}}},
		{name: "model context_window", block: "model m {\n\tcontext_window -1\n}",
			json: Handler{Models: []Model{{Name: "m", ContextWindow: -1}}}},
		{name: "model max_output", block: "model m {\n\tmax_output -1\n}",
			json: Handler{Models: []Model{{Name: "m", MaxOutput: -1}}}},
		{name: "model image_tokens", block: "model m {\n\timage_tokens -1\n}",
			json: Handler{Models: []Model{{Name: "m", ImageTokens: -1}}}},
		{name: "model token_ratio", block: "model m {\n\ttoken_ratio 101\n}",
			json: Handler{Models: []Model{{Name: "m", TokenRatio: 101}}}},
		{name: "model glob", block: `model "gpt-[" {` + "\n}", json: Handler{Models: []Model{{Name: "gpt-["}}}},
		{name: "model name", block: `model "" {` + "\n}", json: Handler{Models: []Model{{}}}},
		{name: "model given twice", block: "model m {\n}\nmodel m {\n}",
			json: Handler{Models: []Model{{Name: "m"}, {Name: "m"}}}},
		{name: "max_wait", block: "max_wait -5s", json: Handler{MaxWait: caddy.Duration(-5 * time.Second)}},
		{name: "max_queue", block: "max_queue -1", json: Handler{MaxQueue: -1}},
		{name: "max_keys", block: "max_keys -2", json: Handler{MaxKeys: -2}},
		{name: "default_max_output", block: "default_max_output -1", json: Handler{DefaultMaxOutput: -1}},
		{name: "store redis fail", block: "store redis {\n\taddress x:1\n\tfail maybe\n}",
			json: Handler{Store: redis(RedisConfig{Address: "x:1", Fail: "maybe"})}},
		{name: "store redis timeout", block: "store redis {\n\taddress x:1\n\ttimeout -1s\n}",
			json: Handler{Store: redis(RedisConfig{Address: "x:1", Timeout: caddy.Duration(-time.Second)})}},
		{name: "store redis target", block: "store redis {\n\tprefix p\n}",
			json: Handler{Store: redis(RedisConfig{Prefix: "p"})}},
		{name: "retry attempts", block: "retry {\n\tattempts 101\n}",
			json: Handler{Retry: &RetryConfig{Attempts: &attempts}}},
		{name: "retry base", block: "retry {\n\tbase -1s\n}",
			json: Handler{Retry: &RetryConfig{Base: caddy.Duration(-time.Second)}}},
		{name: "retry max", block: "retry {\n\tmax -1s\n}",
			json: Handler{Retry: &RetryConfig{Max: caddy.Duration(-time.Second)}}},
		{name: "retry max_total", block: "retry {\n\tmax_total -1s\n}",
			json: Handler{Retry: &RetryConfig{MaxTotal: caddy.Duration(-time.Second)}}},
		{name: "retry jitter", block: "retry {\n\tjitter 1.5\n}", json: Handler{Retry: &RetryConfig{Jitter: &jitter}}},
		{name: "retry statuses", block: "retry {\n\tstatuses 429 200\n}",
			json: Handler{Retry: &RetryConfig{Statuses: []int{429, 200}}}},
		{name: "api_key given twice", block: "tier pro {\n}\napi_key sk-twice pro\napi_key sk-twice pro",
			json: Handler{Tiers: map[string]Tier{"pro": {}}, APIKeys: []APIKey{{Key: "sk-twice", Tier: "pro"}, {Key: "sk-twice", Tier: "pro"}}},
			want: "the same key is given twice"},
		{name: "api_key with an empty tier", block: "api_key sk-x \"\"",
			json: Handler{APIKeys: []APIKey{{Key: "sk-x"}}}, want: `unknown tier ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			jsonErr := tc.json.Validate()
			if jsonErr == nil {
				t.Fatalf("Validate accepts %+v", tc.json)
			}
			body := ":8080 {\n\tllm_ratelimit {\n" + indentCaddyfileLines(tc.block, "\t\t") + "\n\t}\n}\n"
			_, cfErr := adaptCaddyfileForTest(body)
			if cfErr == nil {
				t.Fatalf("the Caddyfile parser accepts:\n%s", body)
			}
			want := tc.want
			if want == "" {
				want = jsonErr.Error()
			}
			for what, err := range map[string]error{"Validate": jsonErr, "Caddyfile": cfErr} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%s error %q does not contain %q", what, err, want)
				}
			}
			if !strings.Contains(cfErr.Error(), "Caddyfile:") {
				t.Errorf("Caddyfile error %q has no position", cfErr)
			}
			if strings.Contains(jsonErr.Error(), "sk-") || strings.Contains(cfErr.Error(), "sk-") {
				t.Errorf("an error shows the API key: %q / %q", jsonErr, cfErr)
			}
		})
	}
}

// TestReportsDeferredAPIKeyErrorWithImportChain checks that the api_key
// check done at the end of the block still reports like d.Errf does when
// the line came from an imported snippet.
func TestReportsDeferredAPIKeyErrorWithImportChain(t *testing.T) {
	body := `(keys) {
	api_key sk-x nosuchtier
}
:8080 {
	llm_ratelimit {
		import keys
	}
}
`
	_, err := adaptCaddyfileForTest(body)
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{`api_key: unknown tier "nosuchtier"`, "Caddyfile:2", "import chain"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

// TestRejectsAtProvisionWhatTheCaddyfileCannotSee covers mistakes that only
// show when the config is provisioned (caddy.Validate provisions every
// module without starting servers): the keys file is read then. The
// Caddyfile line is not known at that point, so these assert that the
// message names the field (keys_file) instead of a line.
func TestRejectsAtProvisionWhatTheCaddyfileCannotSee(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.txt", "# team keys\nsk-a pro\n\nsk-b pro # trailing comment\n")
	unknownTier := write("unknown-tier.txt", "sk-a pro\nsk-b platinum\n")
	malformed := write("malformed.txt", "sk-a pro\nsk-b\n")
	missing := filepath.Join(dir, "does-not-exist.txt")

	for _, tc := range []struct {
		name      string
		keysFile  string
		wantError []string // nil: must validate
	}{
		{"a good keys_file provisions", good, nil},
		{"keys_file that does not exist", missing, []string{"keys_file", "does-not-exist.txt"}},
		{"keys_file naming an unknown tier", unknownTier, []string{"keys_file", `unknown tier "platinum"`}},
		{"keys_file with a malformed line", malformed, []string{"keys_file", "malformed.txt:2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := fmt.Sprintf(`{
	admin off
}
http://127.0.0.1:29471 {
	llm_ratelimit {
		zone caddyfile-test-provision
		tier pro {
			rpm 10
		}
		keys_file %q
	}
	reverse_proxy 127.0.0.1:9
}
`, tc.keysFile)
			out, err := adaptCaddyfileForTest(body)
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var cfg caddy.Config
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			err = caddy.Validate(&cfg)
			if tc.wantError == nil {
				if err != nil {
					t.Fatalf("valid config rejected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error for keys_file %s", tc.keysFile)
			}
			for _, w := range tc.wantError {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// indentCaddyfileLines prefixes every line of s.
func indentCaddyfileLines(s, prefix string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}
