package main

// The estimator's cost table, measured with the o200k tokenizer.
//
// The plugin estimates tokens by charging every byte of text a cost that
// depends only on the classes of that byte and of the two bytes before it.
// This file defines those byte classes and measures each cost as the
// probability that an o200k token starts at a byte of that class in that
// context, on training text drawn from every kind's provider (with seeds
// apart from the corpus bodies'). A context seen rarely is shrunk toward
// the cost of its shorter contexts (the classes with letters in four
// groups; then the byte before and its own; then its own alone), and a
// class never seen falls back to a prior, so every cost is defined and
// between 0 and 1.
//
// Long runs of letters. Two bytes of context cannot tell a word from a run
// of random letters, base64 or DNA, which split every two or three letters:
// the length of the run can, and then the letters themselves. Text is read
// in blocks of four bytes from its start; the deepBlocks-th block in a row
// of four lower-case ASCII letters is "deep" (at least 12 letters into a
// run; CamelCase words, which the tokenizer splits at each hump, are not),
// and its bytes are charged by the letter and the two letters before it:
// a second table, measured on deep bytes only, shrunk toward the deep cost
// of their classes, and never below the first table (so that a block
// turning deep never lowers an estimate). Upper-case runs (DNA, protein
// sequences, long ALLCAPS) go deep alike, and are charged by the classes
// of their letters from a third table.
//
// The tables are written, gzipped, into a file that the plugin embeds:
//
//	"LLMCT7" magic; numClasses, start class, classBits, numLower, deepBlocks (5 bytes)
//	256 bytes: the class of each byte value
//	numClasses³ bytes: the cost of (c2, c1, c0) in 1/255 token, c0 fastest
//	numLower³ bytes: the cost of a lower-case letter in a deep block, by it
//	and the two letters before it, in the same order
//	4³ bytes: the cost of an upper-case letter in a deep block, by the
//	groups of it and the two letters before it
//	24576 int16 little-endian: the correction of each ideograph U+4000-U+9FFF
//	in 1/255 token (hantable.go)

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"math"
	"os"

	"github.com/tiktoken-go/tokenizer"
)

// Byte classes. Each lower-case ASCII letter is a class of its own, so that
// the table knows which letters go together in words (English keeps "ing"
// whole, splits "zsc"); upper-case letters go into four groups; then
// digits, spaces, newlines, tabs, kinds of punctuation; and the first byte
// of a non-ASCII character has the class of its script (roughly: its
// Unicode block), its continuation bytes one class of their own.
const (
	cUVowel = 26 + iota // A E I O U; classes 0-25 are a-z
	cUCons1             // T N S R H L D C
	cUCons2             // M F P G W Y B V K
	cUCons3             // X J Q Z
	cDigit
	cSpace
	cNewline // also the start of a text
	cTab
	cQuote
	cBracket
	cSep
	cPunct
	cCtrl
	cCont
	cLatin1    // U+0080-U+00FF: Latin-1 (é ü ß, NBSP)
	cLatinExt  // U+0100-U+02BF: Latin extended (ł ő ş ĉ ț)
	cGreek     // U+02C0-U+03FF: modifiers, combining marks, Greek
	cCyrillic  // U+0400-U+057F: Cyrillic, Armenian
	cSemitic   // U+0580-U+07FF
	cIndic     // U+0800-U+0FFF: Indic, Thai, Lao, Tibetan
	cLetters3  // U+1000-U+1FFF: Myanmar, Georgian, Jamo, Ethiopic, Khmer, Vietnamese, Greek extended
	cSymbols   // U+2000-U+2FFF: punctuation, symbols, arrows, box drawing
	cKana      // U+3000-U+3FFF: CJK punctuation, kana
	cHan       // U+4000-U+9FFF: CJK ideographs
	cHangul    // U+A000-U+DFFF: mostly Hangul syllables
	cFullwidth // U+E000-U+FFFF: private use, compatibility, fullwidth forms
	cChar4     // 4-byte characters: emoji, rare ideographs
	numClasses

	numLower   = 26 // classes 0..numLower-1 are the lower-case letters
	classStart = cNewline
	classBits  = 6
	deepBlocks = 3
)

// letterGroups are the four groups of letters by how they combine in words:
// vowels; the consonants of common clusters; the others; the rare ones.
var letterGroups = [4]string{"aeiou", "tnsrhldc", "mfpgwybvk", "xjqz"}

