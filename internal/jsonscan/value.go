package jsonscan

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file reads and writes single JSON values: integers, strings for the
// handler's own error bodies, and the integer members of one object (the
// usage block of a response).

// ParseInt converts a JSON number to an int64. It accepts any number
// whose value is an integer within range ("12", "1.0", "1e3") and rejects
// fractions and numbers out of range.
func ParseInt(raw []byte) (int64, bool) {
	neg := len(raw) > 0 && raw[0] == '-'
	digits := raw
	if neg {
		digits = raw[1:]
	}
	var u uint64
	for i, c := range digits {
		if c < '0' || c > '9' {
			// A fraction or an exponent: rare, take the slow path.
			f, err := strconv.ParseFloat(string(raw), 64)
			if err != nil || f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 {
				return 0, false
			}
			return int64(f), true
		}
		if i >= 19 || u*10+uint64(c-'0') < u {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	if u > 1<<63-1 && !(neg && u == 1<<63) {
		return 0, false
	}
	if neg {
		return -int64(u), true
	}
	return int64(u), true
}

// AppendString appends s as a JSON string literal. Invalid UTF-8
// becomes U+FFFD so that the output is always valid JSON.
func AppendString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, "\\ufffd"...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// ObjectInts reads the JSON object obj and stores its integer members named
// in names into out: bit i of found is set when names[i] is present as a
// non-negative integer. Other members, nested objects included, are
// skipped. ok is false when obj is not a valid object.
func ObjectInts(obj []byte, names []string, out []int64) (found uint32, ok bool) {
	s := Scanner{data: obj}
	if s.Peek() != Object {
		return 0, false
	}
	err := s.objectInts(names, "", out, &found)
	return found, err == nil
}

// objectInts reads the integer members names of the object at s.pos; a
// name "a.b" is member b of the object member a. prefix is the path of
// this object ("" at the top, "a." one level down).
func (s *Scanner) objectInts(names []string, prefix string, out []int64, found *uint32) error {
	// The keys to look at: this level's part of each name.
	var buf [8]string
	known := buf[:0]
	for _, n := range names {
		if len(n) <= len(prefix) || n[:len(prefix)] != prefix {
			continue
		}
		n = n[len(prefix):]
		if i := strings.IndexByte(n, '.'); i >= 0 {
			n = n[:i]
		}
		if len(known) < len(buf) {
			known = append(known, n)
		}
	}
	return s.Object(known, func(k string) error {
		switch s.Peek() {
		case Number:
			for i, n := range names {
				if len(n) == len(prefix)+len(k) && n[:len(prefix)] == prefix && n[len(prefix):] == k {
					raw, err := s.Number()
					if v, isInt := ParseInt(raw); err == nil && isInt && v >= 0 {
						out[i] = v
						*found |= 1 << i
					}
					return err
				}
			}
		case Object:
			if prefix == "" { // one level down at most
				for _, n := range names {
					if len(n) > len(k) && n[:len(k)] == k && n[len(k)] == '.' {
						return s.objectInts(names, n[:len(k)+1], out, found)
					}
				}
			}
		}
		return s.Skip(nil)
	})
}

// The helpers below find members in JSON text that is not parsed as a
// whole (a stream's data line, the tail of an answer), with any white space
// that JSON allows around the colon: `"type":"message_stop"` and
// `"type": "message_stop"` are the same member.

// SSEData is the payload of an event stream's data line ("data:" and one
// optional space stripped, the line end trimmed); ok is false for any
// other line.
func SSEData(line []byte) (data []byte, ok bool) {
	data, ok = bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return nil, false
	}
	return bytes.TrimSpace(data), true
}

// MemberValue is the index in b just past `"key"`, white space, ':' and
// white space, for the first occurrence of key at or after from, or -1.
func MemberValue(b []byte, key string, from int) int {
	var buf [64]byte
	pat := append(append(append(buf[:0], '"'), key...), '"')
	for i := from; i < len(b); {
		j := bytes.Index(b[i:], pat)
		if j < 0 {
			return -1
		}
		k := SkipSpace(b, i+j+len(pat))
		if k < len(b) && b[k] == ':' {
			return SkipSpace(b, k+1)
		}
		i += j + 1
	}
	return -1
}

// HasStringMember tells whether b holds the member "key": "value" (value
// without escapes).
func HasStringMember(b []byte, key, value string) bool {
	for i := 0; ; {
		v := MemberValue(b, key, i)
		if v < 0 {
			return false
		}
		if v+len(value)+2 <= len(b) && b[v] == '"' && string(b[v+1:v+1+len(value)]) == value && b[v+1+len(value)] == '"' {
			return true
		}
		i = v
	}
}

// StringMember is the raw text of the first string member named key in b
// (escapes left as written).
func StringMember(b []byte, key string) ([]byte, bool) {
	v := MemberValue(b, key, 0)
	if v < 0 || v >= len(b) || b[v] != '"' {
		return nil, false
	}
	end := bytes.IndexByte(b[v+1:], '"')
	if end < 0 {
		return nil, false
	}
	return b[v+1 : v+1+end], true
}

// SetIntMember sets the integer members names of the object obj (valid
// JSON) to v: every member of those names is rewritten; when none is
// there, a member add is added first in the object. It returns the new
// object.
func SetIntMember(obj []byte, names []string, add string, v int64) []byte {
	type span struct{ from, to int }
	var spans []span
	s := Scanner{data: obj}
	_ = s.Object(names, func(k string) error {
		from := s.pos
		err := s.Skip(nil)
		if k != "" {
			spans = append(spans, span{from, s.pos})
		}
		return err
	})
	num := strconv.AppendInt(nil, v, 10)
	if len(spans) == 0 {
		return AddMember(obj, add, num)
	}
	out := make([]byte, 0, len(obj)+8*len(spans))
	last := 0
	for _, sp := range spans {
		out = append(append(out, obj[last:sp.from]...), num...)
		last = sp.to
	}
	return append(out, obj[last:]...)
}

// AddMember adds the member name with the raw JSON value first in the
// object obj.
func AddMember(obj []byte, name string, value []byte) []byte {
	i := bytes.IndexByte(obj, '{') + 1
	member := append(append(append([]byte{'"'}, name...), `":`...), value...)
	if j := bytes.IndexFunc(obj[i:], func(r rune) bool { return !isJSONSpace(r) }); j >= 0 && obj[i+j] != '}' {
		member = append(member, ',')
	}
	return append(append(append(make([]byte, 0, len(obj)+len(member)), obj[:i]...), member...), obj[i:]...)
}

// MemberSpan is where the value of the top-level member of one of names
// is in obj (the last such member), or ok false.
func MemberSpan(obj []byte, names []string) (from, to int, ok bool) {
	s := Scanner{data: obj}
	_ = s.Object(names, func(k string) error {
		f := s.pos
		err := s.Skip(nil)
		if k != "" {
			from, to, ok = f, s.pos, true
		}
		return err
	})
	return from, to, ok
}

func isJSONSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

// SkipSpace is the index of the first byte at or after i in b that is not
// JSON white space, or len(b).
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}
