package main

// Training and evaluation text for the cost tables (costtable.go): the
// corpus's providers with man-db's translated manual pages mixed in, drawn
// with seeds apart from the corpus bodies', and the report of the tables'
// accuracy per kind.

import (
	"fmt"
	"math"
	"math/rand"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/tiktoken-go/tokenizer"
)

func totalBytes(texts []string) (n int) {
	for _, s := range texts {
		n += len(s)
	}
	return n
}

// sampleTexts draws n texts of every kind with seeds under prefix.
func sampleTexts(provs map[string]Provider, prefix string, n int) map[string][]string {
	out := map[string][]string{}
	for _, kind := range kinds {
		for i := range n {
			r := rand.New(rand.NewSource(seedFor(prefix+kind, i)))
			size := sizeLadder[i%len(sizeLadder)]
			var l Labels
			if s := provs[kind].Take(r, size, &l); s != "" {
				out[kind] = append(out[kind], s)
			}
		}
	}
	return out
}

// forKinds runs fn for every kind, two at a time or more, and returns the
// first error.
func forKinds(fn func(ki int, kind string) error) error {
	errs := make([]error, len(kinds))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for ki, kind := range kinds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[ki] = fn(ki, kind)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// manPages are the pages of man-db (priority "important" in Debian, so on
// every stock system), which it ships translated into many languages.
var manPages = []string{"man1/man.1.gz", "man1/apropos.1.gz", "man1/whatis.1.gz", "man1/manpath.1.gz",
	"man8/mandb.8.gz", "man8/catman.8.gz", "man1/zsoelim.1.gz", "man8/accessdb.8.gz", "man5/manpath.5.gz"}

// manLanguages are the translations that training adds to a kind: fluent
// modern prose, which the vim tutors (half commands) and the classical
// texts of the corpus lack. "" is the English original.
var manLanguages = map[string][]string{
	"english_prose":      {""},
	"latin_prose":        {"de", "fr", "es", "pl", "it", "pt", "nl", "sv", "tr"},
	"cyrillic":           {"ru"},
	"japanese":           {"ja"},
	"chinese_simplified": {"zh_CN"},
}

// trainingProviders are the corpus's providers, with the man pages of
// manLanguages mixed in: a third of a kind's training text comes from them.
func trainingProviders(l *Loader, provs map[string]Provider) (map[string]Provider, error) {
	out := map[string]Provider{}
	for k, p := range provs {
		out[k] = p
	}
	for kind, langs := range manLanguages {
		var files []*Loaded
		for _, lang := range langs {
			for _, page := range manPages {
				f, err := l.Load(Src{Root: "man", Path: filepath.Join(lang, page), Label: "man page " + lang, Xform: "man"})
				if err != nil {
					return nil, err
				}
				files = append(files, f)
			}
		}
		out[kind] = &Weighted{Weights: []int{2, 1}, Ps: []Provider{provs[kind], &FileProvider{Files: files}}}
	}
	return out, nil
}

// evaluate reports the estimate's ratio to o200k per kind, on text drawn
// apart from the training text: in aggregate, and the lowest and highest
// of its texts.
func evaluate(provs map[string]Provider, m *model, cls *[256]uint8, enc tokenizer.Codec) (string, error) {
	texts := sampleTexts(provs, "eval/", evalPieces)
	type row struct{ est, ref, lo, hi float64 }
	rows := make([]row, len(kinds))
	err := forKinds(func(ki int, kind string) error {
		r := row{lo: math.Inf(1)}
		for _, s := range texts[kind] {
			_, n, err := tokenStarts(enc, s)
			if err != nil {
				return err
			}
			e := math.Ceil(m.estimate(cls, s))
			r.est += e
			r.ref += float64(n)
			if n >= 40 {
				r.lo, r.hi = min(r.lo, e/float64(n)), max(r.hi, e/float64(n))
			}
		}
		rows[ki] = r
		return nil
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%-30s %7s %7s %7s\n", "kind (evaluation text)", "all", "lowest", "highest")
	var est, ref float64
	for ki, r := range rows {
		fmt.Fprintf(&b, "%-30s %7.3f %7.3f %7.3f\n", kinds[ki], r.est/r.ref, r.lo, r.hi)
		est += r.est
		ref += r.ref
	}
	fmt.Fprintf(&b, "%-30s %7.3f\n", "all", est/ref)
	return b.String(), err
}