var classNames = func() (n [numClasses]string) {
	for i := range numLower {
		n[i] = string(rune('a' + i))
	}
	copy(n[numLower:], []string{"VOWEL", "CONS1", "CONS2", "CONS3", "digit", "space", "newline", "tab", "quote",
		"bracket", "sep", "punct", "ctrl", "cont", "latin1", "latin-ext", "greek", "cyrillic", "semitic", "indic", "letters3",
		"symbols", "kana", "han", "hangul", "fullwidth", "char4"})
	return n
}()

func byteClasses() (t [256]uint8) {
	set := func(lo, hi int, c uint8) {
		for i := lo; i <= hi; i++ {
			t[i] = c
		}
	}
	set(0x00, 0xFF, cCtrl) // C0 controls, DEL, 0xC0, 0xC1, 0xF5-0xFF stay
	set('!', '~', cPunct)
	set('0', '9', cDigit)
	for g, letters := range letterGroups {
		for _, l := range letters {
			t[l] = uint8(l - 'a')
			t[l-'a'+'A'] = cUVowel + uint8(g)
		}
	}
	for _, b := range "()[]{}" {
		t[b] = cBracket
	}
	for _, b := range ".,;:!?" {
		t[b] = cSep
	}
	t['"'], t[' '] = cQuote, cSpace
	t['\n'], t['\r'] = cNewline, cNewline
	t['\t'], t['\v'], t['\f'] = cTab, cTab, cTab
	set(0x80, 0xBF, cCont)
	set(0xC2, 0xC3, cLatin1)
	set(0xC4, 0xCA, cLatinExt)
	set(0xCB, 0xCF, cGreek)
	set(0xD0, 0xD5, cCyrillic)
	set(0xD6, 0xDF, cSemitic)
	set(0xE0, 0xE0, cIndic)
	set(0xE1, 0xE1, cLetters3)
	set(0xE2, 0xE2, cSymbols)
	set(0xE3, 0xE3, cKana)
	set(0xE4, 0xE9, cHan)
	set(0xEA, 0xED, cHangul)
	set(0xEE, 0xEF, cFullwidth)
	set(0xF0, 0xF4, cChar4)
	return t
}

// coarse maps a class to the class space of the backoff: a lower-case
// letter to its group (0-3), any other class c to c-numLower+4.
var coarse = func() (m [numClasses]int) {
	for g, letters := range letterGroups {
		for _, l := range letters {
			m[l-'a'] = g
		}
	}
	for c := numLower; c < numClasses; c++ {
		m[c] = c - numLower + 4
	}
	return m
}()

const numCoarse = numClasses - numLower + 4

// classPrior is the cost of a class never seen in training: a character of
// an unseen script is about one token, counted at its first byte.
func classPrior(c int) float64 {
	switch c {
	case coarse[cCont], coarse[cSpace]:
		return 0
	}
	return 1
}

// kindWeight is the weight of a kind's text in training. Latin-script
// prose other than English splits more than English and code, with which
// it shares every context; it counts three times so that it is not
// under-counted (nor the languages not in the corpus that are like it).
func kindWeight(kind string) float64 {
	switch kind {
	case "latin_prose":
		return 3
	case "english_prose":
		return 3
	case "cyrillic":
		return 2
	}
	return 1
}

const (
	trainPieces  = 160 // training texts per kind
	evalPieces   = 48  // evaluation texts per kind, apart from training
	shrink       = 40  // pseudo-observations toward the shorter context
	tableCostOne = 255 // the unit of the file's costs: 1/255 token, so that one byte is 0 to 1 token
)

// The tables of the model.
const (
	tNormal    = iota // by class triple: (c2*numClasses+c1)*numClasses+c0
	tDeepLower        // by lower-case letter triple: (c2*26+c1)*26+c0
	tDeepUpper        // by upper-case group triple: ((c2-cUVowel)*4+c1-cUVowel)*4+c0-cUVowel
	numTables
)

var tableSizes = [numTables]int{numClasses * numClasses * numClasses, numLower * numLower * numLower, 4 * 4 * 4}

