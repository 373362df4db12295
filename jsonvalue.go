package llmratelimit

import (
	"bytes"
	"math"
	"strconv"
	"unicode/utf8"
)

// This file reads and writes single JSON values: integers, strings for the
// handler's own error bodies, and the integer members of one object (the
// usage block of a response).

// parseJSONInt converts a JSON number to an int64. It accepts any number
// whose value is an integer within range ("12", "1.0", "1e3") and rejects
// fractions and numbers out of range.
func parseJSONInt(raw []byte) (int64, bool) {
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

// appendJSONString appends s as a JSON string literal. Invalid UTF-8
// becomes U+FFFD so that the output is always valid JSON.
func appendJSONString(dst []byte, s string) []byte {
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

// objectInts reads the JSON object obj and stores its integer members named
// in names into out: bit i of found is set when names[i] is present as a
// non-negative integer. Other members, nested objects included, are
// skipped. ok is false when obj is not a valid object.
func objectInts(obj []byte, names []string, out []int64) (found uint32, ok bool) {
	s := jsonScanner{data: obj}
	if s.peek() != jsonObject {
		return 0, false
	}
	err := s.object(names, func(k string) error {
		i := 0
		for i < len(names) && names[i] != k {
			i++
		}
		if i == len(names) || s.peek() != jsonNumber {
			return s.skip(nil)
		}
		raw, err := s.number()
		if v, isInt := parseJSONInt(raw); err == nil && isInt && v >= 0 {
			out[i] = v
			found |= 1 << i
		}
		return err
	})
	return found, err == nil
}

// The helpers below find members in JSON text that is not parsed as a
// whole (a stream's data line, the tail of an answer), with any white space
// that JSON allows around the colon: `"type":"message_stop"` and
// `"type": "message_stop"` are the same member.

// sseData is the payload of an event stream's data line ("data:" and one
// optional space stripped, the line end trimmed); ok is false for any
// other line.
func sseData(line []byte) (data []byte, ok bool) {
	data, ok = bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return nil, false
	}
	return bytes.TrimSpace(data), true
}

// memberValue is the index in b just past `"key"`, white space, ':' and
// white space, for the first occurrence of key at or after from, or -1.
func memberValue(b []byte, key string, from int) int {
	var buf [64]byte
	pat := append(append(append(buf[:0], '"'), key...), '"')
	for i := from; i < len(b); {
		j := bytes.Index(b[i:], pat)
		if j < 0 {
			return -1
		}
		k := skipSpace(b, i+j+len(pat))
		if k < len(b) && b[k] == ':' {
			return skipSpace(b, k+1)
		}
		i += j + 1
	}
	return -1
}

// hasStringMember tells whether b holds the member "key": "value" (value
// without escapes).
func hasStringMember(b []byte, key, value string) bool {
	for i := 0; ; {
		v := memberValue(b, key, i)
		if v < 0 {
			return false
		}
		if v+len(value)+2 <= len(b) && b[v] == '"' && string(b[v+1:v+1+len(value)]) == value && b[v+1+len(value)] == '"' {
			return true
		}
		i = v
	}
}

// stringMember is the raw text of the first string member named key in b
// (escapes left as written).
func stringMember(b []byte, key string) ([]byte, bool) {
	v := memberValue(b, key, 0)
	if v < 0 || v >= len(b) || b[v] != '"' {
		return nil, false
	}
	end := bytes.IndexByte(b[v+1:], '"')
	if end < 0 {
		return nil, false
	}
	return b[v+1 : v+1+end], true
}
