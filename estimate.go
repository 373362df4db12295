package llmratelimit

import "sync"

// This file turns text into an estimated token count without a tokenizer,
// and holds the entry points that read request and response bodies.
//
// The estimate imitates how BPE tokenizers of the o200k/cl100k family work:
// text is first cut into pieces (words with an optional leading space or
// punctuation mark, groups of up to 3 digits, punctuation runs, newline
// runs, runs of indentation), then each piece becomes one token or, if rare
// or long, a few. So instead of dividing bytes by 4 the counter charges each
// byte by what it does to that segmentation: starting a word costs about one
// token, further letters of the word cost a little (long words split), a
// space before a word costs nothing, and so on. The charge of a byte
// depends on its class and the classes of the two bytes before it, so the
// whole model is one 4096-entry table built from the few constants in
// defaultCostParams, and counting is one table lookup per byte.

// costUnit is the fixed-point scale of the cost table: costUnit = 1 token.
const costUnit = 1024

// Byte classes of the counter. Non-ASCII characters are charged at their
// lead byte; continuation bytes cost nothing.
const (
	clsLower   = iota // a-z
	clsUpper          // A-Z
	clsDigit          // 0-9
	clsSpace          // ' '
	clsNewline        // \n \r
	clsTab            // \t \v \f
	clsPunct          // other printable ASCII
	clsCtrl           // other control bytes, DEL, bytes never valid in UTF-8
	clsCont           // 0x80-0xBF: UTF-8 continuation
	clsLead2          // 0xC2-0xDF: Latin-1, Latin ext., Greek, Cyrillic, Hebrew, Arabic...
	clsSym3           // 0xE0-0xE2: Indic..., general punctuation (— “ …), symbols, arrows, box drawing
	clsCJK3           // 0xE3-0xE9: CJK punctuation, kana, CJK ideographs
	clsOther3         // 0xEA-0xEF: Hangul, fullwidth forms, private use
	clsLead4          // 0xF0-0xF4: emoji, rare ideographs
	clsQuote          // '"': JSON's punctuation runs (`":"`, `","`, `":{"`) are single tokens
	clsStart          // context at the start of a text; never a byte's class
	numClasses
)

// costParams are the charges, in tokens, of the events the counter sees.
// Those marked "fixed" follow from how the tokenizer cuts text; the others
// were fitted (see defaultCostParams).
type costParams struct {
	WordStart  float64 // first letter of a word; a camelCase hump starts a new word
	LetterByte float64 // each further letter: long and rare words split
	CapsByte   float64 // an upper-case letter after another: ALLCAPS splits more
	DigitStart float64 // fixed: first digit of a number
	DigitByte  float64 // fixed: each further digit, as digits go in groups of 3
	PunctStart float64 // first byte of a punctuation run
	PunctByte  float64 // each further punctuation byte
	QuoteByte  float64 // a further punctuation byte next to a '"'
	SpaceRun   float64 // fixed: a second space in a row: indentation is a piece of its own
	SpaceDigit float64 // fixed: a space before a digit stays alone (digits take no prefix)
	NewlineRun float64 // fixed: a run of \n/\r, unless it ends a punctuation run (".\n")
	TabByte    float64 // fixed: a tab after a tab (a lone tab joins the next word)
	Control    float64 // fixed: control and stray bytes
	Lead2Byte  float64 // a 2-byte character (Cyrillic, Greek, accents) continuing a word
	Sym3       float64 // fixed: per 3-byte character U+0800..U+2FFF (— “ … symbols)
	CJK3       float64 // per character U+3000..U+9FFF (CJK, kana)
	Other3     float64 // per character U+A000..U+FFFF (Hangul, fullwidth forms)
	Char4      float64 // fixed: per 4-byte character (emoji)
}

// defaultCostParams: the fitted charges come from a weighted least-squares
// fit of the relative error against o200k_base counts, on text that is not
// in the reference corpus: licenses and manuals (English prose), Markdown,
// HTML, Go, Python and C source, JSON (pretty and compact, including JSON
// schemas), and the vim tutor in 25 languages.
// On that text the estimate is within about ±10 % for English prose, code
// and JSON; Latin-script languages other than English come out lower (down
// to 0.8), as their words split more. TestEstimateCorpus reports the
// reference bodies.
var defaultCostParams = costParams{
	WordStart:  0.51,
	LetterByte: 0.13,
	CapsByte:   0.17,
	DigitStart: 1,
	DigitByte:  0.33,
	PunctStart: 0.88,
	PunctByte:  0.52,
	QuoteByte:  0.2,
	SpaceRun:   1,
	SpaceDigit: 1,
	NewlineRun: 1,
	TabByte:    1,
	Control:    1,
	Lead2Byte:  0.23,
	Sym3:       1,
	CJK3:       0.62,
	Other3:     0.54,
	Char4:      1.5,
}

