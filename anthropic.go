package llmratelimit

import (
	"fmt"
	"math"
)

// This file knows Anthropic's wire format: the Messages API request body,
// the usage object of its responses, and Anthropic's error body.

// parseAnthropic reads the top-level object at s.pos of a Messages API
// request: system, messages, tools, max_tokens, stream. Anthropic has no
// n: N stays 1.
func parseAnthropic(s *jsonScanner, tc *textCounter, info *requestInfo) (part, error) {
	var slots [3]part // system, messages, tools
	err := s.object(anthropicTopKeys, func(key string) (err error) {
		switch key {
		case "model":
			info.Model, err = stringValue(s)
		case "system":
			slots[0], err = anthropicContent(s, tc, -1)
		case "messages":
			slots[1], err = anthropicMessages(s, tc)
		case "tools":
			slots[2], err = compactField(s, tc, "tools")
		case "max_tokens":
			info.MaxOutput, err = intField(s, "max_tokens", 0, 0)
		case "stream":
			info.Stream, err = boolField(s, "stream")
		default:
			err = s.skip(nil)
		}
		return err
	})
	return sumParts(slots[:]), err
}

func anthropicMessages(s *jsonScanner, tc *textCounter) (total part, err error) {
	if ok, err := s.nullOr(jsonArray, "messages", "an array"); !ok {
		return part{}, err
	}
	err = s.array(func(i int) error {
		if s.peek() != jsonObject {
			return s.typeError(fmt.Sprintf("messages[%d]", i), "an object")
		}
		var content part // {role, content}
		err := s.object(contentKeys, func(key string) (err error) {
			if key != "content" {
				return s.skip(nil)
			}
			content, err = anthropicContent(s, tc, i)
			return err
		})
		content.messages++
		total.add(content)
		return err
	})
	return total, err
}

// anthropicContent reads system (msg < 0) or message content: a string,
// null or an array of blocks.
func anthropicContent(s *jsonScanner, tc *textCounter, msg int) (part, error) {
	switch s.peek() {
	case jsonString, jsonNull:
		return countLoose(s, tc)
	case jsonArray:
		return anthropicBlocks(s, tc)
	}
	name := "system"
	if msg >= 0 {
		name = fmt.Sprintf("messages[%d].content", msg)
	}
	return part{}, s.typeError(name, "a string or an array")
}

// anthropicBlocks reads an array of content blocks.
func anthropicBlocks(s *jsonScanner, tc *textCounter) (part, error) {
	return sumArray(s, tc, func(s *jsonScanner, tc *textCounter) (part, error) {
		if s.peek() == jsonObject {
			return anthropicBlock(s, tc)
		}
		return countLoose(s, tc)
	})
}

// anthropicBlock reads one content block. Counted: text; tool_use and
// server_tool_use name and input (as compact JSON); tool_result content
// (a string or blocks, recursively); a document's title, context and
// plain-text source. An image block is one image; base64 data, URLs and
// thinking blocks are not counted. Recursion through nested content is
// bounded by maxJSONDepth.
func anthropicBlock(s *jsonScanner, tc *textCounter) (part, error) {
	var slots [7]part
	var typ [16]byte
	typN := 0
	err := s.object(anthropicBlockKeys, func(key string) (err error) {
		switch key {
		case "type":
			typN, err = shortField(s, typ[:])
		case "text":
			slots[0], err = countLoose(s, tc)
		case "name":
			slots[1], err = countLoose(s, tc)
		case "input":
			slots[2], err = countCompact(s, tc)
		case "title":
			slots[3], err = countLoose(s, tc)
		case "context":
			slots[4], err = countLoose(s, tc)
		case "content":
			if s.peek() == jsonArray {
				slots[5], err = anthropicBlocks(s, tc)
			} else {
				slots[5], err = countLoose(s, tc)
			}
		case "source":
			if s.peek() == jsonObject {
				slots[6], err = anthropicSource(s, tc)
			} else {
				err = s.skip(nil)
			}
		default:
			err = s.skip(nil)
		}
		return err
	})
	p := sumParts(slots[:])
	if string(typ[:typN]) == "image" {
		p.images++
	}
	return p, err
}

// anthropicSource reads a block's source: {type:"text", data} counts data
// as text, {type:"content", content:[blocks]} counts the blocks; base64
// and URL sources are not text.
func anthropicSource(s *jsonScanner, tc *textCounter) (part, error) {
	var typ [16]byte
	typN, dataPos := 0, -1
	var content part
	err := s.object(anthropicSourceKeys, func(key string) (err error) {
		switch key {
		case "type":
			typN, err = shortField(s, typ[:])
		case "data":
			dataPos = -1
			if s.peek() == jsonString {
				dataPos = s.pos
			}
			err = s.skip(nil)
		case "content":
			if s.peek() == jsonArray {
				content, err = anthropicBlocks(s, tc)
			} else {
				content, err = countLoose(s, tc)
			}
		default:
			err = s.skip(nil)
		}
		return err
	})
	if err == nil && string(typ[:typN]) == "text" && dataPos >= 0 {
		// The data was validated above; count it now that its type is known.
		ds := jsonScanner{data: s.data, pos: dataPos}
		return countString(&ds, tc)
	}
	return content, err
}

// The keys each object walker reads.
var (
	anthropicTopKeys    = []string{"model", "system", "messages", "tools", "max_tokens", "stream"}
	contentKeys         = []string{"content"}
	anthropicBlockKeys  = []string{"type", "text", "name", "input", "title", "context", "content", "source"}
	anthropicSourceKeys = []string{"type", "data", "content"}
)

var anthropicUsageNames = []string{"input_tokens", "cache_creation_input_tokens", "output_tokens"}

// anthropicFinalEvent marks the stream event whose usage is final
// (cumulative output_tokens).
var anthropicFinalEvent = []byte(`"type":"message_delta"`)

// anthropicUsage combines the members of a usage object read by
// anthropicUsageNames: input_tokens + cache_creation_input_tokens (cache
// reads do not count against ITPM), and output_tokens.
func anthropicUsage(v []int64, found uint32) (usage, bool) {
	if found&0b101 == 0 {
		return usage{}, false
	}
	in := v[0] + v[1]
	if in < v[0] { // both are non-negative: a wrap is an overflow
		in = math.MaxInt64
	}
	return usage{Input: in, Output: v[2]}, true
}

// appendAnthropicError appends Anthropic's error body:
// {"type":"error","error":{"type":…,"message":…}}.
func appendAnthropicError(dst []byte, typ, msg string) []byte {
	dst = append(dst, `{"type":"error","error":{"type":`...)
	dst = appendJSONString(dst, typ)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, msg)
	return append(dst, "}}"...)
}
