package llmratelimit

import (
	"fmt"

	"github.com/llmgate/caddy-llm-ratelimit/internal/costmodel"
	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// The OpenAI dialect's request side (see openai.go): the walk over the
// bodies of chat completions, completions, Responses and embeddings that
// counts the text the model reads, its images and the output reservation.

// parse reads the body; on an Azure deployment path the model is the
// body's, else the deployment's name.
func (openAIDialect) parse(s *jsonscan.Scanner, tc *costmodel.Counter, path string, info *requestInfo) (costmodel.Part, error) {
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
func parseOpenAI(s *jsonscan.Scanner, tc *costmodel.Counter, info *requestInfo) (costmodel.Part, error) {
	const (
		slotMessages = iota
		slotInput
		slotPrompt
		slotInstructions
		slotTools
		slotFunctions
		numSlots
	)
	var slots [numSlots]costmodel.Part
	// max_completion_tokens, max_output_tokens, max_tokens; -1 = absent.
	maxes := [3]int64{-1, -1, -1}
	prompts := int64(1)
	err := s.Object(openAITopKeys, func(key string) (err error) {
		switch key {
		case "model":
			info.Model, err = s.StringValue()
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
			maxes[0], err = s.IntField("max_completion_tokens", 0, -1)
		case "max_output_tokens":
			maxes[1], err = s.IntField("max_output_tokens", 0, -1)
		case "max_tokens":
			maxes[2], err = s.IntField("max_tokens", 0, -1)
		case "n":
			info.N, err = s.IntField("n", 1, 1)
		case "stream":
			info.Stream, err = s.BoolField("stream")
		case "stream_options":
			err = openAIStreamOptions(s, info)
		default:
			err = s.Skip(nil)
		}
		return err
	})
	if err != nil {
		return costmodel.Part{}, err
	}
	for _, v := range maxes {
		if v >= 0 {
			// max_tokens applies to each prompt of a completions batch.
			info.MaxOutput = satMul(v, prompts)
			break
		}
	}
	return costmodel.Sum(slots[:]), nil
}

func openAIStreamOptions(s *jsonscan.Scanner, info *requestInfo) error {
	if ok, err := s.NullOr(jsonscan.Object, "stream_options", "an object"); !ok {
		return err
	}
	info.StreamUsageSet = true
	return s.Object(streamOptionsKeys, func(key string) error {
		if key != "include_usage" {
			return s.Skip(nil)
		}
		_, err := s.BoolField("stream_options.include_usage")
		return err
	})
}

// openAIMessages reads chat "messages": each entry is one message.
func openAIMessages(s *jsonscan.Scanner, tc *costmodel.Counter) (total costmodel.Part, err error) {
	if ok, err := s.NullOr(jsonscan.Array, "messages", "an array"); !ok {
		return costmodel.Part{}, err
	}
	err = s.Array(func(i int) error {
		if s.Peek() != jsonscan.Object {
			return s.TypeError(fmt.Sprintf("messages[%d]", i), "an object")
		}
		p, err := openAIEntry(s, tc, "messages", i)
		p.Messages++
		total.Add(p)
		return err
	})
	return total, err
}

// openAIInputs reads "prompt" (completions) or "input" (Responses,
// embeddings): a string, or an array of strings, token ids, arrays of
// token ids, or Responses input items (one message each). prompts is the
// number of prompts: each string or token array is one, loose token ids
// together are one.
func openAIInputs(s *jsonscan.Scanner, tc *costmodel.Counter, name string) (total costmodel.Part, prompts int64, err error) {
	switch s.Peek() {
	case jsonscan.String:
		total, err = countString(s, tc)
		return total, 1, err
	case jsonscan.Null:
		_, err = s.Literal()
		return costmodel.Part{}, 1, err
	case jsonscan.Array:
	default:
		return costmodel.Part{}, 1, s.TypeError(name, "a string or an array")
	}
	err = s.Array(func(i int) (err error) {
		var p costmodel.Part
		switch s.Peek() {
		case jsonscan.String:
			prompts++
			p, err = countString(s, tc)
		case jsonscan.Number:
			p.Tokens++
			_, err = s.Number()
		case jsonscan.Array:
			prompts++
			p, err = tokenIDs(s, tc)
		case jsonscan.Object: // a Responses input item
			p, err = openAIEntry(s, tc, name, i)
			p.Messages++
		default:
			return s.TypeError(fmt.Sprintf("%s[%d]", name, i), "a string, a token id, an array of token ids or an object")
		}
		total.Add(p)
		return err
	})
	return total, max(prompts, 1), err
}

// tokenIDs reads an array of token ids: each number is one token; anything
// else in it is counted as text.
func tokenIDs(s *jsonscan.Scanner, tc *costmodel.Counter) (total costmodel.Part, err error) {
	err = s.Array(func(int) (err error) {
		if s.Peek() == jsonscan.Number {
			total.Tokens++
			_, err = s.Number()
			return err
		}
		p, err := countCompact(s, tc)
		total.Add(p)
		return err
	})
	return total, err
}

// openAIEntry reads a chat message or a Responses input item: message
// content, a participant or function name, tool calls (chat), function
// call arguments, inputs and outputs (Responses items).
func openAIEntry(s *jsonscan.Scanner, tc *costmodel.Counter, list string, idx int) (costmodel.Part, error) {
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
	var slots [numSlots]costmodel.Part
	err := s.Object(openAIEntryKeys, func(key string) (err error) {
		switch key {
		case "content":
			switch s.Peek() {
			case jsonscan.String, jsonscan.Null:
				slots[slotContent], err = countLoose(s, tc)
			case jsonscan.Array:
				slots[slotContent], err = openAIParts(s, tc)
			default:
				err = s.TypeError(fmt.Sprintf("%s[%d].content", list, idx), "a string or an array")
			}
		case "name":
			slots[slotName], err = countLoose(s, tc)
		case "tool_calls": // [{id, type, function:{name, arguments}}]
			if s.Peek() == jsonscan.Array {
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
			if s.Peek() == jsonscan.Array {
				slots[slotOutput], err = openAIParts(s, tc)
			} else {
				slots[slotOutput], err = countLoose(s, tc)
			}
		default:
			err = s.Skip(nil)
		}
		return err
	})
	return costmodel.Sum(slots[:]), err
}

// openAIParts reads an array of content parts.
func openAIParts(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	return sumArray(s, tc, func(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
		if s.Peek() == jsonscan.Object {
			return openAIPart(s, tc)
		}
		return countLoose(s, tc)
	})
}

// openAIPart reads one content part: text ({type:text|input_text|
// output_text, text}), a refusal, or an image ({type:image_url,
// image_url:{url,detail}} in chat, {type:input_image, detail} in
// Responses). An image counts by its detail, never by its URL or data.
func openAIPart(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	var text [2]costmodel.Part // text, refusal
	var typ, detail [16]byte
	var typN, detailN int
	image := false
	err := s.Object(openAIPartKeys, func(key string) (err error) {
		switch key {
		case "type":
			typN, err = s.ShortString(typ[:])
		case "text":
			text[0], err = countLoose(s, tc)
		case "refusal":
			text[1], err = countLoose(s, tc)
		case "detail": // Responses input_image
			detailN, err = s.ShortString(detail[:])
		case "image_url":
			image = true
			if s.Peek() != jsonscan.Object {
				return s.Skip(nil) // a URL or base64 data is not text
			}
			err = s.Object(imageURLKeys, func(key string) (err error) {
				if key == "detail" {
					detailN, err = s.ShortString(detail[:])
					return err
				}
				return s.Skip(nil)
			})
		default:
			err = s.Skip(nil)
		}
		return err
	})
	p := costmodel.Sum(text[:])
	switch string(typ[:typN]) {
	case "image_url", "input_image", "image":
		image = true
	}
	if image && string(detail[:detailN]) == "low" {
		p.ImagesLow++
	} else if image {
		p.Images++
	}
	return p, err
}

// openAIFunction reads a function call: the text of its name, arguments
// and input counts; {function:{…}} and {custom:{…}} wrappers of tool calls
// are read through.
func openAIFunction(s *jsonscan.Scanner, tc *costmodel.Counter) (costmodel.Part, error) {
	if s.Peek() != jsonscan.Object {
		return countLoose(s, tc)
	}
	var fields [5]costmodel.Part
	err := s.Object(openAIFunctionKeys, func(key string) (err error) {
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
			err = s.Skip(nil)
		}
		return err
	})
	return costmodel.Sum(fields[:]), err
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
