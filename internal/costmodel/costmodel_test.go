package costmodel

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// The estimator's accuracy against o200k is tested in the root package
// (TestEstimateTextKinds, the corpus tests), on texts that its request
// body tests share; these are the counter's own properties.

// TestEstimateTextRounding: empty text is 0 tokens; any other text is at
// least 1 (the cost rounds up), and one character at most 2.
func TestEstimateTextRounding(t *testing.T) {
	if got := EstimateText(nil); got != 0 {
		t.Errorf("EstimateText(\"\") = %d, want 0", got)
	}
	for _, c := range []string{" ", "a", "Z", "7", "\n", "\t", "{", "\"", "é", "ж", "中", "한", "ア", "—", "😀", "\x00", "\xff"} {
		if got := EstimateText([]byte(c)); got < 1 || got > 2 {
			t.Errorf("EstimateText(%q) = %d, want 1 or 2", c, got)
		}
	}
}

// Every charge is >= 0: the tables hold unsigned bytes, and an
// ideograph's correction never takes its charge below 0. So appending
// characters can never lower an estimate.
func TestChargesAreNeverNegative(t *testing.T) {
	lead := byteClass[0xE4] & (1<<classBits - 1)
	for c2 := range uint32(classCount) {
		base := int64(costTable[tableIndex(c2, uint32(contClass), uint32(lead))]) +
			int64(costTable[tableIndex(uint32(contClass), uint32(lead), uint32(contClass))]) +
			int64(costTable[tableIndex(uint32(lead), uint32(contClass), uint32(contClass))])
		for i, d := range hanDelta {
			if base+int64(d) < 0 {
				t.Fatalf("U+%04X after class %d is charged %d < 0", hanLo+i, c2, base+int64(d))
			}
		}
	}
	for _, text := range []string{
		"The quick brown fox jumps over the lazy dog, twice.",
		"GATTACAGATTACAGATTACAGATTACA and aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=",
		"人工智能正在改变我们的工作方式。漢字テキスト",
	} {
		prev := int64(0)
		for n := 0; n <= len(text); n++ {
			if n < len(text) && !utf8.RuneStart(text[n]) {
				continue // text is whole characters
			}
			got := EstimateText([]byte(text[:n]))
			if got < prev {
				t.Fatalf("estimate fell from %d to %d at byte %d of %.20q", prev, got, n, text)
			}
			prev = got
		}
	}
}

// CountJSONString decodes the common escapes and stops where its caller
// has to look: the closing quote, a control byte, an escape it leaves to
// the caller, or the end.
func TestCountJSONString(t *testing.T) {
	for _, c := range []struct {
		in      string // the content after the opening quote
		stop    int
		decoded string // the text counted
	}{
		{`plain text" rest`, 10, "plain text"},
		{`a\n\"b\u00e9\u4e2d" rest`, 18, "a\n\"bé中"},
		{"tab\x01after\"", 3, "tab"},
		{`emoji \ud83d\ude00 after"`, 6, "emoji "},
		{`bad \x escape"`, 4, "bad "},
		{`no end`, 6, "no end"},
		{`trailing \`, 9, "trailing "},
	} {
		var tc, want Counter
		tc.Begin()
		want.Begin()
		got := tc.CountJSONString([]byte(c.in))
		want.Write([]byte(c.decoded))
		if got != c.stop || tc.Bytes() != want.Bytes() || tc.Cost() != want.Cost() {
			t.Errorf("%q: stopped at %d with %d bytes, cost %d; want %d, %d bytes (%q), cost %d",
				c.in, got, tc.Bytes(), tc.Cost(), c.stop, want.Bytes(), c.decoded, want.Cost())
		}
	}
}

// Counting a text in pieces gives what counting it whole gives when the
// pieces are cut on block boundaries (multiples of four bytes).
func TestWriteInPieces(t *testing.T) {
	text := []byte(strings.Repeat(benchProse+"\n", 3))
	var whole, pieces Counter
	whole.Begin()
	whole.Write(text)
	pieces.Begin()
	for i := 0; i < len(text); i += 64 {
		pieces.Write(text[i:min(i+64, len(text))])
	}
	if whole.Cost() != pieces.Cost() || whole.Bytes() != pieces.Bytes() {
		t.Errorf("whole: cost %d, %d bytes; in pieces: cost %d, %d bytes", whole.Cost(), whole.Bytes(), pieces.Cost(), pieces.Bytes())
	}
}

// benchProse is the root package's proseText (58 o200k tokens).
const benchProse = "The committee met on Tuesday to review the proposal for a new public library in the centre of town. After a long discussion about costs, opening hours and the needs of students, most members agreed that the plan was sound, although several asked for a clearer budget before the final vote next month."

// BenchmarkTextCounter is the counter alone on plain English text.
func BenchmarkTextCounter(b *testing.B) {
	text := []byte(strings.Repeat(benchProse+"\n", 200))
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	var tc Counter
	for b.Loop() {
		tc.Begin()
		tc.Write(text)
	}
}
