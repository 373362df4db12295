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
// Chinese character starts most of one. costtable.bin holds, for every
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
const costUnit = 1024

// The class of a byte takes classBits bits of a table index. In byteClass
// and scanClass, flag bits above the index mark what a block needs to know.
const (
	classBits = 6
	tableSize = 1 << (3 * classBits)
	tableMask = tableSize - 1

	notLower = 1 << 24 // not a lower-case ASCII letter
	notUpper = 1 << 25 // not an upper-case ASCII letter
	stopBit  = 1 << 26 // in scanClass: '"', '\\' and control bytes end plain JSON string content
)

//go:embed costtable.bin.gz
var costTableFile []byte

var (
	byteClass  [256]uint32
	scanClass  [256]uint32        // byteClass plus stopBit, for count
	costTable  *[tableSize]uint16 // by class triple, see tableIndex
	deepLower  *[1 << 15]uint16   // by lower-case letter triple, see lowerIndex
	deepUpper  [64]uint16         // by upper-case letter group triple, see upperIndex
	classStart uint32             // the context at the start of a text
	upperBase  uint32             // the first upper-case class
	deepBlocks uint               // blocks of letters in a row from which a block is deep
)

func init() {
	if err := loadCostTable(costTableFile); err != nil {
		panic("llm_ratelimit: costtable.bin.gz: " + err.Error())
	}
}

// tableIndex is the index of the class triple c2, c1, c0 in costTable; the
// mask drops the flag bits.
func tableIndex(c2, c1, c0 uint32) uint32 {
	return (c2<<(2*classBits) | c1<<classBits | c0) & tableMask
}

// lowerIndex is the index of the lower-case letter triple c2, c1, c0
// (classes 0-25) in deepLower.
func lowerIndex(c2, c1, c0 uint32) uint32 { return (c2<<10 | c1<<5 | c0) & (1<<15 - 1) }

// upperIndex is the index of the upper-case letter triple c2, c1, c0 in
// deepUpper.
func upperIndex(c2, c1, c0 uint32) uint32 {
	b := upperBase
	return ((c2-b)&3)<<4 | ((c1-b)&3)<<2 | (c0-b)&3
}

// loadCostTable reads the file tools/corpus writes, gzipped: "LLMCT5"; the
// number of classes, the start class, the class width, the number of
// lower-case letter classes (0..n-1, a-z; the next 4 are the upper-case
// groups) and deepBlocks; the class of each byte value; then, in 1/1024
// token (uint16 little-endian), the cost of every class triple (c2, c1,
// c0; c0 fastest), of every lower-case letter triple in a deep block, and
// of every upper-case group triple in a deep block.
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
	if len(b) < head || string(b[:6]) != "LLMCT5" {
		return fmt.Errorf("not a cost table")
	}
	n, start, width, lower, deep := int(b[6]), uint32(b[7]), int(b[8]), int(b[9]), uint(b[10])
	if width != classBits || n > 1<<classBits || int(start) >= n || lower != 26 || n < lower+4 || deep < 2 {
		return fmt.Errorf("%d classes of %d bits (%d lower-case), start %d, %d deep blocks: want at most %d of %d bits, 26 lower-case, 2 deep blocks or more",
			n, width, lower, start, deep, 1<<classBits, classBits)
	}
	if want := head + 2*(n*n*n+lower*lower*lower+64); len(b) != want {
		return fmt.Errorf("%d bytes, want %d", len(b), want)
	}
	ub := uint32(lower)
	for i, c := range b[6+5 : head] {
		c := uint32(c)
		isLower, isUpper := 'a' <= i && i <= 'z', 'A' <= i && i <= 'Z'
		if int(c) >= n || isLower != (c < ub) || isUpper != (c >= ub && c < ub+4) {
			return fmt.Errorf("byte %#x: class %d out of range, or a letter class for a non-letter", i, c)
		}
		if !isLower {
			c |= notLower
		}
		if !isUpper {
			c |= notUpper
		}
		byteClass[i], scanClass[i] = c, c
		if i < 0x20 || i == '"' || i == '\\' {
			scanClass[i] |= stopBit
		}
	}
	t, d := new([tableSize]uint16), new([1 << 15]uint16)
	p := b[head:]
	next := func() uint16 {
		v := binary.LittleEndian.Uint16(p)
		p = p[2:]
		return v
	}
	for c2 := range uint32(n) {
		for c1 := range uint32(n) {
			for c0 := range uint32(n) {
				t[tableIndex(c2, c1, c0)] = next()
			}
		}
	}
	for c2 := range uint32(lower) {
		for c1 := range uint32(lower) {
			for c0 := range uint32(lower) {
				d[lowerIndex(c2, c1, c0)] = next()
			}
		}
	}
	for i := range deepUpper {
		deepUpper[i] = next()
	}
	costTable, deepLower, upperBase, deepBlocks = t, d, ub, deep
	classStart = start | notLower | notUpper
	return nil
}

