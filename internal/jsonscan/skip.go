package jsonscan

import "github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"

// Skip validates the value at the scanner's position and moves past it,
// iteratively. When tc is not nil it is fed the value's compact JSON: the
// source text without white space outside strings (strings as written,
// escapes included).
func (s *Scanner) Skip(tc *costmodel.Counter) error {
	var stack [MaxDepth/64 + 1]uint64 // bit set: object at that level
	level := 0
	put := func(c byte) {
		if tc != nil {
			tc.PutByte(c)
		}
	}
	for {
		// A value is expected at s.pos.
		k := s.Peek()
		if k == Object || k == Array {
			c := s.data[s.pos]
			if err := s.open(); err != nil {
				return err
			}
			put(c)
			if k == Object {
				stack[level/64] |= 1 << (level % 64)
			} else {
				stack[level/64] &^= 1 << (level % 64)
			}
			level++
			s.ws()
			if s.pos < len(s.data) && s.data[s.pos] == c+2 { // '{'+2 == '}', '['+2 == ']'
				// Empty container: fall through to the closing logic.
			} else if k == Object {
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
				tc.Write(raw)
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
				return s.SyntaxError()
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
				return s.SyntaxError()
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
func (s *Scanner) skipKey(tc *costmodel.Counter) error {
	if s.pos >= len(s.data) || s.data[s.pos] != '"' {
		return s.SyntaxError()
	}
	start := s.pos
	if _, err := s.key(); err != nil {
		return err
	}
	if tc != nil {
		tc.Write(s.data[start:s.pos])
	}
	s.ws()
	if s.pos >= len(s.data) || s.data[s.pos] != ':' {
		return s.SyntaxError()
	}
	s.pos++
	if tc != nil {
		tc.PutByte(':')
	}
	return nil
}
