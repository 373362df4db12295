// Command corpus generates the estimator test corpus: realistic LLM request
// bodies of many kinds of text in every request format the plugin reads,
// with reference token counts from real BPE tokenizers.
//
//	cd tools/corpus && go run . -out ../../testdata/corpus
//
// The output is a pure function of the fixed source files (listed, with
// their SHA-256, in sources.json) and of the seeds below: running it twice
// gives byte-identical files.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/tiktoken-go/tokenizer"
)

const (
	seedPrefix = "caddy-llm-ratelimit/corpus/v1/"
	perKind    = 12
	// tokenizerVersion is the pinned module version, recorded in the outputs.
	tokenizerVersion = "github.com/tiktoken-go/tokenizer v0.10.0"
)

// sizeLadder is the text budget of body j of every kind, before a ±10 %
// jitter: from ~200 bytes to ~40 KB, evenly on a log scale.
var sizeLadder = []int{200, 350, 600, 1000, 1700, 2800, 4500, 7000, 11000, 17000, 26000, 40000}

// Entry is one line of reference.json.
type Entry struct {
	File, Path, Format, Kind, What string
	BodyBytes, TextBytes           int
	O200k, Cl100k                  int
	Messages, MaxOutput, N         int
	Shape                          string // not written; for the summary
}

func (e Entry) Obj() Obj {
	return Obj{
		{"file", e.File},
		{"path", e.Path},
		{"format", e.Format},
		{"kind", e.Kind},
		{"what", e.What},
		{"body_bytes", e.BodyBytes},
		{"text_bytes", e.TextBytes},
		{"text_tokens_o200k", e.O200k},
		{"text_tokens_cl100k", e.Cl100k},
		{"messages", e.Messages},
		{"max_output", e.MaxOutput},
		{"n", e.N},
		{"reference_input_tokens", e.O200k + 3*e.Messages},
	}
}

func seedFor(kind string, j int) int64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s%s/%d", seedPrefix, kind, j)
	return int64(h.Sum64() & (1<<63 - 1))
}

func pickStyle(r *rand.Rand) Style {
	switch k := r.Intn(10); {
	case k < 4:
		return StyleCompact
	case k < 7:
		return StylePretty
	case k < 9:
		return StylePython
	}
	return StylePythonIndent
}

func main() {
	out := flag.String("out", "", "output directory (e.g. ../../testdata/corpus)")
	vim := flag.String("vim", "/usr/share/vim/vim*", "glob of the vim runtime directory holding tutor/")
	table := flag.String("table", "", "also measure the estimator's cost table into this file (e.g. ../../internal/costmodel/costtable.bin.gz)")
	quiet := flag.Bool("q", false, "do not print the summary")
	flag.Parse()
	if *out == "" && *table == "" {
		fmt.Fprintln(os.Stderr, "usage: go run . -out ../../testdata/corpus -table ../../internal/costmodel/costtable.bin.gz")
		os.Exit(2)
	}
	if err := run(*out, *table, *vim, *quiet); err != nil {
		fmt.Fprintln(os.Stderr, "corpus:", err)
		os.Exit(1)
	}
}

