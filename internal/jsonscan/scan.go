package llmratelimit

import (
	"fmt"
	"unicode/utf8"
)

// This file is a small JSON scanner: it validates a document as it walks it
// and hands string contents to a textCounter, without building a tree and
// without allocating. Nesting is bounded by maxJSONDepth and containers that
// nobody reads are skipped iteratively, so a hostile body cannot make it
// recurse deeply.
//
// Decisions:
//   - Invalid UTF-8 inside strings is accepted (as most JSON decoders do)
//     and counted byte by byte.
//   - Keys are compared after decoding escapes (keys up to 64 bytes).

// maxJSONDepth is the deepest nesting of objects and arrays accepted; the
// top-level object is level 1.
const maxJSONDepth = 128

// jsonKind is the kind of the next value, judged from its first byte.
type jsonKind uint8

const (
	jsonEnd jsonKind = iota // end of input
	jsonString
	jsonNumber
	jsonObject
	jsonArray
	jsonBool
	jsonNull
	jsonBad // a byte that cannot start a value
)

// kindName is the kind as it appears in "must be" error messages.
func (k jsonKind) kindName() string {
	return [...]string{"nothing", "a string", "a number", "an object", "an array", "a boolean", "null", "invalid"}[k]
}

// strStop marks the bytes that end a run of plain string content.
var strStop = func() (t [256]bool) {
	for i := 0; i < 0x20; i++ {
		t[i] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

type jsonScanner struct {
	data   []byte
	pos    int
	depth  int
	keyBuf [64]byte
}

func badRequestf(format string, args ...any) error {
	return &badRequestError{msg: fmt.Sprintf(format, args...)}
}

// syntaxError describes the byte at s.pos as unexpected.
func (s *jsonScanner) syntaxError() error {
	if s.pos >= len(s.data) {
		return badRequestf("invalid JSON: unexpected end of input at offset %d", s.pos)
	}
	return badRequestf("invalid JSON: unexpected character %q at offset %d", s.data[s.pos], s.pos)
}

// typeError skips the offending value (so that a syntax error in it wins)
// and reports that field name must be want.
func (s *jsonScanner) typeError(name, want string) error {
	k := s.peek()
	if err := s.skip(nil); err != nil {
		return err
	}
	return badRequestf("%s must be %s, not %s", name, want, k.kindName())
}

func (s *jsonScanner) ws() {
	d, i := s.data, s.pos
	for i < len(d) && (d[i] == ' ' || d[i] == '\n' || d[i] == '\r' || d[i] == '\t') {
		i++
	}
	s.pos = i
}

// peek skips white space and tells the kind of the next value.
func (s *jsonScanner) peek() jsonKind {
	s.ws()
	if s.pos >= len(s.data) {
		return jsonEnd
	}
	switch c := s.data[s.pos]; {
	case c == '"':
		return jsonString
	case c == '{':
		return jsonObject
	case c == '[':
		return jsonArray
	case c == 't' || c == 'f':
		return jsonBool
	case c == 'n':
		return jsonNull
	case c == '-' || (c >= '0' && c <= '9'):
		return jsonNumber
	}
	return jsonBad
}

// open consumes the '{' or '[' at s.pos and enters one level.
func (s *jsonScanner) open() error {
	if s.depth >= maxJSONDepth {
		return badRequestf("invalid JSON: nesting deeper than %d levels at offset %d", maxJSONDepth, s.pos)
	}
	s.depth++
	s.pos++
	return nil
}

// object reads the object at s.pos (its kind checked by the caller),
// calling member for each member with s.pos at the value; member must
// consume the value. key is the entry of known that the member's key
// equals (after decoding escapes), or "" for any other key. Handing member
// a slice of the key instead would make the scanner escape to the heap.
func (s *jsonScanner) object(known []string, member func(key string) error) error {
	if err := s.open(); err != nil {
		return err
	}
	for n := 0; ; n++ {
		if s.ws(); s.pos < len(s.data) && s.data[s.pos] == '}' {
			s.pos++
			s.depth--
			return nil
		}
		if n > 0 {
			if s.pos >= len(s.data) || s.data[s.pos] != ',' {
				return s.syntaxError()
			}
			s.pos++
			s.ws()
		}
		if s.pos >= len(s.data) || s.data[s.pos] != '"' {
			return s.syntaxError()
		}
		k, err := s.key()
		if err != nil {
			return err
		}
		if s.ws(); s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.syntaxError()
		}
		s.pos++
		key := ""
		for _, name := range known {
			if string(k) == name {
				key = name
				break
			}
		}
		if err := member(key); err != nil {
			return err
		}
	}
}

// key reads the object key at s.pos (a quote): the raw bytes of a key
// without escapes, else its decoded form as far as keyBuf holds it.
func (s *jsonScanner) key() ([]byte, error) {
	d, start := s.data, s.pos
	i := start + 1
	for i < len(d) && !strStop[d[i]] {
		i++
	}
	if i < len(d) && d[i] == '"' { // the common case: nothing to decode
		s.pos = i + 1
		return d[start+1 : i], nil
	}
	m, err := s.str(nil, s.keyBuf[:])
	if err != nil {
		return nil, err
	}
	return s.keyBuf[:min(m, len(s.keyBuf))], nil
}

// array reads the array at s.pos (its kind checked by the caller), calling
// elem for each element with s.pos at it; elem must consume it.
func (s *jsonScanner) array(elem func(i int) error) error {
	if err := s.open(); err != nil {
		return err
	}
	for n := 0; ; n++ {
		if s.ws(); s.pos < len(s.data) && s.data[s.pos] == ']' {
			s.pos++
			s.depth--
			return nil
		}
		if n > 0 {
			if s.pos >= len(s.data) || s.data[s.pos] != ',' {
				return s.syntaxError()
			}
			s.pos++
		}
		if err := elem(n); err != nil {
			return err
		}
	}
}

// nullOr checks the kind of field name: present is false for null (which
// it consumes); a kind other than want or null is an error saying that
// name must be desc.
func (s *jsonScanner) nullOr(want jsonKind, name, desc string) (present bool, err error) {
	switch s.peek() {
	case want:
		return true, nil
	case jsonNull:
		_, err = s.literal()
		return false, err
	}
	return false, s.typeError(name, desc)
}

// str scans the string at s.pos, validating it. Its decoded text goes to
// tc (when not nil) and into dst as far as it fits; n is the decoded length.
func (s *jsonScanner) str(tc *textCounter, dst []byte) (n int, err error) {
	if tc != nil && dst == nil {
		return s.countStr(tc)
	}
	d := s.data
	i := s.pos + 1
	for {
		start := i
		for i < len(d) && !strStop[d[i]] {
			i++
		}
		if i > start {
			n = emit(tc, dst, n, d[start:i])
		}
		if i >= len(d) {
			s.pos = i
			return n, s.syntaxError()
		}
		switch d[i] {
		case '"':
			s.pos = i + 1
			return n, nil
		case '\\':
			var buf [4]byte
			m, adv := decodeEscape(d[i:], &buf)
			if m < 0 {
				s.pos = i
				return n, badRequestf("invalid JSON: invalid escape in string at offset %d", i)
			}
			n = emit(tc, dst, n, buf[:m])
			i += adv
		default:
			s.pos = i
			return n, badRequestf("invalid JSON: control character in string at offset %d", i)
		}
	}
}

func emit(tc *textCounter, dst []byte, n int, p []byte) int {
	if tc != nil {
		tc.write(p)
	}
	if n < len(dst) {
		copy(dst[n:], p)
	}
	return n + len(p)
}

// decodeEscape decodes the escape at the start of p (p[0] == '\\') into buf.
// It returns the decoded length (-1 if invalid) and the bytes consumed.
// A lone surrogate decodes to U+FFFD.
func decodeEscape(p []byte, buf *[4]byte) (n, adv int) {
	if len(p) < 2 {
		return -1, 0
	}
	var c byte
	switch p[1] {
	case '"', '\\', '/':
		c = p[1]
	case 'b':
		c = '\b'
	case 'f':
		c = '\f'
	case 'n':
		c = '\n'
	case 'r':
		c = '\r'
	case 't':
		c = '\t'
	case 'u':
		r, ok := hex4(p[2:])
		if !ok {
			return -1, 0
		}
		adv = 6
		if r >= 0xD800 && r < 0xDC00 && len(p) >= 12 && p[6] == '\\' && p[7] == 'u' {
			if r2, ok := hex4(p[8:]); ok && r2 >= 0xDC00 && r2 < 0xE000 {
				r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
				adv = 12
			}
		}
		if r >= 0xD800 && r < 0xE000 {
			r = utf8.RuneError
		}
		return utf8.EncodeRune(buf[:], r), adv
	default:
		return -1, 0
	}
	buf[0] = c
	return 1, 2
}

func hex4(p []byte) (rune, bool) {
	if len(p) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range p[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number scans the number at s.pos and returns its text.
func (s *jsonScanner) number() ([]byte, error) {
	d, i, start := s.data, s.pos, s.pos
	digits := func() bool {
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		return i > j
	}
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case !digits():
		s.pos = i
		return nil, s.syntaxError()
	}
	if i < len(d) && d[i] == '.' {
		i++
		if !digits() {
			s.pos = i
			return nil, s.syntaxError()
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if !digits() {
			s.pos = i
			return nil, s.syntaxError()
		}
	}
	s.pos = i
	return d[start:i], nil
}

// literal scans true, false or null at s.pos.
func (s *jsonScanner) literal() ([]byte, error) {
	d, i := s.data, s.pos
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(d)-i >= len(lit) && string(d[i:i+len(lit)]) == lit {
			s.pos += len(lit)
			return d[i:s.pos], nil
		}
	}
	if len(d)-i < 5 {
		return nil, badRequestf("invalid JSON: unexpected end of input or invalid literal at offset %d", i)
	}
	return nil, badRequestf("invalid JSON: invalid literal at offset %d", i)
}

// scalar scans the string, number or literal at s.pos and returns its
// raw text.
func (s *jsonScanner) scalar(k jsonKind) ([]byte, error) {
	start := s.pos
	switch k {
	case jsonString:
		if _, err := s.str(nil, nil); err != nil {
			return nil, err
		}
		return s.data[start:s.pos], nil
	case jsonNumber:
		return s.number()
	case jsonBool, jsonNull:
		return s.literal()
	}
	return nil, s.syntaxError()
}
