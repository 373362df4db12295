package main

// The JSON-document provider: JSON documents from fixed files, cut to size,
// or synthetic API records, embedded as text.

import (
	"fmt"
	"math/rand"
	"strings"
	"time"
)

func styleWord(st Style) string {
	if st.Indent != "" {
		return "pretty"
	}
	return "minified"
}

// genRecords writes a synthetic API response: a JSON array of records.
func genRecords(r *rand.Rand, n int, st Style) string {
	var recs []any
	doc := func() Obj {
		return Obj{{"data", recs}, {"has_more", true}, {"next_cursor", "0123456789abcdef01234567"}}
	}
	for i := 0; len(recs) == 0 || len(Encode(doc(), st)) < n; i++ {
		t := baseTime.Add(time.Duration(r.Intn(3e7)) * time.Second)
		name := title(randWord(r)) + " " + title(randWord(r))
		tags := []any{}
		for range r.Intn(4) {
			tags = append(tags, randWord(r))
		}
		recs = append(recs, Obj{
			{"id", 1000 + i*7 + r.Intn(7)},
			{"uuid", randUUID(r)},
			{"name", name},
			{"email", strings.ToLower(strings.ReplaceAll(name, " ", ".")) + "@example.com"},
			{"created_at", t.Format(time.RFC3339)},
			{"active", r.Intn(4) != 0},
			{"score", float64(r.Intn(100000)) / 100},
			{"tags", tags},
			{"address", Obj{{"street", fmt.Sprintf("%d %s St", 1+r.Intn(9999), title(randWord(r)))},
				{"city", title(randWord(r))}, {"zip", fmt.Sprintf("%05d", r.Intn(100000))}}},
		})
	}
	if len(recs) > 1 && len(Encode(doc(), st)) > n+n/10 {
		recs = recs[:len(recs)-1]
	}
	return string(Encode(Obj{{"data", recs}, {"has_more", true}, {"next_cursor", randHex(r, 24)}}, st))
}

// JSONProvider embeds JSON documents (from files or synthetic) as text.
type JSONProvider struct {
	Files []*Loaded
	docs  []any
	sizes []int // compact size of each document
}

func (p *JSONProvider) Take(r *rand.Rand, n int, labels *Labels) string {
	st := StyleCompact
	if r.Intn(3) == 0 {
		st = StylePretty
	}
	if r.Intn(4) == 0 {
		labels.Add("synthetic API records, " + styleWord(st))
		return genRecords(r, n, st)
	}
	if p.docs == nil {
		for _, f := range p.Files {
			v, err := Decode([]byte(f.Text))
			if err != nil {
				panic(fmt.Sprintf("%s: %v", f.ID, err))
			}
			p.docs = append(p.docs, v)
			p.sizes = append(p.sizes, len(Encode(v, StyleCompact)))
		}
	}
	budget := n
	if st.Indent != "" {
		budget = n * 2 / 3
	}
	// Only documents big enough for the budget, so that one document fills it.
	var eligible []int
	for i, sz := range p.sizes {
		if sz >= budget*4/5 {
			eligible = append(eligible, i)
		}
	}
	if len(eligible) == 0 {
		for i := range p.sizes {
			eligible = append(eligible, i)
		}
	}
	i := eligible[r.Intn(len(eligible))]
	v := fitJSON(r, p.docs[i], budget)
	labels.Add(p.Files[i].Label + ", " + styleWord(st))
	return string(Encode(v, st))
}

// fitJSON returns a part of v whose compact encoding is about n bytes:
// a run of consecutive members or elements, recursing into one too large.
func fitJSON(r *rand.Rand, v any, n int) any {
	if len(Encode(v, StyleCompact)) <= n {
		return v
	}
	switch x := v.(type) {
	case Obj:
		out := Obj{}
		fitRun(r, n, len(x), func(i int) any { return x[i].V }, func(i int) int { return len(x[i].K) + 4 },
			func(i int, v any) { out = append(out, KV{x[i].K, v}) })
		return out
	case []any:
		out := []any{}
		fitRun(r, n, len(x), func(i int) any { return x[i] }, func(int) int { return 1 },
			func(_ int, v any) { out = append(out, v) })
		return out
	case string:
		return cutAt(x, n, false)
	}
	return v
}

// fitRun chooses a run of consecutive members or elements of a container of
// count items, from a random start, whose compact encoding is about n bytes.
// value(i) is item i's value and overhead(i) the bytes it adds besides it
// (key, quotes, colon, comma). add(i, v) appends item i with value v: its
// own value, or, for the first item that does not fit, one cut to the room
// left when that room is over 40 bytes or nothing was added yet.
func fitRun(r *rand.Rand, n, count int, value func(int) any, overhead func(int) int, add func(i int, v any)) {
	sizes := make([]int, count)
	for i := range count {
		sizes[i] = len(Encode(value(i), StyleCompact)) + overhead(i)
	}
	used, added := 2, 0
	for i := pickStart(r, sizes, n); i < count; i++ {
		if used+sizes[i] <= n {
			add(i, value(i))
			used += sizes[i]
			added++
			continue
		}
		if rem := n - used - overhead(i); rem > 40 || added == 0 {
			add(i, fitJSON(r, value(i), max(rem, 20)))
		}
		break
	}
}

// pickStart chooses a first index whose suffix holds at least n bytes.
func pickStart(r *rand.Rand, sizes []int, n int) int {
	suffix := 0
	last := 0
	for i := len(sizes) - 1; i >= 0; i-- {
		suffix += sizes[i]
		if suffix >= n {
			last = i
			break
		}
	}
	return r.Intn(last + 1)
}