func run(out, table, vimGlob string, quiet bool) error {
	roots, err := findRoots(vimGlob)
	if err != nil {
		return err
	}
	loader := newLoader(roots)
	provs, err := providers(loader)
	if err != nil {
		return err
	}
	if table != "" {
		if err := writeCostTable(table, loader, provs, quiet); err != nil {
			return err
		}
	}
	if out == "" {
		return nil
	}

	// Build every body (sequentially: providers cache parsed documents).
	var bodies []*Body
	var files []string
	for ki, kind := range kinds {
		for j := range perKind {
			r := rand.New(rand.NewSource(seedFor(kind, j)))
			size := sizeLadder[j%len(sizeLadder)]
			size += size * (r.Intn(21) - 10) / 100
			si := (7*j + 4*ki) % len(shapes) // 7 is coprime to 15: formats interleave over sizes
			if shapes[si].tools && size < 1500 {
				si = (si + 1) % len(shapes)
			}
			b := &Body{Kind: kind, Style: pickStyle(r)}
			c := &builder{r: r, p: provs[kind], kind: kind, b: b, budget: size}
			shapes[si].build(c)
			b.Desc = shapes[si].name + " | " + b.Desc
			bodies = append(bodies, b)
			files = append(files, fmt.Sprintf("%s/%03d_%s.json", kind, j+1, b.Format))
		}
	}

	// Serialise, re-read and check every body; count its text.
	o200k, err := tokenizer.Get(tokenizer.O200kBase)
	if err != nil {
		return err
	}
	cl100k, err := tokenizer.Get(tokenizer.Cl100kBase)
	if err != nil {
		return err
	}
	entries := make([]Entry, len(bodies))
	data := make([][]byte, len(bodies))
	errs := make([]error, len(bodies))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, b := range bodies {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			data[i], entries[i], errs[i] = finish(files[i], b, o200k, cl100k)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}

	// Write.
	if err := clean(out); err != nil {
		return err
	}
	for i := range bodies {
		p := filepath.Join(out, filepath.FromSlash(files[i]))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data[i], 0o644); err != nil {
			return err
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].File < entries[j].File })
	var ref []any
	for _, e := range entries {
		ref = append(ref, e.Obj())
	}
	if err := os.WriteFile(filepath.Join(out, "reference.json"), append(Encode(ref, StylePretty), '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "sources.json"), append(Encode(manifest(roots, loader), StylePretty), '\n'), 0o644); err != nil {
		return err
	}
	sum := summary(entries)
	if err := os.WriteFile(filepath.Join(out, "README.md"), []byte(corpusReadme(sum)), 0o644); err != nil {
		return err
	}
	if !quiet {
		fmt.Print(sum)
	}
	return nil
}

// finish serialises a body, validates it, extracts its text independently
// and counts it.
func finish(file string, b *Body, o200k, cl100k tokenizer.Codec) ([]byte, Entry, error) {
	fail := func(format string, a ...any) ([]byte, Entry, error) {
		return nil, Entry{}, fmt.Errorf("%s: %s", file, fmt.Sprintf(format, a...))
	}
	raw := Encode(b.Value, b.Style)
	if !json.Valid(raw) {
		return fail("invalid JSON")
	}
	var probe map[string]any
	if err := json.Unmarshal(raw, &probe); err != nil {
		return fail("encoding/json cannot read it: %v", err)
	}
	dv, err := Decode(raw)
	if err != nil {
		return fail("decode: %v", err)
	}
	if !bytes.Equal(Encode(dv, b.Style), raw) {
		return fail("body does not round-trip")
	}
	ex, err := extract(b.Path, dv.(Obj))
	if err != nil {
		return fail("%v", err)
	}
	want := append([]string(nil), b.Pieces...)
	got := append([]string(nil), ex.Pieces...)
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(want, "\x00") != strings.Join(got, "\x00") {
		return fail("extracted text differs from the builder's record (%d vs %d pieces)", len(got), len(want))
	}
	if ex.Messages != b.Messages || ex.MaxOutput != b.MaxOutput || ex.N != b.N {
		return fail("messages/max_output/n %d/%d/%d, builder %d/%d/%d", ex.Messages, ex.MaxOutput, ex.N, b.Messages, b.MaxOutput, b.N)
	}
	e := Entry{File: file, Path: b.Path, Format: b.Format, Kind: b.Kind, BodyBytes: len(raw),
		Messages: ex.Messages, MaxOutput: ex.MaxOutput, N: ex.N, Shape: strings.SplitN(b.Desc, " | ", 2)[0]}
	for _, p := range ex.Pieces {
		e.TextBytes += len(p)
		n1, err := o200k.Count(p)
		if err != nil {
			return fail("o200k: %v", err)
		}
		n2, err := cl100k.Count(p)
		if err != nil {
			return fail("cl100k: %v", err)
		}
		e.O200k += n1
		e.Cl100k += n2
	}
	b.Desc = strings.SplitN(b.Desc, " | ", 2)[1]
	e.What = describe(b, e.TextBytes)
	return raw, e, nil
}

var bodyName = regexp.MustCompile(`^[0-9]{3}_(openai|anthropic|gemini)\.json$`)

