package main

// Independent extraction of the text the model reads from a written body.
// The reference counts are computed from this extraction; the builder's own
// record must match it exactly (as a multiset of pieces).

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Extracted is what a body asks of the model.
type Extracted struct {
	Pieces    []string
	Messages  int
	MaxOutput int
	N         int
}

func getObj(v any) Obj {
	o, _ := v.(Obj)
	return o
}

func getStr(o Obj, k string) (string, bool) {
	v, ok := o.Get(k)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

func getInt(o Obj, k string) (int, bool) {
	v, ok := o.Get(k)
	if !ok {
		return 0, false
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(n.String())
	return i, err == nil
}

func getArr(o Obj, k string) []any {
	v, _ := o.Get(k)
	a, _ := v.([]any)
	return a
}

// textOrParts adds a string, or the "text" of every part of an array.
func (e *Extracted) textOrParts(v any) {
	switch x := v.(type) {
	case string:
		e.Pieces = append(e.Pieces, x)
	case []any:
		for _, p := range x {
			if s, ok := getStr(getObj(p), "text"); ok {
				e.Pieces = append(e.Pieces, s)
			}
		}
	}
}

func extract(path string, body Obj) (*Extracted, error) {
	e := &Extracted{}
	switch {
	case path == "/v1/chat/completions":
		for _, m := range getArr(body, "messages") {
			mo := getObj(m)
			e.Messages++
			if c, ok := mo.Get("content"); ok {
				e.textOrParts(c)
			}
			for _, tc := range getArr(mo, "tool_calls") {
				if a, ok := getStr(getObj(getObj(tc).getV("function")), "arguments"); ok {
					e.Pieces = append(e.Pieces, a)
				}
			}
		}
		if t, ok := body.Get("tools"); ok {
			e.Pieces = append(e.Pieces, Compact(t))
		}
		e.openAIMax(body, 1)
	case path == "/v1/completions":
		prompts := 1
		switch p := body.getV("prompt").(type) {
		case string:
			e.Pieces = append(e.Pieces, p)
		case []any:
			prompts = len(p)
			for _, s := range p {
				e.Pieces = append(e.Pieces, s.(string))
			}
		}
		e.openAIMax(body, prompts)
	case path == "/v1/responses":
		if s, ok := getStr(body, "instructions"); ok {
			e.Pieces = append(e.Pieces, s)
		}
		switch in := body.getV("input").(type) {
		case string:
			e.Pieces = append(e.Pieces, in)
		case []any:
			for _, it := range in {
				io := getObj(it)
				e.Messages++
				if c, ok := io.Get("content"); ok {
					e.textOrParts(c)
				}
				if a, ok := getStr(io, "arguments"); ok {
					e.Pieces = append(e.Pieces, a)
				}
				if out, ok := getStr(io, "output"); ok {
					e.Pieces = append(e.Pieces, out)
				}
			}
		}
		if t, ok := body.Get("tools"); ok {
			e.Pieces = append(e.Pieces, Compact(t))
		}
		e.openAIMax(body, 1)
	case path == "/v1/embeddings":
		switch in := body.getV("input").(type) {
		case string:
			e.Pieces = append(e.Pieces, in)
		case []any:
			for _, s := range in {
				e.Pieces = append(e.Pieces, s.(string))
			}
		}
	case path == "/v1/messages":
		if s, ok := body.Get("system"); ok {
			e.textOrParts(s)
		}
		for _, m := range getArr(body, "messages") {
			e.Messages++
			switch c := getObj(m).getV("content").(type) {
			case string:
				e.Pieces = append(e.Pieces, c)
			case []any:
				for _, blk := range c {
					bo := getObj(blk)
					typ, _ := getStr(bo, "type")
					switch typ {
					case "text":
						s, _ := getStr(bo, "text")
						e.Pieces = append(e.Pieces, s)
					case "tool_use":
						e.Pieces = append(e.Pieces, Compact(bo.getV("input")))
					case "tool_result":
						e.textOrParts(bo.getV("content"))
					default:
						return nil, fmt.Errorf("unexpected block type %q", typ)
					}
				}
			}
		}
		if t, ok := body.Get("tools"); ok {
			e.Pieces = append(e.Pieces, Compact(t))
		}
		e.MaxOutput, _ = getInt(body, "max_tokens")
	case strings.HasPrefix(path, "/v1beta/models/"):
		if si, ok := body.Get("systemInstruction"); ok {
			for _, p := range getArr(getObj(si), "parts") {
				if s, ok := getStr(getObj(p), "text"); ok {
					e.Pieces = append(e.Pieces, s)
				}
			}
		}
		for _, ct := range getArr(body, "contents") {
			e.Messages++
			for _, p := range getArr(getObj(ct), "parts") {
				po := getObj(p)
				if s, ok := getStr(po, "text"); ok {
					e.Pieces = append(e.Pieces, s)
				}
				for _, k := range []string{"functionCall", "functionResponse"} {
					if v, ok := po.Get(k); ok {
						e.Pieces = append(e.Pieces, Compact(v))
					}
				}
			}
		}
		for _, t := range getArr(body, "tools") {
			if d, ok := getObj(t).Get("functionDeclarations"); ok {
				e.Pieces = append(e.Pieces, Compact(d))
			}
		}
		gc := getObj(body.getV("generationConfig"))
		e.MaxOutput, _ = getInt(gc, "maxOutputTokens")
		e.N, _ = getInt(gc, "candidateCount")
	default:
		return nil, fmt.Errorf("unknown path %s", path)
	}
	return e, nil
}

func (o Obj) getV(k string) any {
	v, _ := o.Get(k)
	return v
}

// openAIMax applies the plugin's precedence: max_completion_tokens, then
// max_output_tokens, then max_tokens; times the number of prompts.
func (e *Extracted) openAIMax(body Obj, prompts int) {
	for _, k := range []string{"max_completion_tokens", "max_output_tokens", "max_tokens"} {
		if v, ok := getInt(body, k); ok {
			e.MaxOutput = v * prompts
			break
		}
	}
	e.N, _ = getInt(body, "n")
}