var byteClass = func() (t [256]uint8) {
	set := func(lo, hi byte, c uint8) {
		for i := int(lo); i <= int(hi); i++ {
			t[i] = c
		}
	}
	set(0x00, 0xFF, clsCtrl) // then C0 controls, DEL, 0xC0, 0xC1, 0xF5-0xFF stay
	set('!', '~', clsPunct)
	set('a', 'z', clsLower)
	set('A', 'Z', clsUpper)
	set('0', '9', clsDigit)
	set(0x80, 0xBF, clsCont)
	set(0xC2, 0xDF, clsLead2)
	set(0xE0, 0xE2, clsSym3)
	set(0xE3, 0xE9, clsCJK3)
	set(0xEA, 0xEF, clsOther3)
	set(0xF0, 0xF4, clsLead4)
	t[' '], t['"'] = clsSpace, clsQuote
	t['\n'], t['\r'] = clsNewline, clsNewline
	t['\t'], t['\v'], t['\f'] = clsTab, clsTab, clsTab
	return t
}()

// tripleCost is the charge of a byte of class c0 that follows bytes of
// classes c2, c1 (c1 directly before it).
func tripleCost(p *costParams, c2, c1, c0 int) float64 {
	inWord := c1 == clsLower || c1 == clsUpper || // after an ASCII letter
		(c2 == clsLead2 && c1 == clsCont) // or a 2-byte character
	switch c0 {
	case clsLower:
		if inWord {
			return p.LetterByte
		}
		return p.WordStart
	case clsUpper:
		switch {
		case c1 == clsUpper:
			return p.CapsByte
		case c1 == clsLower: // camelCase hump
			return p.WordStart
		case inWord:
			return p.LetterByte
		}
		return p.WordStart
	case clsLead2:
		if inWord {
			return p.Lead2Byte
		}
		return p.WordStart
	case clsDigit:
		switch c1 {
		case clsDigit:
			return p.DigitByte
		case clsSpace:
			return p.DigitStart + p.SpaceDigit
		}
		return p.DigitStart
	case clsPunct, clsQuote:
		switch {
		case c1 == clsQuote || (c1 == clsPunct && c0 == clsQuote):
			return p.QuoteByte
		case c1 == clsPunct:
			return p.PunctByte
		}
		return p.PunctStart
	case clsSpace:
		// A space joins the next word or punctuation; a run of spaces is
		// one piece however long.
		if c1 == clsSpace && c2 != clsSpace {
			return p.SpaceRun
		}
		return 0
	case clsNewline:
		if c1 == clsNewline || c1 == clsPunct || c1 == clsQuote {
			return 0
		}
		return p.NewlineRun
	case clsTab:
		if c1 == clsTab {
			return p.TabByte
		}
		return 0
	case clsCtrl:
		return p.Control
	case clsSym3:
		return p.Sym3
	case clsCJK3:
		return p.CJK3
	case clsOther3:
		return p.Other3
	case clsLead4:
		return p.Char4
	}
	return 0 // continuation bytes
}

// costTable is indexed by c2<<8 | c1<<4 | c0.
var costTable = buildCostTable(&defaultCostParams)

func buildCostTable(p *costParams) [4096]int32 {
	var t [4096]int32
	for c2 := 0; c2 < numClasses; c2++ {
		for c1 := 0; c1 < numClasses; c1++ {
			for c0 := 0; c0 < numClasses; c0++ {
				v := tripleCost(p, c2, c1, c0) * costUnit
				if v < 0 {
					v -= 0.5
				} else {
					v += 0.5
				}
				t[c2<<8|c1<<4|c0] = int32(v)
			}
		}
	}
	return t
}

// textCounter is the streaming estimator: begin a text, write its decoded
// bytes in any number of pieces, read acc.
type textCounter struct {
	c1, c2 uint8 // classes of the last two bytes
	acc    int64 // cost in costUnit
	bytes  int64 // bytes written
}

