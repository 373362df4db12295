package llmratelimit

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"encoding/binary"
	"fmt"
	"io"
)

// The cost model of the estimator: how many tokens each byte of text adds,
// given the classes of that byte and of the two bytes before it.
//
// The o200k/cl100k tokenizers cut text into pieces (a word with an optional
// leading space or punctuation mark, up to 3 digits, a run of punctuation,
// a run of newlines, indentation) and turn each piece into one token or, if
// it is rare or long, a few. Which byte starts a token is therefore mostly
// a matter of what kind of byte it is and what came just before: the space
// before a word starts one, the letters of a common word do not, random
// letters start one every two or three, every third digit starts one, a
// Chinese character starts most of one. costtable.bin.gz holds, for every
// triple of byte classes, the expected number of o200k tokens that start
// at a byte in that context, measured by tools/corpus on text of every
// kind of its corpus (see its README). The byte classes are in the file
// too: ASCII letters in four groups by how they combine in words, digits,
// spaces, newlines, tabs, kinds of punctuation, and one class per script
// for the first byte of a non-ASCII character (its continuation bytes cost
// nothing).
//
// Two bytes of context cannot tell a word from a run of random letters,
// base64 or DNA, which split every two or three letters; the length of the
// run can, and then the letters themselves. Text is read in blocks of four
// bytes; the deepBlocks-th block in a row of four lower-case ASCII letters
// (so at least 12 letters into a run) is charged by each letter and the two
// letters before it, from a second table measured on such blocks and never
// below the first (so a block turning deep never lowers an estimate).
// Upper-case runs (DNA, protein sequences, long ALLCAPS) go deep alike and
// are charged by the classes of their letters from a third table.
//
// Counting is one class lookup and one table lookup per byte, with no
// branch; every cost is >= 0 and a deep charge is never below the normal
// one, so appending text never lowers an estimate.

// costUnit is the fixed-point scale of the cost tables: costUnit = 1 token.
// A byte starts at most one token, so each cost fits a byte.
const costUnit = 255

// The class of a byte takes classBits bits of a table index. In byteClass
// and scanClass, flag bits mark what a block needs to know, far enough
// above the class that no index of a textCounter's window reads them.
const (
	classBits = 6
	tableSize = 1 << (3 * classBits)
	tableMask = tableSize - 1

	notLowerShift = 40
	notLower      = 1 << notLowerShift // not a lower-case ASCII letter
	notUpper      = 2 << notLowerShift // not an upper-case ASCII letter
	stopBit       = 4 << notLowerShift // in scanClass: '"', '\\' and control bytes end plain JSON string content
	hanBit        = 8 << notLowerShift // the first byte of an ideograph U+4000-U+9FFF (0xE4-0xE9)
)

//go:embed costtable.bin.gz
var costTableFile []byte

// The three cost tables share one index, that of a class triple (c2, c1,
// c0): c2<<12 | c1<<6 | c0. The deep tables only hold letter triples.
type costTab = [tableSize]uint8

var (
	byteClass [256]uint64
	scanClass [256]uint64 // byteClass plus stopBit, for count
	costTable *costTab    // by class triple: the first of costTables
	// costTables holds three tables one after the other, for a block loop
	// that picks its table by an offset instead of a branch: by class
	// triple, lower-case letter triples in a deep block, upper-case letter
	// triples in a deep block.
	costTables *[3 * tableSize]uint8
	classStart uint64 // the context at the start of a text
	contClass  uint64 // the class of UTF-8 continuation bytes
	classCount int    // the number of classes
	// hanDelta corrects the charge of each ideograph U+4000-U+9FFF that
	// follows a character of 2 bytes or more, in costUnit: the tables see
	// every ideograph alike, the tokenizer merges common ones with their
	// neighbours and splits rare ones.
	hanDelta [hanHi - hanLo]int16
)

// A block of four bytes is deep in a run of letters when it and the
// deepBlocks-1 blocks before it are all lower-case, or all upper-case,
// letters. runsMask keeps deepBlocks blocks of 2 bits in a textCounter's
// runs; deepLowerRuns and deepUpperRuns are its values then.
const (
	deepBlocks    = 3
	runsMask      = 1<<(2*deepBlocks) - 1
	deepLowerRuns = runsMask / 3     // 0b010101
	deepUpperRuns = runsMask / 3 * 2 // 0b101010
)

