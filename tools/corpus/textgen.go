package main

// Text providers: each kind draws its text from fixed source files (at
// offsets chosen by the body's seeded math/rand) or from a seeded synthetic
// generator. This file holds the provider interface, the file-backed
// provider and the providers that combine others; the synthetic generators
// are in textgen_synth.go and the JSON-document provider in textgen_json.go.

import (
	"math/rand"
	"strings"
	"unicode/utf8"
)

// Labels is an ordered set of source labels.
type Labels []string

func (l *Labels) Add(s string) {
	for _, x := range *l {
		if x == s {
			return
		}
	}
	*l = append(*l, s)
}

// Provider produces about n bytes of one kind of text.
type Provider interface {
	Take(r *rand.Rand, n int, labels *Labels) string
}

// cutAt returns a prefix of s of at most n bytes, ending at a line break
// when lines is set and one is near, else on a rune boundary.
func cutAt(s string, n int, lines bool) string {
	if len(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	if lines {
		if j := strings.LastIndexByte(s[:n+1], '\n'); j > n/2 {
			return s[:j]
		}
		if j := strings.LastIndexByte(s[:n+1], ' '); j > n/2 {
			return s[:j]
		}
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// tidy removes leading blank lines and trailing white space.
func tidy(s string) string {
	s = strings.TrimRight(s, " \t\n")
	for {
		i := strings.IndexByte(s, '\n')
		if i < 0 || strings.TrimSpace(s[:i]) != "" {
			break
		}
		s = s[i+1:]
	}
	return s
}

// FileProvider cuts text out of fixed files.
type FileProvider struct {
	Files []*Loaded
}

func (p *FileProvider) Take(r *rand.Rand, n int, labels *Labels) string {
	i := r.Intn(len(p.Files))
	first := true
	var b strings.Builder
	for guard := 0; b.Len() < n-n/8 && guard < 4*len(p.Files)+4; guard++ {
		f := p.Files[i]
		txt := f.Text
		off := 0
		if first {
			off = r.Intn(len(txt))
			if f.Runes {
				for off < len(txt) && !utf8.RuneStart(txt[off]) {
					off++
				}
			} else if j := strings.IndexByte(txt[off:], '\n'); j >= 0 {
				off += j + 1
			} else {
				off = 0
			}
			first = false
		}
		sep := 0
		if b.Len() > 0 {
			sep = 2
		}
		chunk := tidy(cutAt(txt[off:], n-b.Len()-sep, !f.Runes))
		if chunk != "" {
			if sep > 0 {
				b.WriteString("\n\n")
			}
			b.WriteString(chunk)
			labels.Add(f.Label)
		}
		i = (i + 1) % len(p.Files)
	}
	return b.String()
}

// Gen is one synthetic generator: it returns at least n bytes and a label.
type Gen func(r *rand.Rand, n int) (string, string)

// SynthProvider picks one of its generators per take.
type SynthProvider struct {
	Gens  []Gen
	Lines bool
}

func (p *SynthProvider) Take(r *rand.Rand, n int, labels *Labels) string {
	g := p.Gens[r.Intn(len(p.Gens))]
	s, label := g(r, n)
	labels.Add(label)
	return tidy(cutAt(s, n, p.Lines))
}

// Weighted picks a sub-provider by weight.
type Weighted struct {
	Weights []int
	Ps      []Provider
}

func (w *Weighted) Take(r *rand.Rand, n int, labels *Labels) string {
	total := 0
	for _, x := range w.Weights {
		total += x
	}
	k := r.Intn(total)
	for i, x := range w.Weights {
		if k < x {
			return w.Ps[i].Take(r, n, labels)
		}
		k -= x
	}
	panic("unreachable")
}

// MixedProvider concatenates 2-4 sections of different kinds.
type MixedProvider struct {
	Kinds []string
	Ps    []Provider
}

func (m *MixedProvider) Take(r *rand.Rand, n int, labels *Labels) string {
	k := 2 + r.Intn(3)
	if n < 600 {
		k = 2
	}
	perm := r.Perm(len(m.Ps))[:k]
	var parts []string
	for _, i := range perm {
		var sub Labels
		s := m.Ps[i].Take(r, n/k, &sub)
		if s == "" {
			continue
		}
		labels.Add(m.Kinds[i])
		parts = append(parts, s)
	}
	return strings.Join(parts, "\n\n")
}