// begin starts a new, separate text.
func (t *textCounter) begin() { t.c1, t.c2 = clsStart, clsStart }

func (t *textCounter) write(p []byte) {
	tab := &costTable
	c1, c2 := uint(t.c1), uint(t.c2)
	acc := t.acc
	i := 0
	// Four bytes a round: each charge needs the two classes before it, so
	// the classes rotate through a, b, c, d without moves.
	for ; i+4 <= len(p); i += 4 {
		q := p[i : i+4 : i+4]
		a, b := uint(byteClass[q[0]]), uint(byteClass[q[1]])
		c, d := uint(byteClass[q[2]]), uint(byteClass[q[3]])
		acc += int64(tab[(c2<<8|c1<<4|a)&0xfff]) + int64(tab[(c1<<8|a<<4|b)&0xfff]) +
			int64(tab[(a<<8|b<<4|c)&0xfff]) + int64(tab[(b<<8|c<<4|d)&0xfff])
		c2, c1 = c, d
	}
	for ; i < len(p); i++ {
		c0 := uint(byteClass[p[i]])
		acc += int64(tab[(c2<<8|c1<<4|c0)&0xfff])
		c2, c1 = c1, c0
	}
	t.c1, t.c2 = uint8(c1), uint8(c2)
	t.acc = acc
	t.bytes += int64(len(p))
}

func (t *textCounter) writeByte(b byte) {
	c0 := uint(byteClass[b])
	t.acc += int64(costTable[(uint(t.c2)<<8|uint(t.c1)<<4|c0)&0xfff])
	t.c2, t.c1 = t.c1, uint8(c0)
	t.bytes++
}

// part is what one piece of a body adds to the estimate. Walkers return
// parts instead of adding to a global so that a duplicate key can replace
// what its earlier occurrence added (the last occurrence wins).
type part struct {
	cost      int64 // text cost in costUnit
	bytes     int64 // decoded text bytes
	tokens    int64 // token ids given as numbers: one token each
	messages  int64
	images    int64
	imagesLow int64
}

func (p *part) add(q part) {
	p.cost += q.cost
	p.bytes += q.bytes
	p.tokens += q.tokens
	p.messages += q.messages
	p.images += q.images
	p.imagesLow += q.imagesLow
}

func sumParts(ps []part) (total part) {
	for _, p := range ps {
		total.add(p)
	}
	return total
}

// textTokens rounds the text cost up; non-empty text is at least 1 token.
func (p part) textTokens() int64 {
	t := int64(0)
	if p.cost > 0 {
		t = (p.cost + costUnit - 1) / costUnit
	}
	if t == 0 && p.bytes > 0 {
		t = 1
	}
	return t + p.tokens
}

// estimateText is the token estimate of one text.
func estimateText(text []byte) int64 {
	var tc textCounter
	tc.begin()
	tc.write(text)
	return part{cost: tc.acc, bytes: tc.bytes}.textTokens()
}

// countString counts the string at s.pos as one text.
func countString(s *jsonScanner, tc *textCounter) (part, error) {
	tc.begin()
	a, b := tc.acc, tc.bytes
	_, err := s.str(tc, nil)
	return part{cost: tc.acc - a, bytes: tc.bytes - b}, err
}

// countCompact counts the value at s.pos as its compact JSON.
func countCompact(s *jsonScanner, tc *textCounter) (part, error) {
	tc.begin()
	a, b := tc.acc, tc.bytes
	err := s.skip(tc)
	return part{cost: tc.acc - a, bytes: tc.bytes - b}, err
}

// countLoose counts a nested value where text is expected: a string as
// its text, null as nothing, anything else as its compact JSON.
func countLoose(s *jsonScanner, tc *textCounter) (part, error) {
	switch s.peek() {
	case jsonString:
		return countString(s, tc)
	case jsonNull:
		_, err := s.literal()
		return part{}, err
	}
	return countCompact(s, tc)
}

// textField reads a top-level field that must be a string or null.
func textField(s *jsonScanner, tc *textCounter, name string) (part, error) {
	if ok, err := s.nullOr(jsonString, name, "a string"); !ok {
		return part{}, err
	}
	return countString(s, tc)
}