func init() {
	if err := loadCostTable(costTableFile); err != nil {
		panic("llm_ratelimit: costtable.bin.gz: " + err.Error())
	}
}

const hanLo, hanHi = 0x4000, 0xA000

// tableIndex is the index of the class triple c2, c1, c0; the mask drops
// the flag bits.
func tableIndex(c2, c1, c0 uint32) uint32 {
	return (c2<<(2*classBits) | c1<<classBits | c0) & tableMask
}

// loadCostTable reads the file tools/corpus writes, gzipped: "LLMCT7"; the
// number of classes, the start class, the class width, the number of
// lower-case letter classes (0..n-1, a-z; the next 4 are the upper-case
// groups) and deepBlocks; the class of each byte value; then, in 1/255
// token (a byte each), the cost of every class triple (c2, c1, c0; c0
// fastest), of every lower-case letter triple in a deep block, and of every
// upper-case group triple in a deep block; then hanDelta, int16 little-endian.
func loadCostTable(gz []byte) error {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return err
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return err
	}
	const head = 6 + 5 + 256
	if len(b) < head || string(b[:6]) != "LLMCT7" {
		return fmt.Errorf("not a cost table")
	}
	n, start, width, lower, deep := int(b[6]), uint32(b[7]), int(b[8]), int(b[9]), uint(b[10])
	if width != classBits || n > 1<<classBits || int(start) >= n || lower != 26 || n < lower+4 || deep != deepBlocks {
		return fmt.Errorf("%d classes of %d bits (%d lower-case), start %d, %d deep blocks: want at most %d of %d bits, 26 lower-case, %d deep blocks",
			n, width, lower, start, deep, 1<<classBits, classBits, deepBlocks)
	}
	if want := head + n*n*n + lower*lower*lower + 64 + 2*(hanHi-hanLo); len(b) != want {
		return fmt.Errorf("%d bytes, want %d", len(b), want)
	}
	ub := uint32(lower)
	for i, c := range b[6+5 : head] {
		c := uint64(c)
		isLower, isUpper := 'a' <= i && i <= 'z', 'A' <= i && i <= 'Z'
		if int(c) >= n || isLower != (c < uint64(ub)) || isUpper != (c >= uint64(ub) && c < uint64(ub)+4) {
			return fmt.Errorf("byte %#x: class %d out of range, or a letter class for a non-letter", i, c)
		}
		if !isLower {
			c |= notLower
		}
		if !isUpper {
			c |= notUpper
		}
		if 0xE4 <= i && i <= 0xE9 {
			c |= hanBit
		}
		byteClass[i], scanClass[i] = c, c
		if i < 0x20 || i == '"' || i == '\\' {
			scanClass[i] |= stopBit
		}
	}
	all := new([3 * tableSize]uint8)
	t, dl, du := (*costTab)(all[:tableSize]), (*costTab)(all[tableSize:2*tableSize]), (*costTab)(all[2*tableSize:])
	p := b[head:]
	fill := func(tab *costTab, lo, hi uint32) {
		for c2 := lo; c2 < hi; c2++ {
			for c1 := lo; c1 < hi; c1++ {
				for c0 := lo; c0 < hi; c0++ {
					tab[tableIndex(c2, c1, c0)] = p[0]
					p = p[1:]
				}
			}
		}
	}
	fill(t, 0, uint32(n))
	fill(dl, 0, ub)
	fill(du, ub, ub+4)
	for i := range hanDelta {
		hanDelta[i] = int16(binary.LittleEndian.Uint16(p[2*i:]))
	}
	contClass, classCount = byteClass[0x80]&(1<<classBits-1), n
	costTable, costTables = t, all
	classStart = uint64(start) | notLower | notUpper
	return nil
}

// textCounter is the streaming estimator: begin a text, write its decoded
// bytes in any number of pieces, read acc.
type textCounter struct {
	// w holds the classes of the last bytes, the last one lowest, 6 bits
	// each and with their flags far above: (w >> 6k) & tableMask is the
	// index of the triple that ends k bytes back.
	w uint64
	// runs holds 2 bits per block for the last deepBlocks blocks: 1 for
	// four lower-case letters, 2 for four upper-case letters, else 0.
	runs  uint32
	acc   int64 // cost in costUnit
	bytes int64 // bytes written
}

// begin starts a new, separate text.
func (t *textCounter) begin() {
	t.w, t.runs = classStart<<classBits|classStart, 0
}

func (t *textCounter) write(p []byte) { t.count(p, &byteClass) }

