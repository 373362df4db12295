package llmratelimit

import "fmt"

// The OpenAI dialect's request side (see openai.go): the walk over the
// bodies of chat completions, completions, Responses and embeddings that
// counts the text the model reads, its images and the output reservation.

// parse reads the body; on an Azure deployment path the model is the
// body's, else the deployment's name.
func (openAIDialect) parse(s *jsonScanner, tc *textCounter, path string, info *requestInfo) (part, error) {
	ep, deployment, _ := openAIRoute(path)
	info.NoOutput = ep == openAIEmbeddings
	p, err := parseOpenAI(s, tc, info)
	if info.Model == "" {
		info.Model = deployment
	}
	return p, err
}

// parseOpenAI reads the top-level object at s.pos of an OpenAI request. It
// does not need to know the endpoint: messages (chat), prompt
// (completions), input and instructions (Responses, embeddings) are each
// read when present.
func parseOpenAI(s *jsonScanner, tc *textCounter, info *requestInfo) (part, error) {
	const (
		slotMessages = iota
		slotInput
		slotPrompt
		slotInstructions
		slotTools
		slotFunctions
		numSlots
	)
	var slots [numSlots]part
	// max_completion_tokens, max_output_tokens, max_tokens; -1 = absent.
	maxes := [3]int64{-1, -1, -1}
	prompts := int64(1)
	err := s.object(openAITopKeys, func(key string) (err error) {
		switch key {
		case "model":
			info.Model, err = stringValue(s)
		case "messages":
			slots[slotMessages], err = openAIMessages(s, tc)
		case "input":
			slots[slotInput], _, err = openAIInputs(s, tc, "input")
		case "prompt":
			slots[slotPrompt], prompts, err = openAIInputs(s, tc, "prompt")
		case "instructions":
			slots[slotInstructions], err = textField(s, tc, "instructions")
		case "tools":
			slots[slotTools], err = compactField(s, tc, "tools")
		case "functions": // legacy function definitions
			slots[slotFunctions], err = countLoose(s, tc)
		case "max_completion_tokens":
			maxes[0], err = intField(s, "max_completion_tokens", 0, -1)
		case "max_output_tokens":
			maxes[1], err = intField(s, "max_output_tokens", 0, -1)
		case "max_tokens":
			maxes[2], err = intField(s, "max_tokens", 0, -1)
		case "n":
			info.N, err = intField(s, "n", 1, 1)
		case "stream":
			info.Stream, err = boolField(s, "stream")
		case "stream_options":
			err = openAIStreamOptions(s, info)
		default:
			err = s.skip(nil)
		}
		return err
	})
	if err != nil {
		return part{}, err
	}
	for _, v := range maxes {
		if v >= 0 {
			// max_tokens applies to each prompt of a completions batch.
			info.MaxOutput = satMul(v, prompts)
			break
		}
	}
	return sumParts(slots[:]), nil
}

func openAIStreamOptions(s *jsonScanner, info *requestInfo) error {
	if ok, err := s.nullOr(jsonObject, "stream_options", "an object"); !ok {
		return err
	}
	info.StreamUsageSet = true
	return s.object(streamOptionsKeys, func(key string) error {
		if key != "include_usage" {
			return s.skip(nil)
		}
		_, err := boolField(s, "stream_options.include_usage")
		return err
	})
}

// openAIMessages reads chat "messages": each entry is one message.
func openAIMessages(s *jsonScanner, tc *textCounter) (total part, err error) {
	if ok, err := s.nullOr(jsonArray, "messages", "an array"); !ok {
		return part{}, err
	}
	err = s.array(func(i int) error {
		if s.peek() != jsonObject {
			return s.typeError(fmt.Sprintf("messages[%d]", i), "an object")
		}
		p, err := openAIEntry(s, tc, "messages", i)
		p.messages++
		total.add(p)
		return err
	})
	return total, err
}

// openAIInputs reads "prompt" (completions) or "input" (Responses,
// embeddings): a string, or an array of strings, token ids, arrays of
// token ids, or Responses input items (one message each). prompts is the
// number of prompts: each string or token array is one, loose token ids
// together are one.
func openAIInputs(s *jsonScanner, tc *textCounter, name string) (total part, prompts int64, err error) {
	switch s.peek() {
	case jsonString:
		total, err = countString(s, tc)
		return total, 1, err
	case jsonNull:
		_, err = s.literal()
		return part{}, 1, err
	case jsonArray:
	default:
		return part{}, 1, s.typeError(name, "a string or an array")
	}
	err = s.array(func(i int) (err error) {
		var p part
		switch s.peek() {
		case jsonString:
			prompts++
			p, err = countString(s, tc)
		case jsonNumber:
			p.tokens++
			_, err = s.number()
		case jsonArray:
			prompts++
			p, err = tokenIDs(s, tc)
		case jsonObject: // a Responses input item
			p, err = openAIEntry(s, tc, name, i)
			p.messages++
		default:
			return s.typeError(fmt.Sprintf("%s[%d]", name, i), "a string, a token id, an array of token ids or an object")
		}
		total.add(p)
		return err
	})
	return total, max(prompts, 1), err
}

