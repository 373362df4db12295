package main

// Chinese characters, one by one. The classes see every CJK ideograph
// alike, but the tokenizer does not: a common character of modern Chinese
// (的, 是, 我) merges with its neighbours into tokens of several
// characters, a rare one (common in classical Chinese) is a token of its
// own or even two or three byte tokens. So each ideograph U+4000-U+9FFF gets
// a correction: the mean, over its occurrences in the training text, of
// the tokens starting inside it less what the tables charge for its three
// bytes, where it follows another character of 2 bytes or more (after a
// space or other ASCII, the token starts at the byte before, which the
// tables charge; there is no correction). A character seen rarely is shrunk toward the mean of characters
// like it in the o200k vocabulary (how many tokens it is alone, and in how
// many tokens of several ideographs it appears). A correction never takes a
// character's charge below zero.

import (
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/tiktoken-go/tokenizer"
)

const (
	hanLo, hanHi = 0x4000, 0xA000 // the ideographs whose UTF-8 starts with 0xE4-0xE9
	numHan       = hanHi - hanLo
)

func isHan(r rune) bool { return r >= hanLo && r < hanHi }

// hanStats sums, per ideograph, the tokens starting inside it less the
// tables' charge for it (weighted), and its occurrences (weighted).
type hanStats struct {
	res, n []float64
}

func newHanStats() hanStats { return hanStats{make([]float64, numHan), make([]float64, numHan)} }

func (h hanStats) merge(o hanStats) {
	for i := range h.res {
		h.res[i] += o.res[i]
		h.n[i] += o.n[i]
	}
}

// measureHan adds the residuals of the ideographs of text.
func measureHan(cls *[256]uint8, c *costs, text string, enc tokenizer.Codec, w float64, h hanStats) error {
	starts, _, err := tokenStarts(enc, text)
	if err != nil {
		return err
	}
	charged := make([]float64, len(text))
	walk(cls, text, func(i, table, idx int) { charged[i] = c[table][idx] })
	for i, r := range text {
		if isHan(r) && afterMultibyte(text, i) {
			got := starts[i] + starts[i+1] + starts[i+2] - charged[i] - charged[i+1] - charged[i+2]
			h.res[r-hanLo] += w * got
			h.n[r-hanLo] += w
		}
	}
	return nil
}

// afterMultibyte reports whether the byte before i is a UTF-8
// continuation byte: the character before is not ASCII.
func afterMultibyte(text string, i int) bool { return i > 0 && text[i-1]&0xC0 == 0x80 }

// hanGroups puts each ideograph in a group by what the o200k vocabulary
// says of it: the tokens it is alone (1 to 3), and the number of tokens of
// several ideographs that hold it (none, 1-3, 4-15, more).
func hanGroups(enc tokenizer.Codec) ([]int, error) {
	merged := make([]int, numHan)
	for id := uint(0); ; id++ {
		s, err := enc.Decode([]uint{id})
		if err != nil || (s == "" && id > 0) {
			break
		}
		if utf8.RuneCountInString(s) < 2 {
			continue
		}
		han := 0
		for _, r := range s {
			if isHan(r) {
				han++
			}
		}
		if han >= 2 {
			for _, r := range s {
				if isHan(r) {
					merged[r-hanLo]++
				}
			}
		}
	}
	groups := make([]int, numHan)
	for i := range groups {
		alone, err := enc.Count(string(rune(hanLo + i)))
		if err != nil {
			return nil, err
		}
		bucket := 3
		switch m := merged[i]; {
		case m == 0:
			bucket = 0
		case m <= 3:
			bucket = 1
		case m <= 15:
			bucket = 2
		}
		groups[i] = (min(max(alone, 1), 3)-1)*4 + bucket
	}
	return groups, nil
}

// hanDeltas turns the statistics into the corrections, in tokens. So that
// no ideograph is charged less than nothing in any context, the floor of a
// correction is the least charge of an ideograph after a continuation byte
// in the contexts seen often in training (seen is the weight of each class
// triple), and such a context charged less is raised to that floor.
func hanDeltas(h hanStats, groups []int, c *costs, seen []float64) []float64 {
	var gRes, gN [12]float64
	for i := range h.res {
		gRes[groups[i]] += h.res[i]
		gN[groups[i]] += h.n[i]
	}
	n := numClasses
	charge := func(c2, c1 int) float64 {
		return c[tNormal][(c2*n+c1)*n+cHan] + c[tNormal][(c1*n+cHan)*n+cCont] + c[tNormal][(cHan*n+cCont)*n+cCont]
	}
	minCharge := math.Inf(1)
	c1 := cCont
	for c2 := range n {
		if seen[(c2*n+c1)*n+cHan] >= 1000 {
			minCharge = min(minCharge, charge(c2, c1))
		}
	}
	for c2 := range n {
		{
			if v := charge(c2, c1); v < minCharge {
				k := (c2*n+c1)*n + cHan
				c[tNormal][k] = math.Ceil((c[tNormal][k]+minCharge-v)*tableCostOne) / tableCostOne
			}
		}
	}
	out := make([]float64, numHan)
	for i := range out {
		prior := 0.0
		if g := groups[i]; gN[g] > 0 {
			prior = gRes[g] / (gN[g] + shrink)
		}
		d := (h.res[i] + shrink*prior) / (h.n[i] + shrink)
		out[i] = math.Round(max(d, -minCharge)*tableCostOne) / tableCostOne
	}
	return out
}

// hanReport is a line on the corrections, for the report.
func hanReport(h hanStats, d []float64) string {
	seen := 0
	for _, n := range h.n {
		if n > 0 {
			seen++
		}
	}
	lo, hi := 0.0, 0.0
	for _, v := range d {
		lo, hi = min(lo, v), max(hi, v)
	}
	return fmt.Sprintf("ideographs seen in training: %d; corrections from %.3f to %.3f tokens\n", seen, lo, hi)
}