// Where count stopped.
const (
	countEnd    = iota // at the end of p
	countQuote         // after the closing quote of a JSON string
	countBadEsc        // at an escape it cannot decode
	countCtrl          // at a control byte
)

// count counts the text in p. With byteClass that is all of p. With
// scanClass p is the content of a JSON string: count decodes its escapes
// and stops after the closing quote, or at a byte that is not valid there.
// It returns the bytes of p it read and where it stopped.
//
// Everything is in one loop, with the counter's state in registers: text
// goes a block of four bytes a round, and a block with a quote, a
// backslash or a control byte goes a byte at a time.
func (t *textCounter) count(p []byte, cls *[256]uint64) (read, stop int) {
	tab := costTable
	w, runs := t.w, t.runs
	acc, seen, w0 := t.acc, uint64(0), t.w
	i, escaped := 0, 0 // escaped: bytes of p that escapes took beyond what they stand for
	const m = tableMask
	for {
		var blk blockState
		blk, i = countBlocks(blockState{w, acc, seen, runs}, p, i, cls)
		w, acc, seen, runs = blk.w, blk.acc, blk.seen, blk.runs
		// Up to the next stop byte, which ends a block and a run.
		runs = 0
		for ; i < len(p); i++ {
			c0 := cls[p[i]]
			if c0&stopBit != 0 {
				break
			}
			w = w<<classBits | c0
			acc += int64(tab[w&m])
			seen |= c0
		}
		if i >= len(p) {
			stop = countEnd
			break
		}
		if p[i] == '"' {
			i++
			stop = countQuote
			break
		}
		if p[i] != '\\' {
			stop = countCtrl
			break
		}
		// Escapes, as many as follow each other: text that escapes every
		// character goes here, not back through the block loop.
		for i+1 < len(p) && p[i] == '\\' {
			if e := simpleEscape[p[i+1]]; e != 0 {
				w, acc = chargeByte(tab, w, acc, e)
				i += 2
				escaped++
				continue
			}
			if i+6 > len(p) || p[i+1] != 'u' {
				break
			}
			h := p[i+2 : i+6 : i+6]
			x0, x1, x2, x3 := hexVal[h[0]], hexVal[h[1]], hexVal[h[2]], hexVal[h[3]]
			r := x0<<12 | x1<<8 | x2<<4 | x3
			if (x0|x1|x2|x3)&0x10 != 0 || r >= 0xD800 && r < 0xE000 {
				break // a surrogate pair, or not an escape: decodeEscape says
			}
			switch {
			case r < 0x80:
				w, acc = chargeByte(tab, w, acc, byte(r))
				escaped += 5
			case r < 0x800:
				w, acc = chargeByte(tab, w, acc, byte(0xC0|r>>6))
				w, acc = chargeByte(tab, w, acc, byte(0x80|r&0x3F))
				escaped += 4
			default:
				afterMB := w&(1<<classBits-1) == contClass
				w, acc = chargeByte(tab, w, acc, byte(0xE0|r>>12))
				w, acc = chargeByte(tab, w, acc, byte(0x80|r>>6&0x3F))
				w, acc = chargeByte(tab, w, acc, byte(0x80|r&0x3F))
				if afterMB && r >= hanLo && r < hanHi {
					acc += int64(hanDelta[r-hanLo])
				}
				escaped += 3
			}
			i += 6
		}
		if i >= len(p) || p[i] != '\\' {
			continue // back to plain text (or to the end)
		}
		var buf [4]byte
		m, adv := decodeEscape(p[i:], &buf)
		if m < 0 {
			stop = countBadEsc
			break
		}
		for _, b := range buf[:m] {
			w, acc = chargeByte(tab, w, acc, b)
		}
		i += adv
		escaped += adv - m
	}
	read = i
	if stop == countQuote {
		read-- // the closing quote is not text
	}
	if seen&hanBit != 0 {
		acc += hanCorrection(p[:read], w0&(1<<classBits-1) == contClass)
	}
	t.w, t.runs, t.acc = w, runs, acc
	t.bytes += int64(read - escaped)
	return i, stop
}

// blockState is what countBlocks carries from block to block.
type blockState struct {
	w    uint64
	acc  int64
	seen uint64 // the classes' flags, ORed
	runs uint32
}