// tokenIDs reads an array of token ids: each number is one token; anything
// else in it is counted as text.
func tokenIDs(s *jsonScanner, tc *textCounter) (total part, err error) {
	err = s.array(func(int) (err error) {
		if s.peek() == jsonNumber {
			total.tokens++
			_, err = s.number()
			return err
		}
		p, err := countCompact(s, tc)
		total.add(p)
		return err
	})
	return total, err
}

// openAIEntry reads a chat message or a Responses input item: message
// content, a participant or function name, tool calls (chat), function
// call arguments, inputs and outputs (Responses items).
func openAIEntry(s *jsonScanner, tc *textCounter, list string, idx int) (part, error) {
	const (
		slotContent = iota
		slotName
		slotToolCalls
		slotFunctionCall
		slotArguments
		slotInput
		slotOutput
		numSlots
	)
	var slots [numSlots]part
	err := s.object(openAIEntryKeys, func(key string) (err error) {
		switch key {
		case "content":
			switch s.peek() {
			case jsonString, jsonNull:
				slots[slotContent], err = countLoose(s, tc)
			case jsonArray:
				slots[slotContent], err = openAIParts(s, tc)
			default:
				err = s.typeError(fmt.Sprintf("%s[%d].content", list, idx), "a string or an array")
			}
		case "name":
			slots[slotName], err = countLoose(s, tc)
		case "tool_calls": // [{id, type, function:{name, arguments}}]
			if s.peek() == jsonArray {
				slots[slotToolCalls], err = sumArray(s, tc, openAIFunction)
			} else {
				slots[slotToolCalls], err = countLoose(s, tc)
			}
		case "function_call": // legacy: {name, arguments}
			slots[slotFunctionCall], err = openAIFunction(s, tc)
		case "arguments": // Responses function_call item
			slots[slotArguments], err = countLoose(s, tc)
		case "input": // Responses custom_tool_call item
			slots[slotInput], err = countLoose(s, tc)
		case "output": // Responses function_call_output item
			if s.peek() == jsonArray {
				slots[slotOutput], err = openAIParts(s, tc)
			} else {
				slots[slotOutput], err = countLoose(s, tc)
			}
		default:
			err = s.skip(nil)
		}
		return err
	})
	return sumParts(slots[:]), err
}

// openAIParts reads an array of content parts.
func openAIParts(s *jsonScanner, tc *textCounter) (part, error) {
	return sumArray(s, tc, func(s *jsonScanner, tc *textCounter) (part, error) {
		if s.peek() == jsonObject {
			return openAIPart(s, tc)
		}
		return countLoose(s, tc)
	})
}

// openAIPart reads one content part: text ({type:text|input_text|
// output_text, text}), a refusal, or an image ({type:image_url,
// image_url:{url,detail}} in chat, {type:input_image, detail} in
// Responses). An image counts by its detail, never by its URL or data.
func openAIPart(s *jsonScanner, tc *textCounter) (part, error) {
	var text [2]part // text, refusal
	var typ, detail [16]byte
	var typN, detailN int
	image := false
	err := s.object(openAIPartKeys, func(key string) (err error) {
		switch key {
		case "type":
			typN, err = shortField(s, typ[:])
		case "text":
			text[0], err = countLoose(s, tc)
		case "refusal":
			text[1], err = countLoose(s, tc)
		case "detail": // Responses input_image
			detailN, err = shortField(s, detail[:])
		case "image_url":
			image = true
			if s.peek() != jsonObject {
				return s.skip(nil) // a URL or base64 data is not text
			}
			err = s.object(imageURLKeys, func(key string) (err error) {
				if key == "detail" {
					detailN, err = shortField(s, detail[:])
					return err
				}
				return s.skip(nil)
			})
		default:
			err = s.skip(nil)
		}
		return err
	})
	p := sumParts(text[:])
	switch string(typ[:typN]) {
	case "image_url", "input_image", "image":
		image = true
	}
	if image && string(detail[:detailN]) == "low" {
		p.imagesLow++
	} else if image {
		p.images++
	}
	return p, err
}

// openAIFunction reads a function call: the text of its name, arguments
// and input counts; {function:{…}} and {custom:{…}} wrappers of tool calls
// are read through.
func openAIFunction(s *jsonScanner, tc *textCounter) (part, error) {
	if s.peek() != jsonObject {
		return countLoose(s, tc)
	}
	var fields [5]part
	err := s.object(openAIFunctionKeys, func(key string) (err error) {
		switch key {
		case "name":
			fields[0], err = countLoose(s, tc)
		case "arguments":
			fields[1], err = countLoose(s, tc)
		case "input":
			fields[2], err = countLoose(s, tc)
		case "function":
			fields[3], err = openAIFunction(s, tc)
		case "custom":
			fields[4], err = openAIFunction(s, tc)
		default:
			err = s.skip(nil)
		}
		return err
	})
	return sumParts(fields[:]), err
}

// The keys each object walker reads.
var (
	openAITopKeys = []string{"model", "messages", "input", "prompt", "instructions", "tools", "functions",
		"max_completion_tokens", "max_output_tokens", "max_tokens", "n", "stream", "stream_options"}
	streamOptionsKeys  = []string{"include_usage"}
	openAIEntryKeys    = []string{"content", "name", "tool_calls", "function_call", "arguments", "input", "output"}
	openAIPartKeys     = []string{"type", "text", "refusal", "detail", "image_url"}
	imageURLKeys       = []string{"detail"}
	openAIFunctionKeys = []string{"name", "arguments", "input", "function", "custom"}
)