// textCounter is the streaming estimator: begin a text, write its decoded
// bytes in any number of pieces, read acc.
type textCounter struct {
	c1, c2     uint32 // classes of the last two bytes, with flags
	runL, runU uint8  // blocks of 4 lower-, upper-case letters in a row, up to deepBlocks
	acc        int64  // cost in costUnit
	bytes      int64  // bytes written
}

// begin starts a new, separate text.
func (t *textCounter) begin() {
	t.c1, t.c2, t.runL, t.runU = classStart, classStart, 0, 0
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
func (t *textCounter) count(p []byte, cls *[256]uint32) (read, stop int) {
	tab := costTable
	c1, c2, runL, runU := t.c1, t.c2, uint(t.runL), uint(t.runU)
	acc, n := t.acc, 0
	deep := deepBlocks
	i := 0
	charge := func(b byte) {
		c0 := byteClass[b]
		acc += int64(tab[tableIndex(c2, c1, c0)])
		c2, c1 = c1, c0
		n++
	}
	for {
		// Each charge needs the two classes before it, so the classes
		// rotate through a, b, c, d without moves.
		for ; i+4 <= len(p); i += 4 {
			q := p[i : i+4 : i+4]
			a, b, c, d := cls[q[0]], cls[q[1]], cls[q[2]], cls[q[3]]
			or := a | b | c | d
			if or&stopBit != 0 {
				break
			}
			// A block of letters of one case continues a run of that case.
			runL = min(runL+1, deep) & -b2u(or&notLower == 0)
			runU = min(runU+1, deep) & -b2u(or&notUpper == 0)
			switch {
			case runL|runU < deep:
				acc += int64(tab[tableIndex(c2, c1, a)]) + int64(tab[tableIndex(c1, a, b)]) +
					int64(tab[tableIndex(a, b, c)]) + int64(tab[tableIndex(b, c, d)])
			case runL >= deep: // the block before was lower-case letters too
				dl := deepLower
				acc += int64(dl[lowerIndex(c2, c1, a)]) + int64(dl[lowerIndex(c1, a, b)]) +
					int64(dl[lowerIndex(a, b, c)]) + int64(dl[lowerIndex(b, c, d)])
			default:
				du := &deepUpper
				acc += int64(du[upperIndex(c2, c1, a)]) + int64(du[upperIndex(c1, a, b)]) +
					int64(du[upperIndex(a, b, c)]) + int64(du[upperIndex(b, c, d)])
			}
			c2, c1 = c, d
			n += 4
		}
		// Up to the next stop byte, which ends a block and a run.
		runL, runU = 0, 0
		for ; i < len(p); i++ {
			c0 := cls[p[i]]
			if c0&stopBit != 0 {
				break
			}
			acc += int64(tab[tableIndex(c2, c1, c0)])
			c2, c1 = c1, c0
			n++
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
		if i+1 < len(p) {
			if e := simpleEscape[p[i+1]]; e != 0 {
				charge(e)
				i += 2
				continue
			}
		}
		if i+6 <= len(p) && p[i+1] == 'u' {
			h := p[i+2 : i+6 : i+6]
			x0, x1, x2, x3 := hexVal[h[0]], hexVal[h[1]], hexVal[h[2]], hexVal[h[3]]
			r := x0<<12 | x1<<8 | x2<<4 | x3
			if (x0|x1|x2|x3)&0x10 == 0 && (r < 0xD800 || r >= 0xE000) {
				switch {
				case r < 0x80:
					charge(byte(r))
				case r < 0x800:
					charge(byte(0xC0 | r>>6))
					charge(byte(0x80 | r&0x3F))
				default:
					charge(byte(0xE0 | r>>12))
					charge(byte(0x80 | r>>6&0x3F))
					charge(byte(0x80 | r&0x3F))
				}
				i += 6
				continue
			}
		}
		var buf [4]byte
		m, adv := decodeEscape(p[i:], &buf)
		if m < 0 {
			stop = countBadEsc
			break
		}
		for _, b := range buf[:m] {
			charge(b)
		}
		i += adv
	}
	t.c1, t.c2, t.runL, t.runU = c1, c2, uint8(runL), uint8(runU)
	t.acc = acc
	t.bytes += int64(n)
	return i, stop
}

// writeByte writes one byte (a decoded escape), which ends a block.
func (t *textCounter) writeByte(b byte) {
	c0 := byteClass[b]
	t.acc += int64(costTable[tableIndex(t.c2, t.c1, c0)])
	t.c2, t.c1, t.runL, t.runU = t.c1, c0, 0, 0
	t.bytes++
}

// b2u is 1 for true, 0 for false, without a branch.
func b2u(b bool) uint {
	var u uint
	if b {
		u = 1
	}
	return u
}