// clean removes bodies a previous run wrote, and nothing else.
func clean(out string) error {
	for _, k := range kinds {
		des, err := os.ReadDir(filepath.Join(out, k))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		for _, de := range des {
			if !de.IsDir() && bodyName.MatchString(de.Name()) {
				if err := os.Remove(filepath.Join(out, k, de.Name())); err != nil {
					return err
				}
			}
		}
	}
	return os.MkdirAll(out, 0o755)
}

func manifest(r *Roots, l *Loader) Obj {
	var files []any
	for _, f := range l.Manifest() {
		o := Obj{{"id", f.ID}, {"bytes", f.Raw}, {"sha256", f.SHA256}}
		if f.Xform != "" {
			o = append(o, KV{"transform", f.Xform})
		}
		files = append(files, o)
	}
	return Obj{
		{"generator", "tools/corpus"},
		{"tokenizer", tokenizerVersion},
		{"go", r.GoVersion},
		{"vim_runtime", r.VimDir},
		{"x_text", r.XTextMod},
		{"files", files},
	}
}

type agg struct {
	n, bytes, text, o200k, cl100k, minB, maxB int
}

func (a *agg) add(e Entry) {
	if a.n == 0 || e.TextBytes < a.minB {
		a.minB = e.TextBytes
	}
	a.maxB = max(a.maxB, e.TextBytes)
	a.n++
	a.bytes += e.BodyBytes
	a.text += e.TextBytes
	a.o200k += e.O200k
	a.cl100k += e.Cl100k
}

// summary renders the per-kind, per-format and per-shape tables (Markdown).
func summary(entries []Entry) string {
	var b strings.Builder
	byKind := map[string]*agg{}
	byFormat := map[string]*agg{}
	byShape := map[string]*agg{}
	var all agg
	for _, e := range entries {
		for _, m := range []struct {
			m map[string]*agg
			k string
		}{{byKind, e.Kind}, {byFormat, e.Format + " " + e.Path}, {byShape, e.Shape}} {
			if m.m[m.k] == nil {
				m.m[m.k] = &agg{}
			}
			m.m[m.k].add(e)
		}
		all.add(e)
	}
	row := func(w io.Writer, name string, a *agg) {
		fmt.Fprintf(w, "| %s | %d | %d | %d | %.2f | %.2f | %d–%d |\n", name, a.n, a.o200k, a.cl100k,
			float64(a.text)/float64(a.o200k), float64(a.text)/float64(a.cl100k), a.minB, a.maxB)
	}
	header := "| %s | bodies | o200k tokens | cl100k tokens | bytes/token o200k | bytes/token cl100k | text bytes per body |\n|---|---:|---:|---:|---:|---:|---|\n"
	fmt.Fprintf(&b, header, "kind")
	for _, k := range kinds {
		row(&b, k, byKind[k])
	}
	row(&b, "**all**", &all)
	b.WriteString("\n")
	for _, t := range []struct {
		title string
		m     map[string]*agg
	}{{"format and path", byFormat}, {"shape", byShape}} {
		var keys []string
		for k := range t.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, header, t.title)
		for _, k := range keys {
			row(&b, k, t.m[k])
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "%d bodies, %d body bytes, %d text bytes.\n", all.n, all.bytes, all.text)
	return b.String()
}

func corpusReadme(sum string) string {
	return `# Estimator corpus (generated)

Generated by ` + "`tools/corpus`" + ` — do not edit by hand. Regenerate with:

    cd tools/corpus && go run . -out ../../testdata/corpus

Each ` + "`<kind>/<NNN>_<format>.json`" + ` file is one request body. ` + "`reference.json`" + ` lists, per
body and sorted by file: ` + "`file`, `path`, `format`, `kind`, `what`, `body_bytes`, `text_bytes`,\n`text_tokens_o200k`, `text_tokens_cl100k`, `messages`, `max_output`, `n` and `reference_input_tokens`" + `
(= text_tokens_o200k + 3·messages; there are no images). ` + "`sources.json`" + ` lists every source
file with its SHA-256. See tools/corpus/README.md for the definitions.

Counted with ` + tokenizerVersion + `.

` + sum
}
