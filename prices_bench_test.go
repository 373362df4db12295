package llmratelimit

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// syntheticPricesFile writes a prices file the size of LiteLLM's real one
// (2,984 entries, about 1.6 MB): the sample's rows again and again under
// names of their own.
func syntheticPricesFile(b testing.TB) (path string, size int) {
	b.Helper()
	raw, err := os.ReadFile(litellmSample)
	if err != nil {
		b.Fatal(err)
	}
	var rows map[string]json.RawMessage
	if err := json.Unmarshal(raw, &rows); err != nil {
		b.Fatal(err)
	}
	names := make([]string, 0, len(rows))
	for n := range rows {
		names = append(names, n)
	}
	big := make(map[string]json.RawMessage, 2984)
	for i := range 2984 {
		n := names[i%len(names)]
		big[fmt.Sprintf("%s-%d", n, i)] = rows[n]
	}
	out, err := json.MarshalIndent(big, "", "    ")
	if err != nil {
		b.Fatal(err)
	}
	path = filepath.Join(b.TempDir(), "model_prices_and_context_window.json")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		b.Fatal(err)
	}
	return path, len(out)
}

// BenchmarkLoadPricesFile reads a prices file: the sample, and one the
// size of LiteLLM's real file.
func BenchmarkLoadPricesFile(b *testing.B) {
	big, size := syntheticPricesFile(b)
	for _, c := range []struct{ name, path string }{{"sample", litellmSample}, {"2984-entries", big}} {
		b.Run(c.name, func(b *testing.B) {
			if c.path == big {
				b.SetBytes(int64(size))
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, _, err := loadPricesFile(c.path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPriceLookup is the hot path's lookup of a model's entry: by its
// exact name, by a name resolved before (the cache), and by a name
// resolved each time (a flood of distinct names).
func BenchmarkPriceLookup(b *testing.B) {
	tab, _, err := loadPricesFile(litellmSample)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("exact", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, ok := tab.lookup("gpt-4.1", "openai"); !ok {
				b.Fatal("unpriced")
			}
		}
	})
	b.Run("resolved", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, ok := tab.lookup("anthropic/Claude-Sonnet-4.5-20250929", "anthropic"); !ok {
				b.Fatal("unpriced")
			}
		}
	})
	b.Run("resolve-uncached", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if tab.resolve("anthropic/Claude-Sonnet-4.5-20250929", "anthropic") == nil {
				b.Fatal("unpriced")
			}
		}
	})
	b.Run("unpriced-uncached", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if tab.resolve("vendor/some-model-nobody-prices-20250101", "openai") != nil {
				b.Fatal("priced")
			}
		}
	})
}

// FuzzPricesFile: whatever the file holds, the reader neither panics nor
// prices anything at less than 0 or above the bound, and a table it
// builds answers lookups. (go test -fuzz FuzzPricesFile for more than the
// seeds.)
func FuzzPricesFile(f *testing.F) {
	sample, err := os.ReadFile(litellmSample)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{string(sample), `{}`, `[]`, `{"m":{"input_cost_per_token":1e-06,"input_cost_per_token_above_1k_tokens":2e-06}}`,
		`{"m":{"input_cost_per_token":"x"}}`, `{"a\u002fb":{"output_cost_per_token":1e-309}}`, `{"m":`, `{"m":{}}x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "p.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		tab, _, err := loadPricesFile(path)
		if err != nil {
			return
		}
		for name, fp := range tab.exact {
			for _, p := range append([]price{fp.p}, func() (ps []price) {
				for _, tier := range fp.tiers {
					ps = append(ps, tier.p)
				}
				return ps
			}()...) {
				for _, v := range [...]float64{p.in, p.out, p.cached, p.write} {
					if !(v >= 0 && v <= maxFilePrice*1e9) {
						t.Fatalf("%s: a price of %v nano-dollars per token", name, v)
					}
				}
			}
			tab.lookup(name, "gemini")
			tab.lookup("x/"+name+"-20250101", "openai")
		}
	})
}