// walk calls fn for each byte of text with the table and index of its
// cost, as the plugin's counter charges it.
func walk(cls *[256]uint8, text string, fn func(i, table, idx int)) {
	n := numClasses
	c2, c1 := classStart, classStart
	runL, runU := 0, 0 // blocks of lower-case, of upper-case letters in a row
	mode := tNormal
	for i := 0; i < len(text); i++ {
		if i%4 == 0 {
			mode = tNormal
			if i+4 <= len(text) {
				lower, upper := true, true
				for _, b := range []byte(text[i : i+4]) {
					lower = lower && cls[b] < numLower
					upper = upper && cls[b] >= cUVowel && cls[b] <= cUCons3
				}
				runL, runU = min(runL+1, deepBlocks)*b2i(lower), min(runU+1, deepBlocks)*b2i(upper)
				switch {
				case runL >= deepBlocks:
					mode = tDeepLower
				case runU >= deepBlocks:
					mode = tDeepUpper
				}
			} else {
				runL, runU = 0, 0
			}
		}
		c0 := int(cls[text[i]])
		switch mode {
		case tDeepLower:
			fn(i, mode, (c2*numLower+c1)*numLower+c0)
		case tDeepUpper:
			u := cUVowel
			fn(i, mode, ((c2-u)*4+c1-u)*4+c0-u)
		default:
			fn(i, mode, (c2*n+c1)*n+c0)
		}
		c2, c1 = c1, c0
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ctxStats sums, per context, the tokens starting at it (weighted) and
// the number of times it was seen (weighted).
type ctxStats struct {
	tok, n []float64
}

func newCtxStats(size int) ctxStats {
	return ctxStats{make([]float64, size), make([]float64, size)}
}

func (c ctxStats) add(k int, tok, w float64) {
	c.tok[k] += w * tok
	c.n[k] += w
}

// stats are the sums of some text: per table, and for the backoff the
// normal contexts by coarse class triple, pair and class, and the deep
// lower-case ones by letter group triple.
type stats struct {
	t                                     [numTables]ctxStats
	coarse3, coarse2, coarse1, deepGroups ctxStats
}

func newStats() *stats {
	s := &stats{coarse3: newCtxStats(numCoarse * numCoarse * numCoarse), coarse2: newCtxStats(numCoarse * numCoarse),
		coarse1: newCtxStats(numCoarse), deepGroups: newCtxStats(64)}
	for i := range s.t {
		s.t[i] = newCtxStats(tableSizes[i])
	}
	return s
}

func (s *stats) all() []ctxStats {
	return append(s.t[:], s.coarse3, s.coarse2, s.coarse1, s.deepGroups)
}

func (s *stats) merge(o *stats) {
	for i, p := range s.all() {
		q := o.all()[i]
		for k := range p.tok {
			p.tok[k] += q.tok[k]
			p.n[k] += q.n[k]
		}
	}
}

// tokenStarts is, per byte of text, 1 where an o200k token starts.
func tokenStarts(enc tokenizer.Codec, text string) ([]float64, int, error) {
	_, toks, err := enc.Encode(text)
	if err != nil {
		return nil, 0, err
	}
	starts := make([]float64, len(text)+1)
	off := 0
	for _, t := range toks {
		starts[off]++
		off += len(t)
	}
	if off != len(text) {
		return nil, 0, fmt.Errorf("tokens cover %d of %d bytes", off, len(text))
	}
	return starts, len(toks), nil
}

// measure adds one text's token starts to st: the tokens starting inside
// a character count at its first byte.
func measure(cls *[256]uint8, text string, enc tokenizer.Codec, w float64, st *stats) error {
	starts, _, err := tokenStarts(enc, text)
	if err != nil {
		return err
	}
	n := numClasses
	walk(cls, text, func(i, table, idx int) {
		tok := starts[i]
		st.t[table].add(idx, tok, w)
		switch table {
		case tNormal:
			c0, c1, c2 := coarse[idx%n], coarse[idx/n%n], coarse[idx/n/n]
			st.coarse3.add((c2*numCoarse+c1)*numCoarse+c0, tok, w)
			st.coarse2.add(c1*numCoarse+c0, tok, w)
			st.coarse1.add(c0, tok, w)
		case tDeepLower:
			c0, c1, c2 := coarse[idx%numLower], coarse[idx/numLower%numLower], coarse[idx/numLower/numLower]
			st.deepGroups.add((c2*4+c1)*4+c0, tok, w)
		}
	})
	return nil
}

// costs are the tables' costs in tokens.
type costs [numTables][]float64

// fit turns the statistics into costs: each context shrunk toward its
// backoff, deep costs never below the normal cost of the same triple.
func fit(all *stats) costs {
	smooth := func(c ctxStats, k int, prior float64) float64 { return (c.tok[k] + shrink*prior) / (c.n[k] + shrink) }
	var out costs
	for i := range out {
		out[i] = make([]float64, tableSizes[i])
	}
	n := numClasses
	for k := range out[tNormal] {
		c0, c1, c2 := k%n, k/n%n, k/n/n
		g0, g1, g2 := coarse[c0], coarse[c1], coarse[c2]
		p := smooth(all.coarse1, g0, classPrior(g0))
		p = smooth(all.coarse2, g1*numCoarse+g0, p)
		p = smooth(all.coarse3, (g2*numCoarse+g1)*numCoarse+g0, p)
		out[tNormal][k] = smooth(all.t[tNormal], k, p)
	}
	for k := range out[tDeepLower] {
		c0, c1, c2 := k%numLower, k/numLower%numLower, k/numLower/numLower
		normal := out[tNormal][(c2*n+c1)*n+c0]
		p := smooth(all.deepGroups, (coarse[c2]*4+coarse[c1])*4+coarse[c0], normal)
		out[tDeepLower][k] = max(smooth(all.t[tDeepLower], k, p), normal)
	}
	for k := range out[tDeepUpper] {
		c0, c1, c2 := cUVowel+k%4, cUVowel+k/4%4, cUVowel+k/16
		normal := out[tNormal][(c2*n+c1)*n+c0]
		out[tDeepUpper][k] = max(smooth(all.t[tDeepUpper], k, normal), normal)
	}
	// The plugin's costs are in 1/1024 token.
	for _, t := range out {
		for k := range t {
			t[k] = math.Round(t[k]*tableCostOne) / tableCostOne
		}
	}
	return out
}

// model is what the plugin counts with: the tables and the corrections
// of the ideographs (hantable.go).
type model struct {
	c   costs
	han []float64
}

// estimate is what the plugin's counter gives for text, before rounding up.
func (m *model) estimate(cls *[256]uint8, text string) float64 {
	sum := 0.0
	walk(cls, text, func(_, table, idx int) { sum += m.c[table][idx] })
	for i, r := range text {
		if isHan(r) && afterMultibyte(text, i) {
			sum += m.han[r-hanLo]
		}
	}
	return sum
}

// buildCostTable measures the table and returns the file's bytes and a
// report: the main costs, and the estimate's ratio to o200k per kind on
// text apart from the training text.
func buildCostTable(provs map[string]Provider) ([]byte, string, error) {
	enc, err := tokenizer.Get(tokenizer.O200kBase)
	if err != nil {
		return nil, "", err
	}
	cls := byteClasses()
	texts := sampleTexts(provs, "train/", trainPieces)
	parts := make([]*stats, len(kinds))
	err = forKinds(func(ki int, kind string) error {
		// Every kind weighs the same whatever its bytes, times kindWeight.
		w := kindWeight(kind) * 1e6 / float64(totalBytes(texts[kind]))
		parts[ki] = newStats()
		for _, s := range texts[kind] {
			if err := measure(&cls, s, enc, w, parts[ki]); err != nil {
				return fmt.Errorf("%s: %v", kind, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	all := newStats() // summed in kind order, so that two runs give the same bits
	for _, p := range parts {
		all.merge(p)
	}
	c := fit(all)
	hans := make([]hanStats, len(kinds))
	err = forKinds(func(ki int, kind string) error {
		w := kindWeight(kind) * 1e6 / float64(totalBytes(texts[kind]))
		hans[ki] = newHanStats()
		for _, s := range texts[kind] {
			if err := measureHan(&cls, &c, s, enc, w, hans[ki]); err != nil {
				return fmt.Errorf("%s: %v", kind, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	han := newHanStats()
	for _, h := range hans {
		han.merge(h)
	}
	groups, err := hanGroups(enc)
	if err != nil {
		return nil, "", err
	}
	m := &model{c, hanDeltas(han, groups, &c, all.t[tNormal].n)}

	var raw bytes.Buffer
	raw.WriteString("LLMCT7")
	raw.Write([]byte{numClasses, classStart, classBits, numLower, deepBlocks})
	raw.Write(cls[:])
	for _, t := range c {
		for _, v := range t {
			if v < 0 || v > 1 {
				return nil, "", fmt.Errorf("cost %v out of range", v)
			}
			raw.WriteByte(byte(v * tableCostOne))
		}
	}
	for _, d := range m.han {
		v := int16(d * tableCostOne)
		raw.Write([]byte{byte(v), byte(v >> 8)})
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, "", err
	}
	zw.Write(raw.Bytes())
	if err := zw.Close(); err != nil {
		return nil, "", err
	}

	rep, err := evaluate(provs, m, &cls, enc)
	return gz.Bytes(), hanReport(han, m.han) + rep, err
}

func writeCostTable(path string, l *Loader, provs map[string]Provider, quiet bool) error {
	train, err := trainingProviders(l, provs)
	if err != nil {
		return err
	}
	data, rep, err := buildCostTable(train)
	if err != nil {
		return err
	}
	if !quiet {
		fmt.Print(rep)
	}
	return os.WriteFile(path, data, 0o644)
}