// countBlocks counts p from i a block of four bytes a round, up to the
// first block with a byte whose class in cls has stopBit, and returns
// where it stopped. It is the hot loop of count, apart so that its state
// stays in registers.
func countBlocks(st blockState, p []byte, i int, cls *[256]uint64) (blockState, int) {
	const m = tableMask
	tabs := costTables
	w, acc, seen, runs := st.w, st.acc, st.seen, st.runs
	q := p[i:]
	for len(q) >= 4 {
		a, b, c, d := cls[q[0]], cls[q[1]], cls[q[2]], cls[q[3]]
		or := a | b | c | d
		if or&stopBit != 0 {
			break
		}
		q = q[4:]
		seen |= or
		// The flags of a block's classes land above the indexes.
		w = w<<(4*classBits) | a<<(3*classBits) | b<<(2*classBits) | c<<classBits | d
		// The block's kind: bit 0 all lower-case letters, bit 1 all
		// upper-case letters (the flags, inverted).
		runs = (runs<<2 | uint32(^or>>notLowerShift)&3) & runsMask
		// The table, without a branch: deep runs of lower-case or
		// upper-case letters use the second or the third.
		off := uint64(0)
		if runs == deepLowerRuns {
			off = tableSize
		}
		if runs == deepUpperRuns {
			off = 2 * tableSize
		}
		ct := (*costTab)(tabs[off : off+tableSize])
		acc += int64(ct[w>>(3*classBits)&m]) + int64(ct[w>>(2*classBits)&m]) +
			int64(ct[w>>classBits&m]) + int64(ct[w&m])
	}
	return blockState{w, acc, seen, runs}, len(p) - len(q)
}

// chargeByte adds byte b to the window w and its cost to acc.
func chargeByte(tab *costTab, w uint64, acc int64, b byte) (uint64, int64) {
	w = w<<classBits | byteClass[b]
	return w, acc + int64(tab[w&tableMask])
}

// hanCorrection is the sum of hanDelta over the ideographs of p that
// follow a continuation byte; afterMB tells whether what came before p
// ended with one.
func hanCorrection(p []byte, afterMB bool) (sum int64) {
	// Character by character: a 3-byte character is one step.
	for j := 0; j+2 < len(p); {
		b := p[j]
		if b < 0xE0 || b > 0xEF {
			// ASCII goes eight bytes at a time.
			if b < 0x80 && j+8 <= len(p) && binary.LittleEndian.Uint64(p[j:])&0x8080808080808080 == 0 {
				j += 8
				continue
			}
			j++
			continue
		}
		if b >= 0xE4 && b <= 0xE9 && p[j+1]&0xC0 == 0x80 && p[j+2]&0xC0 == 0x80 &&
			(j > 0 && p[j-1]&0xC0 == 0x80 || j == 0 && afterMB) {
			r := rune(b&0x0F)<<12 | rune(p[j+1]&0x3F)<<6 | rune(p[j+2]&0x3F)
			sum += int64(hanDelta[r-hanLo])
		}
		j += 3
	}
	return sum
}

// countStr is str into tc alone: one pass that finds the end of the
// string, decodes it and counts it (textCounter.count).
func (s *jsonScanner) countStr(tc *textCounter) (n int, err error) {
	before := tc.bytes
	read, stop := tc.count(s.data[s.pos+1:], &scanClass)
	i := s.pos + 1 + read
	n = int(tc.bytes - before)
	switch stop {
	case countQuote:
		s.pos = i
		return n, nil
	case countBadEsc:
		s.pos = i
		return n, badRequestf("invalid JSON: invalid escape in string at offset %d", i)
	case countCtrl:
		s.pos = i
		return n, badRequestf("invalid JSON: control character in string at offset %d", i)
	}
	s.pos = i
	return n, s.syntaxError()
}

// writeByte writes one byte (a decoded escape), which ends a block.
func (t *textCounter) writeByte(b byte) {
	t.w = t.w<<classBits | byteClass[b]
	t.acc += int64(costTable[t.w&tableMask])
	t.runs = 0
	t.bytes++
}

// simpleEscape is the byte that a one-letter escape stands for, or 0.
var simpleEscape = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// hexVal is the value of a hex digit, or 0x10 for any other byte.
var hexVal = func() (t [256]uint32) {
	for i := range t {
		t[i] = 0x10
	}
	for i := range 10 {
		t['0'+i] = uint32(i)
	}
	for i := range 6 {
		t['a'+i], t['A'+i] = uint32(10+i), uint32(10+i)
	}
	return t
}()
