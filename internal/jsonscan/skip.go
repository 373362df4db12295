package llmratelimit

// skip validates the value at s.pos and moves past it, iteratively. When tc
// is not nil it is fed the value's compact JSON: the source text without
// white space outside strings (strings as written, escapes included).
func (s *jsonScanner) skip(tc *textCounter) error {
	var stack [maxJSONDepth/64 + 1]uint64 // bit set: object at that level
	level := 0
	put := func(c byte) {
		if tc != nil {
			tc.writeByte(c)
		}
	}
	for {
		// A value is expected at s.pos.
		k := s.peek()
		if k == jsonObject || k == jsonArray {
			c := s.data[s.pos]
			if err := s.open(); err != nil {
				return err
			}
			put(c)
			if k == jsonObject {
				stack[level/64] |= 1 << (level % 64)
			} else {
				stack[level/64] &^= 1 << (level % 64)
			}
			level++
			s.ws()
			if s.pos < len(s.data) && s.data[s.pos] == c+2 { // '{'+2 == '}', '['+2 == ']'
				// Empty container: fall through to the closing logic.
			} else if k == jsonObject {
				if err := s.skipKey(tc); err != nil {
					return err
				}
				continue
			} else {
				continue
			}
		} else {
			raw, err := s.scalar(k)
			if err != nil {
				return err
			}
			if tc != nil {
				tc.write(raw)
			}
		}
		// After a value (or at an empty container's close): a separator
		// or closers.
		for {
			if level == 0 {
				return nil
			}
			s.ws()
			if s.pos >= len(s.data) {
				return s.syntaxError()
			}
			c := s.data[s.pos]
			obj := stack[(level-1)/64]&(1<<((level-1)%64)) != 0
			if (obj && c == '}') || (!obj && c == ']') {
				s.pos++
				s.depth--
				level--
				put(c)
				continue
			}
			if c != ',' {
				return s.syntaxError()
			}
			s.pos++
			put(c)
			if obj {
				s.ws()
				if err := s.skipKey(tc); err != nil {
					return err
				}
			}
			break
		}
	}
}

// skipKey scans `"key":` at s.pos (after white space), feeding tc.
func (s *jsonScanner) skipKey(tc *textCounter) error {
	if s.pos >= len(s.data) || s.data[s.pos] != '"' {
		return s.syntaxError()
	}
	start := s.pos
	if _, err := s.key(); err != nil {
		return err
	}
	if tc != nil {
		tc.write(s.data[start:s.pos])
	}
	s.ws()
	if s.pos >= len(s.data) || s.data[s.pos] != ':' {
		return s.syntaxError()
	}
	s.pos++
	if tc != nil {
		tc.writeByte(':')
	}
	return nil
}
