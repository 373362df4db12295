// Package jsonscan is a small JSON scanner: it validates a document as it
// walks it and hands the contents of the strings a caller asks for to a
// costmodel.Counter, without building a tree and without allocating.
// Nesting is bounded by MaxDepth and containers that nobody reads are
// skipped iteratively, so a hostile body cannot make it recurse deeply.
//
// A walker reads a document top-down: Peek tells the kind of the next
// value, Object and Array call back for each member or element, and every
// value is consumed by one call (Str, Number, Literal, Skip, or a nested
// Object or Array). Errors are *Error, with a message fit for the client.
// The package also reads and writes single values in JSON text that is not
// walked as a whole (value.go): integers, strings, members of an object,
// the data of a server-sent event.
//
// Decisions:
//   - Invalid UTF-8 inside strings is accepted (as most JSON decoders do)
//     and counted byte by byte.
//   - Keys are compared after decoding escapes (keys up to 64 bytes).
package jsonscan

import (
	"fmt"
	"unicode/utf8"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
)

// MaxDepth is the deepest nesting of objects and arrays accepted; the
// top-level object is level 1.
const MaxDepth = 128

// Kind is the kind of the next value, judged from its first byte.
type Kind uint8

// The kinds Peek tells.
const (
	End    Kind = iota // end of input
	String             // a string
	Number             // a number
	Object             // an object
	Array              // an array
	Bool               // true or false
	Null               // null
	Bad                // a byte that cannot start a value
)

// kindName is the kind as it appears in "must be" error messages.
func (k Kind) kindName() string {
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

// Scanner reads one JSON document. Its zero value reads an empty one; New
// makes one that reads data. A Scanner is a value with no pointer to
// itself, so a caller can keep one in a pool or on the stack.
type Scanner struct {
	data   []byte
	pos    int
	depth  int
	keyBuf [64]byte
}

// New is a Scanner at the start of data.
func New(data []byte) Scanner { return Scanner{data: data} }

// At is a Scanner of the same document at pos (an offset that Pos gave),
// outside any container: to read again a value read or skipped before.
func (s *Scanner) At(pos int) Scanner { return Scanner{data: s.data, pos: pos} }

// Pos is the offset of the scanner in its document: where the next value
// starts, once Peek has skipped white space.
func (s *Scanner) Pos() int { return s.pos }

// Error is what the scanner finds wrong with a document: invalid JSON, or
// a value of the wrong kind. Its message names the offset or the field and
// is fit for the client.
type Error struct{ msg string }

// Error is the message.
func (e *Error) Error() string { return e.msg }

// Errorf is an *Error with the message format gives.
func Errorf(format string, args ...any) error {
	return &Error{msg: fmt.Sprintf(format, args...)}
}

// SyntaxError describes the byte at the scanner's position as unexpected.
func (s *Scanner) SyntaxError() error {
	if s.pos >= len(s.data) {
		return Errorf("invalid JSON: unexpected end of input at offset %d", s.pos)
	}
	return Errorf("invalid JSON: unexpected character %q at offset %d", s.data[s.pos], s.pos)
}

// TypeError skips the value at the scanner's position (so that a syntax
// error in it wins) and reports that field name must be want.
func (s *Scanner) TypeError(name, want string) error {
	k := s.Peek()
	if err := s.Skip(nil); err != nil {
		return err
	}
	return Errorf("%s must be %s, not %s", name, want, k.kindName())
}

func (s *Scanner) ws() {
	d, i := s.data, s.pos
	for i < len(d) && (d[i] == ' ' || d[i] == '\n' || d[i] == '\r' || d[i] == '\t') {
		i++
	}
	s.pos = i
}

// Peek skips white space and tells the kind of the next value (End at the
// end of the document).
func (s *Scanner) Peek() Kind {
	s.ws()
	if s.pos >= len(s.data) {
		return End
	}
	switch c := s.data[s.pos]; {
	case c == '"':
		return String
	case c == '{':
		return Object
	case c == '[':
		return Array
	case c == 't' || c == 'f':
		return Bool
	case c == 'n':
		return Null
	case c == '-' || (c >= '0' && c <= '9'):
		return Number
	}
	return Bad
}

// open consumes the '{' or '[' at s.pos and enters one level.
func (s *Scanner) open() error {
	if s.depth >= MaxDepth {
		return Errorf("invalid JSON: nesting deeper than %d levels at offset %d", MaxDepth, s.pos)
	}
	s.depth++
	s.pos++
	return nil
}

// Object reads the object at the scanner's position (its kind checked by
// the caller), calling member for each member with the scanner at the
// value; member must consume the value. key is the entry of known that
// the member's key equals (after decoding escapes), or "" for any other
// key. Handing member a slice of the key instead would make the scanner
// escape to the heap.
func (s *Scanner) Object(known []string, member func(key string) error) error {
	if err := s.open(); err != nil {
		return err
	}
	for n := 0; ; n++ {
		if done, err := s.more(n, '}'); done || err != nil {
			return err
		}
		if s.pos >= len(s.data) || s.data[s.pos] != '"' {
			return s.SyntaxError()
		}
		k, err := s.key()
		if err != nil {
			return err
		}
		if s.ws(); s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.SyntaxError()
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
func (s *Scanner) key() ([]byte, error) {
	d, start := s.data, s.pos
	i := start + 1
	for i < len(d) && !strStop[d[i]] {
		i++
	}
	if i < len(d) && d[i] == '"' { // the common case: nothing to decode
		s.pos = i + 1
		return d[start+1 : i], nil
	}
	m, err := s.Str(nil, s.keyBuf[:])
	if err != nil {
		return nil, err
	}
	return s.keyBuf[:min(m, len(s.keyBuf))], nil
}

// more steps to the n-th entry of the object or array that close ends:
// past the comma before it, or past close (done) when the container ends
// there.
func (s *Scanner) more(n int, close byte) (done bool, err error) {
	if s.ws(); s.pos < len(s.data) && s.data[s.pos] == close {
		s.pos++
		s.depth--
		return true, nil
	}
	if n > 0 {
		if s.pos >= len(s.data) || s.data[s.pos] != ',' {
			return false, s.SyntaxError()
		}
		s.pos++
		s.ws()
	}
	return false, nil
}

// Array reads the array at the scanner's position (its kind checked by the
// caller), calling elem for each element with the scanner at it; elem must
// consume it.
func (s *Scanner) Array(elem func(i int) error) error {
	if err := s.open(); err != nil {
		return err
	}
	for n := 0; ; n++ {
		if done, err := s.more(n, ']'); done || err != nil {
			return err
		}
		if err := elem(n); err != nil {
			return err
		}
	}
}

// NullOr checks the kind of field name: present is false for null (which
// it consumes); a kind other than want or null is an error saying that
// name must be desc.
func (s *Scanner) NullOr(want Kind, name, desc string) (present bool, err error) {
	switch s.Peek() {
	case want:
		return true, nil
	case Null:
		_, err = s.Literal()
		return false, err
	}
	return false, s.TypeError(name, desc)
}

// Str scans the string at the scanner's position, validating it. Its decoded text goes to
// tc (when not nil) and into dst as far as it fits; n is the decoded length.
func (s *Scanner) Str(tc *costmodel.Counter, dst []byte) (n int, err error) {
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
			return n, s.SyntaxError()
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
				return n, Errorf("invalid JSON: invalid escape in string at offset %d", i)
			}
			n = emit(tc, dst, n, buf[:m])
			i += adv
		default:
			s.pos = i
			return n, Errorf("invalid JSON: control character in string at offset %d", i)
		}
	}
}