// compactField reads a field that must be an array or null and counts it
// as compact JSON (tool definitions).
func compactField(s *jsonScanner, tc *textCounter, name string) (part, error) {
	if ok, err := s.nullOr(jsonArray, name, "an array"); !ok {
		return part{}, err
	}
	return countCompact(s, tc)
}

// intField reads an integer field that must be >= lo; null gives absent.
func intField(s *jsonScanner, name string, lo, absent int64) (int64, error) {
	if ok, err := s.nullOr(jsonNumber, name, "an integer"); !ok {
		return absent, err
	}
	raw, err := s.number()
	if err != nil {
		return 0, err
	}
	v, ok := parseJSONInt(raw)
	if !ok {
		return 0, badRequestf("%s must be an integer, not %.40s", name, raw)
	}
	if v < lo {
		return 0, badRequestf("%s must be >= %d", name, lo)
	}
	return v, nil
}

// boolField reads a boolean field; null is false.
func boolField(s *jsonScanner, name string) (bool, error) {
	if ok, err := s.nullOr(jsonBool, name, "a boolean"); !ok {
		return false, err
	}
	raw, err := s.literal()
	return err == nil && raw[0] == 't', err
}

// sumArray reads the array at s.pos, reading each element with elem.
func sumArray(s *jsonScanner, tc *textCounter, elem func(*jsonScanner, *textCounter) (part, error)) (total part, err error) {
	err = s.array(func(int) error {
		p, err := elem(s, tc)
		total.add(p)
		return err
	})
	return total, err
}

// shortField reads a short string (a type or detail name) into buf; other
// kinds are skipped and read as "". n is the decoded length, cut to buf.
func shortField(s *jsonScanner, buf []byte) (n int, err error) {
	if s.peek() != jsonString {
		return 0, s.skip(nil)
	}
	n, err = s.str(nil, buf)
	return min(n, len(buf)), err
}

// stringValue reads a field that should be a string and returns it
// decoded (allocating); other kinds are skipped and give "".
func stringValue(s *jsonScanner) (string, error) {
	if s.peek() != jsonString {
		return "", s.skip(nil)
	}
	start := s.pos
	n, err := s.str(nil, nil)
	if err != nil {
		return "", err
	}
	raw := s.data[start+1 : s.pos-1]
	if n == len(raw) {
		return string(raw), nil
	}
	buf := make([]byte, n)
	s.pos = start
	_, err = s.str(nil, buf)
	return string(buf), err
}

// satMul multiplies non-negative a and b, saturating at the int64 maximum.
func satMul(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	if a > (1<<63-1)/b {
		return 1<<63 - 1
	}
	return a * b
}

// parseState is one parse's scanner, counter and findings.
type parseState struct {
	s    jsonScanner
	tc   textCounter
	info requestInfo
}

var parseStates = sync.Pool{New: func() any { return new(parseState) }}

// parseRequest fills info from the body of a request of dialect d to the
// URL path (the fields of info are reset first). An invalid body, or a
// field the estimator reads having the wrong type, gives a
// *badRequestError. A nil dialect reads nothing.
//
// Duplicate keys: every occurrence is validated and type-checked; the last
// one counts, as in most JSON decoders.
func parseRequest(d dialect, path string, body []byte, info *requestInfo) error {
	*info = requestInfo{N: 1}
	if d == nil {
		return nil
	}
	// The scanner and counter go to the dialect through an interface, so
	// they would escape to the heap: they come from a pool instead.
	ps := parseStates.Get().(*parseState)
	defer func() {
		ps.s.data = nil // do not keep the body
		parseStates.Put(ps)
	}()
	ps.s, ps.tc, ps.info = jsonScanner{data: body}, textCounter{}, requestInfo{N: 1}
	s, tc := &ps.s, &ps.tc
	switch s.peek() {
	case jsonEnd:
		return badRequestf("request body is empty")
	case jsonObject:
	default:
		if err := s.skip(nil); err != nil {
			return err
		}
		return badRequestf("request body must be a JSON object")
	}
	total, err := d.parse(s, tc, path, &ps.info)
	*info = ps.info
	if err != nil {
		return err
	}
	if s.ws(); s.pos < len(s.data) {
		return badRequestf("invalid JSON: unexpected data after the top-level object at offset %d", s.pos)
	}
	info.TextTokens = total.textTokens()
	info.Messages = total.messages
	info.Images = total.images
	info.ImagesLow = total.imagesLow
	return nil
}
