package jsonscan

import "sync/atomic"

// Readers of one field of a walked object, each consuming the value at the
// scanner's position; name is the field as errors name it.

// IntField reads an integer field that must be >= lo; null gives absent.
func (s *Scanner) IntField(name string, lo, absent int64) (int64, error) {
	if ok, err := s.NullOr(Number, name, "an integer"); !ok {
		return absent, err
	}
	raw, err := s.Number()
	if err != nil {
		return 0, err
	}
	v, ok := ParseInt(raw)
	if !ok {
		return 0, Errorf("%s must be an integer, not %.40s", name, raw)
	}
	if v < lo {
		return 0, Errorf("%s must be >= %d", name, lo)
	}
	return v, nil
}

// BoolField reads a boolean field; null is false.
func (s *Scanner) BoolField(name string) (bool, error) {
	if ok, err := s.NullOr(Bool, name, "a boolean"); !ok {
		return false, err
	}
	raw, err := s.Literal()
	return err == nil && raw[0] == 't', err
}

// ShortString reads a short string (a type or detail name) into buf;
// other kinds are skipped and read as "". n is the decoded length, cut to
// buf.
func (s *Scanner) ShortString(buf []byte) (n int, err error) {
	if s.Peek() != String {
		return 0, s.Skip(nil)
	}
	n, err = s.Str(nil, buf)
	return min(n, len(buf)), err
}

// StringValue reads a field that should be a string and returns it
// decoded (interned when it has no escapes: model names repeat); other
// kinds are skipped and give "".
func (s *Scanner) StringValue() (string, error) {
	if s.Peek() != String {
		return "", s.Skip(nil)
	}
	start := s.pos
	n, err := s.Str(nil, nil)
	if err != nil {
		return "", err
	}
	raw := s.data[start+1 : s.pos-1]
	if n == len(raw) {
		return intern(raw), nil
	}
	buf := make([]byte, n)
	s.pos = start
	_, err = s.Str(nil, buf)
	return string(buf), err
}

// internTable keeps the strings that StringValue read lately (model
// names, mostly), so that a request naming one seen before costs no
// allocation for it: a fixed table of slots by hash, each holding the last
// string that landed on it. Memory stays bounded whatever clients send.
var internTable [256]atomic.Pointer[string]

// maxInterned bounds the strings kept in internTable.
const maxInterned = 64

// intern is string(b), from internTable when it holds it.
func intern(b []byte) string {
	if len(b) == 0 || len(b) > maxInterned {
		return string(b)
	}
	h := uint32(2166136261) // FNV-1a
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	slot := &internTable[h%uint32(len(internTable))]
	if p := slot.Load(); p != nil && *p == string(b) {
		return *p
	}
	str := string(b)
	slot.Store(&str)
	return str
}

// Members reads the object at the scanner's position (its kind checked by
// the caller), calling member with each member's key (raw, quotes
// included) and the scanner at the value; member must consume the value.
// Unlike Object, it hands the key itself: it is for documents off the hot
// path (a prices file).
func (s *Scanner) Members(member func(key []byte) error) error {
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
		start := s.pos
		if _, err := s.Str(nil, nil); err != nil {
			return err
		}
		key := s.data[start:s.pos]
		if s.ws(); s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.SyntaxError()
		}
		s.pos++
		if err := member(key); err != nil {
			return err
		}
	}
}

// Value is the raw text of the value at the scanner's position, which it
// consumes (validated).
func (s *Scanner) Value() ([]byte, error) {
	start := s.pos
	switch k := s.Peek(); k {
	case Object, Array:
		if err := s.Skip(nil); err != nil {
			return nil, err
		}
		return s.data[start:s.pos], nil
	default:
		return s.scalar(k)
	}
}