// countStr is Str into tc alone: the counter's one pass finds the end of
// the string, decodes it and counts it; the escapes it leaves (surrogate
// pairs, invalid ones) are decoded here.
func (s *Scanner) countStr(tc *costmodel.Counter) (n int, err error) {
	before := tc.Bytes()
	d := s.data
	i := s.pos + 1
	for {
		i += tc.CountJSONString(d[i:])
		if i >= len(d) {
			s.pos = i
			return int(tc.Bytes() - before), s.SyntaxError()
		}
		switch d[i] {
		case '"':
			s.pos = i + 1
			return int(tc.Bytes() - before), nil
		case '\\':
			var buf [4]byte
			m, adv := decodeEscape(d[i:], &buf)
			if m < 0 {
				s.pos = i
				return int(tc.Bytes() - before), Errorf("invalid JSON: invalid escape in string at offset %d", i)
			}
			tc.Write(buf[:m])
			i += adv
		default:
			s.pos = i
			return int(tc.Bytes() - before), Errorf("invalid JSON: control character in string at offset %d", i)
		}
	}
}

func emit(tc *costmodel.Counter, dst []byte, n int, p []byte) int {
	if tc != nil {
		tc.Write(p)
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

// Number scans the number at the scanner's position and returns its text.
func (s *Scanner) Number() ([]byte, error) {
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
		return nil, s.SyntaxError()
	}
	if i < len(d) && d[i] == '.' {
		i++
		if !digits() {
			s.pos = i
			return nil, s.SyntaxError()
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if !digits() {
			s.pos = i
			return nil, s.SyntaxError()
		}
	}
	s.pos = i
	return d[start:i], nil
}

// Literal scans true, false or null at the scanner's position and returns
// its text.
func (s *Scanner) Literal() ([]byte, error) {
	d, i := s.data, s.pos
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(d)-i >= len(lit) && string(d[i:i+len(lit)]) == lit {
			s.pos += len(lit)
			return d[i:s.pos], nil
		}
	}
	if len(d)-i < 5 {
		return nil, Errorf("invalid JSON: unexpected end of input or invalid literal at offset %d", i)
	}
	return nil, Errorf("invalid JSON: invalid literal at offset %d", i)
}

// scalar scans the string, number or literal at s.pos and returns its
// raw text.
func (s *Scanner) scalar(k Kind) ([]byte, error) {
	start := s.pos
	switch k {
	case String:
		if _, err := s.Str(nil, nil); err != nil {
			return nil, err
		}
		return s.data[start:s.pos], nil
	case Number:
		return s.Number()
	case Bool, Null:
		return s.Literal()
	}
	return nil, s.SyntaxError()
}
