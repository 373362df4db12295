package main

// Request shapes: one builder per request format the estimator reads. Each
// builder spends a text budget drawn from the kind's provider and records
// the text pieces the model reads, so they can be checked against an
// independent extraction from the written body.

import (
	"fmt"
	"math/rand"
	"strings"
)

// Body is one generated request.
type Body struct {
	Kind, Format, Path, Desc string
	Value                    Obj
	Style                    Style
	Pieces                   []string // text the model reads, as recorded by the builder
	Messages                 int
	MaxOutput                int
	N                        int
	Labels                   Labels
}

type builder struct {
	r      *rand.Rand
	p      Provider
	kind   string
	b      *Body
	budget int
}

// take draws about n bytes of the kind's text.
func (c *builder) take(n int) string {
	n = max(n, 24)
	s := c.p.Take(c.r, n, &c.b.Labels)
	for tries := 0; s == "" && tries < 5; tries++ {
		s = c.p.Take(c.r, n, &c.b.Labels)
	}
	if s == "" {
		panic("provider for " + c.kind + " returned no text")
	}
	return s
}

// rec records a piece of text the model reads.
func (c *builder) rec(s string) string {
	c.b.Pieces = append(c.b.Pieces, s)
	return s
}

func (c *builder) text(n int) string { return c.rec(c.take(n)) }

// split divides total into k parts of random, not too unequal, sizes.
func (c *builder) split(total, k int) []int {
	w := make([]int, k)
	sum := 0
	for i := range w {
		w[i] = 2 + c.r.Intn(5)
		sum += w[i]
	}
	out := make([]int, k)
	for i := range w {
		out[i] = total * w[i] / sum
	}
	return out
}

func (c *builder) pick(xs ...string) string { return xs[c.r.Intn(len(xs))] }

func (c *builder) chance(pct int) bool { return c.r.Intn(100) < pct }

var maxChoices = []int{128, 256, 300, 512, 800, 1000, 1024, 1500, 2048, 4000, 4096, 8192, 16384}

func (c *builder) maxTokens() int { return maxChoices[c.r.Intn(len(maxChoices))] }

// smallShare is the size of a short side text (system prompt, question).
func (c *builder) smallShare(frac int, limit int) int {
	return min(max(c.budget/frac, 40), limit)
}

// ---- OpenAI -----------------------------------------------------------------

func (c *builder) openAIMax(o Obj, allowN bool) Obj {
	switch k := c.r.Intn(20); {
	case k < 10:
		c.b.MaxOutput = c.maxTokens()
		o = append(o, KV{"max_tokens", c.b.MaxOutput})
	case k < 17:
		c.b.MaxOutput = c.maxTokens()
		o = append(o, KV{"max_completion_tokens", c.b.MaxOutput})
	}
	if allowN && c.chance(12) {
		c.b.N = 2 + c.r.Intn(3)
		o = append(o, KV{"n", c.b.N})
	}
	if c.chance(20) {
		o = append(o, KV{"stream", true}, KV{"stream_options", Obj{{"include_usage", true}}})
	}
	return o
}

func textParts(c *builder, typ string, n int) []any {
	k := 1
	if n > 800 {
		k = 1 + c.r.Intn(3)
	}
	var parts []any
	for _, sz := range c.split(n, k) {
		parts = append(parts, Obj{{"type", typ}, {"text", c.text(sz)}})
	}
	return parts
}

func shapeOpenAIChatString(c *builder) {
	c.b.Path, c.b.Format = "/v1/chat/completions", "openai"
	var msgs []any
	desc := "chat completions: "
	rest := c.budget
	if c.chance(70) {
		n := c.smallShare(6, 1500)
		role := c.pick("system", "system", "developer")
		s := c.text(n)
		rest -= len(s)
		msgs = append(msgs, Obj{{"role", role}, {"content", s}})
		desc += role + " + "
	}
	msgs = append(msgs, Obj{{"role", "user"}, {"content", c.text(rest)}})
	desc += "user, string content"
	c.b.Messages = len(msgs)
	o := Obj{{"model", c.pick("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5-mini")}, {"messages", msgs}}
	if c.chance(30) {
		o = append(o, KV{"temperature", 0.2})
	}
	c.b.Value = c.openAIMax(o, true)
	c.b.Desc = desc
}

func shapeOpenAIChatParts(c *builder) {
	c.b.Path, c.b.Format = "/v1/chat/completions", "openai"
	turns := 1 + 2*c.r.Intn(min(3, 1+c.budget/2500)) // 1, 3 or 5 user/assistant entries
	var msgs []any
	rest := c.budget
	desc := "chat completions: "
	if c.chance(60) {
		n := c.smallShare(8, 1200)
		var content any
		if c.chance(50) {
			content = textParts(c, "text", n)
			desc += "system (parts) + "
		} else {
			content = c.text(n)
			desc += "system + "
		}
		rest -= n
		msgs = append(msgs, Obj{{"role", "system"}, {"content", content}})
	}
	for i, sz := range c.split(rest, turns) {
		if i%2 == 0 {
			msgs = append(msgs, Obj{{"role", "user"}, {"content", textParts(c, "text", sz)}})
		} else {
			msgs = append(msgs, Obj{{"role", "assistant"}, {"content", c.text(sz)}})
		}
	}
	desc += plural(turns, "turn", "turns") + ", user content as text-part arrays"
	c.b.Messages = len(msgs)
	o := Obj{{"model", c.pick("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5-mini")}, {"messages", msgs}}
	c.b.Value = c.openAIMax(o, true)
	c.b.Desc = desc
}

// toolResult returns the text a tool gives back.
func (c *builder) toolResult(n int) string { return c.take(n) }

func shapeOpenAIChatTools(c *builder) {
	c.b.Path, c.b.Format = "/v1/chat/completions", "openai"
	tools := pickTools(c.r, c.kind)
	var defs []any
	for _, t := range tools {
		defs = append(defs, t.openAIChat())
	}
	c.rec(Compact(defs))
	var msgs []any
	rest := c.budget
	if c.chance(50) {
		s := c.text(c.smallShare(10, 600))
		rest -= len(s)
		msgs = append(msgs, Obj{{"role", "system"}, {"content", s}})
	}
	q := c.text(c.smallShare(8, 700))
	rest -= len(q)
	msgs = append(msgs, Obj{{"role", "user"}, {"content", q}})
	calls := 1 + c.r.Intn(2)
	var tc []any
	var ids []string
	for range calls {
		t := tools[c.r.Intn(len(tools))]
		id := randID(c.r, "call_", 24)
		ids = append(ids, id)
		args := c.rec(Compact(t.Args(c.r)))
		tc = append(tc, Obj{{"id", id}, {"type", "function"}, {"function", Obj{{"name", t.Name}, {"arguments", args}}}})
	}
	msgs = append(msgs, Obj{{"role", "assistant"}, {"content", nil}, {"tool_calls", tc}})
	follow := c.chance(40)
	if follow {
		rest = rest * 4 / 5
	}
	for i, sz := range c.split(rest, calls) {
		res := c.toolResult(sz)
		var content any = c.rec(res)
		if c.chance(25) {
			content = []any{Obj{{"type", "text"}, {"text", res}}}
		}
		msgs = append(msgs, Obj{{"role", "tool"}, {"tool_call_id", ids[i]}, {"content", content}})
	}
	desc := fmt.Sprintf("chat completions: %s, %s with tool messages", plural(len(tools), "tool definition", "tool definitions"), plural(calls, "tool call", "tool calls"))
	if follow {
		msgs = append(msgs, Obj{{"role", "assistant"}, {"content", c.text(c.budget / 10)}})
		msgs = append(msgs, Obj{{"role", "user"}, {"content", c.text(c.budget / 10)}})
		desc += ", then an answer and a follow-up"
	}
	c.b.Messages = len(msgs)
	o := Obj{{"model", c.pick("gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-5-mini")}, {"messages", msgs}, {"tools", defs}}
	if c.chance(40) {
		o = append(o, KV{"tool_choice", "auto"})
	}
	c.b.Value = c.openAIMax(o, false)
	c.b.Desc = desc
}

func shapeOpenAICompletionsString(c *builder) {
	c.b.Path, c.b.Format = "/v1/completions", "openai"
	o := Obj{{"model", "gpt-3.5-turbo-instruct"}, {"prompt", c.text(c.budget)}}
	if c.chance(85) {
		c.b.MaxOutput = c.maxTokens()
		o = append(o, KV{"max_tokens", c.b.MaxOutput})
	}
	if c.chance(15) {
		c.b.N = 2
		o = append(o, KV{"n", 2})
	}
	c.b.Value = o
	c.b.Desc = "completions: prompt string"
}

func shapeOpenAICompletionsArray(c *builder) {
	c.b.Path, c.b.Format = "/v1/completions", "openai"
	k := 2 + c.r.Intn(min(5, 1+c.budget/1000))
	var prompts []any
	for _, sz := range c.split(c.budget, k) {
		prompts = append(prompts, c.text(sz))
	}
	o := Obj{{"model", "gpt-3.5-turbo-instruct"}, {"prompt", prompts}}
	if c.chance(85) {
		mt := c.maxTokens()
		c.b.MaxOutput = mt * k
		o = append(o, KV{"max_tokens", mt})
	}
	c.b.Value = o
	c.b.Desc = fmt.Sprintf("completions: prompt array of %d", k)
}

func (c *builder) responsesMax(o Obj) Obj {
	if c.chance(85) {
		c.b.MaxOutput = c.maxTokens()
		o = append(o, KV{"max_output_tokens", c.b.MaxOutput})
	}
	return o
}

func shapeOpenAIResponsesString(c *builder) {
	c.b.Path, c.b.Format = "/v1/responses", "openai"
	o := Obj{{"model", c.pick("gpt-4.1", "gpt-5", "o4-mini", "gpt-4o")}}
	rest := c.budget
	desc := "responses: "
	if c.chance(65) {
		s := c.text(c.smallShare(6, 1200))
		rest -= len(s)
		o = append(o, KV{"instructions", s})
		desc += "instructions + "
	}
	o = append(o, KV{"input", c.text(rest)})
	desc += "input string"
	c.b.Value = c.responsesMax(o)
	c.b.Desc = desc
}

func shapeOpenAIResponsesItems(c *builder) {
	c.b.Path, c.b.Format = "/v1/responses", "openai"
	o := Obj{{"model", c.pick("gpt-4.1", "gpt-5", "o4-mini", "gpt-4o")}}
	rest := c.budget
	desc := "responses: "
	if c.chance(50) {
		s := c.text(c.smallShare(8, 1000))
		rest -= len(s)
		o = append(o, KV{"instructions", s})
		desc += "instructions + "
	}
	useTools := c.budget >= 1500 && c.chance(45)
	var items []any
	var defs []any
	if useTools {
		tools := pickTools(c.r, c.kind)
		for _, t := range tools {
			defs = append(defs, t.openAIResponses())
		}
		c.rec(Compact(defs))
		q := c.text(c.smallShare(8, 700))
		rest -= len(q)
		items = append(items, Obj{{"role", "user"}, {"content", []any{Obj{{"type", "input_text"}, {"text", q}}}}})
		t := tools[c.r.Intn(len(tools))]
		id := randID(c.r, "call_", 24)
		items = append(items, Obj{{"type", "function_call"}, {"call_id", id}, {"name", t.Name}, {"arguments", c.rec(Compact(t.Args(c.r)))}})
		items = append(items, Obj{{"type", "function_call_output"}, {"call_id", id}, {"output", c.rec(c.toolResult(rest))}})
		desc += plural(len(defs), "tool", "tools") + ", input items: user input_text, function_call, function_call_output"
	} else {
		turns := 1 + 2*c.r.Intn(min(3, 1+c.budget/2500))
		for i, sz := range c.split(rest, turns) {
			if i%2 == 0 {
				if c.chance(70) {
					items = append(items, Obj{{"role", "user"}, {"content", textParts(c, "input_text", sz)}})
				} else {
					items = append(items, Obj{{"role", "user"}, {"content", c.text(sz)}})
				}
			} else {
				items = append(items, Obj{{"type", "message"}, {"role", "assistant"}, {"content", textParts(c, "output_text", sz)}})
			}
		}
		desc += plural(turns, "input item", "input items") + " with input_text/output_text parts"
	}
	c.b.Messages = len(items)
	o = append(o, KV{"input", items})
	if defs != nil {
		o = append(o, KV{"tools", defs})
	}
	c.b.Value = c.responsesMax(o)
	c.b.Desc = desc
}

func shapeOpenAIEmbeddingsString(c *builder) {
	c.b.Path, c.b.Format = "/v1/embeddings", "openai"
	o := Obj{{"model", c.pick("text-embedding-3-small", "text-embedding-3-large")}, {"input", c.text(c.budget)}}
	if c.chance(40) {
		o = append(o, KV{"encoding_format", "float"})
	}
	c.b.Value = o
	c.b.Desc = "embeddings: input string"
}

func shapeOpenAIEmbeddingsArray(c *builder) {
	c.b.Path, c.b.Format = "/v1/embeddings", "openai"
	k := min(max(2, c.budget/1200), 48)
	var in []any
	for _, sz := range c.split(c.budget, k) {
		in = append(in, c.text(sz))
	}
	o := Obj{{"model", c.pick("text-embedding-3-small", "text-embedding-3-large")}, {"input", in}}
	if c.chance(40) {
		o = append(o, KV{"dimensions", 512})
	}
	c.b.Value = o
	c.b.Desc = fmt.Sprintf("embeddings: input array of %d", k)
}

// ---- Anthropic --------------------------------------------------------------

func (c *builder) anthropicTop(model string) Obj {
	c.b.MaxOutput = c.maxTokens()
	return Obj{{"model", model}, {"max_tokens", c.b.MaxOutput}}
}

func anthropicModel(c *builder) string {
	return c.pick("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-7")
}

func textBlocks(c *builder, n int) []any {
	return textParts(c, "text", n)
}

func shapeAnthropicBasic(c *builder) {
	c.b.Path, c.b.Format = "/v1/messages", "anthropic"
	o := c.anthropicTop(anthropicModel(c))
	rest := c.budget
	desc := "messages: "
	if c.chance(70) {
		s := c.text(c.smallShare(6, 1500))
		rest -= len(s)
		o = append(o, KV{"system", s})
		desc += "system string + "
	}
	o = append(o, KV{"messages", []any{Obj{{"role", "user"}, {"content", c.text(rest)}}}})
	c.b.Messages = 1
	if c.chance(25) {
		o = append(o, KV{"temperature", 0.7})
	}
	if c.chance(20) {
		o = append(o, KV{"stream", true})
	}
	c.b.Value = o
	c.b.Desc = desc + "one user message, string content"
}

func shapeAnthropicBlocks(c *builder) {
	c.b.Path, c.b.Format = "/v1/messages", "anthropic"
	o := c.anthropicTop(anthropicModel(c))
	rest := c.budget
	desc := "messages: "
	if c.chance(80) {
		n := c.smallShare(5, 3000)
		var blocks []any
		for i, sz := range c.split(n, 1+c.r.Intn(2)) {
			blk := Obj{{"type", "text"}, {"text", c.text(sz)}}
			if i == 0 && c.chance(60) {
				blk = append(blk, KV{"cache_control", Obj{{"type", "ephemeral"}}})
			}
			blocks = append(blocks, blk)
		}
		rest -= n
		o = append(o, KV{"system", blocks})
		desc += "system as " + plural(len(blocks), "text block", "text blocks") + " + "
	}
	turns := 1 + 2*c.r.Intn(min(3, 1+c.budget/2500))
	var msgs []any
	for i, sz := range c.split(rest, turns) {
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		if c.chance(65) {
			msgs = append(msgs, Obj{{"role", role}, {"content", textBlocks(c, sz)}})
		} else {
			msgs = append(msgs, Obj{{"role", role}, {"content", c.text(sz)}})
		}
	}
	c.b.Messages = len(msgs)
	o = append(o, KV{"messages", msgs})
	c.b.Value = o
	c.b.Desc = desc + plural(turns, "message", "messages") + ", text blocks or strings"
}

func shapeAnthropicTools(c *builder) {
	c.b.Path, c.b.Format = "/v1/messages", "anthropic"
	o := c.anthropicTop(anthropicModel(c))
	rest := c.budget
	if c.chance(50) {
		s := c.text(c.smallShare(10, 600))
		rest -= len(s)
		o = append(o, KV{"system", s})
	}
	tools := pickTools(c.r, c.kind)
	var defs []any
	for _, t := range tools {
		defs = append(defs, t.anthropic())
	}
	c.rec(Compact(defs))
	q := c.text(c.smallShare(8, 700))
	rest -= len(q)
	msgs := []any{Obj{{"role", "user"}, {"content", q}}}
	var asst []any
	if c.chance(60) {
		s := c.text(c.smallShare(20, 200))
		rest -= len(s)
		asst = append(asst, Obj{{"type", "text"}, {"text", s}})
	}
	calls := 1 + c.r.Intn(2)
	var ids []string
	for range calls {
		t := tools[c.r.Intn(len(tools))]
		id := randID(c.r, "toolu_01", 22)
		ids = append(ids, id)
		in := t.Args(c.r)
		c.rec(Compact(in))
		asst = append(asst, Obj{{"type", "tool_use"}, {"id", id}, {"name", t.Name}, {"input", in}})
	}
	msgs = append(msgs, Obj{{"role", "assistant"}, {"content", asst}})
	follow := c.chance(40)
	if follow {
		rest = rest * 4 / 5
	}
	var results []any
	for i, sz := range c.split(rest, calls) {
		res := c.toolResult(sz)
		var content any
		if c.chance(35) {
			content = []any{Obj{{"type", "text"}, {"text", c.rec(res)}}}
		} else {
			content = c.rec(res)
		}
		results = append(results, Obj{{"type", "tool_result"}, {"tool_use_id", ids[i]}, {"content", content}})
	}
	msgs = append(msgs, Obj{{"role", "user"}, {"content", results}})
	desc := fmt.Sprintf("messages: %s, %s", plural(len(tools), "tool", "tools"), plural(calls, "tool_use and tool_result block pair", "tool_use and tool_result block pairs"))
	if follow {
		msgs = append(msgs, Obj{{"role", "assistant"}, {"content", []any{Obj{{"type", "text"}, {"text", c.text(c.budget / 10)}}}}})
		msgs = append(msgs, Obj{{"role", "user"}, {"content", c.text(c.budget / 10)}})
		desc += ", then an answer and a follow-up"
	}
	c.b.Messages = len(msgs)
	o = append(o, KV{"tools", defs}, KV{"messages", msgs})
	if c.chance(30) {
		o = append(o, KV{"tool_choice", Obj{{"type", "auto"}}})
	}
	c.b.Value = o
	c.b.Desc = desc
}

// ---- Gemini -----------------------------------------------------------------

func (c *builder) geminiPath() string {
	model := "gemini-2.5-flash"
	if c.chance(20) {
		model = "gemini-2.5-pro"
	}
	method := "generateContent"
	if c.chance(15) {
		method = "streamGenerateContent"
	}
	return "/v1beta/models/" + model + ":" + method
}

func (c *builder) geminiConfig(o Obj) Obj {
	gc := Obj{}
	if c.chance(40) {
		gc = append(gc, KV{"temperature", 0.4})
	}
	if c.chance(85) {
		c.b.MaxOutput = c.maxTokens()
		gc = append(gc, KV{"maxOutputTokens", c.b.MaxOutput})
	}
	if c.chance(10) {
		c.b.N = 2
		gc = append(gc, KV{"candidateCount", 2})
	}
	if len(gc) > 0 {
		o = append(o, KV{"generationConfig", gc})
	}
	return o
}

func (c *builder) geminiSystem(o Obj, frac, limit int) (Obj, int, string) {
	s := c.text(c.smallShare(frac, limit))
	return append(o, KV{"systemInstruction", Obj{{"parts", []any{Obj{{"text", s}}}}}}), len(s), "systemInstruction + "
}

func geminiTextParts(c *builder, n int) []any {
	k := 1
	if n > 1000 && c.chance(40) {
		k = 2
	}
	var parts []any
	for _, sz := range c.split(n, k) {
		parts = append(parts, Obj{{"text", c.text(sz)}})
	}
	return parts
}

func shapeGeminiBasic(c *builder) {
	c.b.Path, c.b.Format = c.geminiPath(), "gemini"
	o := Obj{}
	rest := c.budget
	desc := "generateContent: "
	if c.chance(60) {
		var n int
		var d string
		o, n, d = c.geminiSystem(o, 6, 1500)
		rest -= n
		desc += d
	}
	o = append(o, KV{"contents", []any{Obj{{"role", "user"}, {"parts", geminiTextParts(c, rest)}}}})
	c.b.Messages = 1
	c.b.Value = c.geminiConfig(o)
	c.b.Desc = desc + "one user content"
}

func shapeGeminiMultiturn(c *builder) {
	c.b.Path, c.b.Format = c.geminiPath(), "gemini"
	o := Obj{}
	rest := c.budget
	desc := "generateContent: "
	if c.chance(50) {
		var n int
		var d string
		o, n, d = c.geminiSystem(o, 8, 1200)
		rest -= n
		desc += d
	}
	turns := 3 + 2*c.r.Intn(min(2, 1+c.budget/4000))
	var contents []any
	for i, sz := range c.split(rest, turns) {
		role := "user"
		if i%2 == 1 {
			role = "model"
		}
		contents = append(contents, Obj{{"role", role}, {"parts", geminiTextParts(c, sz)}})
	}
	c.b.Messages = len(contents)
	o = append(o, KV{"contents", contents})
	c.b.Value = c.geminiConfig(o)
	c.b.Desc = desc + plural(turns, "content", "contents") + ", user and model turns"
}

func shapeGeminiTools(c *builder) {
	c.b.Path, c.b.Format = c.geminiPath(), "gemini"
	o := Obj{}
	rest := c.budget
	desc := "generateContent: "
	if c.chance(50) {
		var n int
		var d string
		o, n, d = c.geminiSystem(o, 10, 600)
		rest -= n
		desc += d
	}
	tools := pickTools(c.r, c.kind)
	var decls []any
	for _, t := range tools {
		decls = append(decls, t.gemini())
	}
	c.rec(Compact(decls))
	q := c.text(c.smallShare(8, 700))
	rest -= len(q)
	contents := []any{Obj{{"role", "user"}, {"parts", []any{Obj{{"text", q}}}}}}
	calls := 1 + c.r.Intn(2)
	var callParts, respParts []any
	var names []string
	for range calls {
		t := tools[c.r.Intn(len(tools))]
		names = append(names, t.Name)
		fc := Obj{{"name", t.Name}, {"args", t.Args(c.r)}}
		c.rec(Compact(fc))
		callParts = append(callParts, Obj{{"functionCall", fc}})
	}
	contents = append(contents, Obj{{"role", "model"}, {"parts", callParts}})
	follow := c.chance(40)
	if follow {
		rest = rest * 4 / 5
	}
	structured := false
	for i, sz := range c.split(rest, calls) {
		res := c.toolResult(sz)
		var payload any = res
		if c.kind == "json_in_string" {
			if v, err := Decode([]byte(res)); err == nil {
				payload = v
				structured = true
			}
		}
		fr := Obj{{"name", names[i]}, {"response", Obj{{"result", payload}}}}
		c.rec(Compact(fr))
		respParts = append(respParts, Obj{{"functionResponse", fr}})
	}
	contents = append(contents, Obj{{"role", "user"}, {"parts", respParts}})
	desc += fmt.Sprintf("%s, %s", plural(len(tools), "function declaration", "function declarations"), plural(calls, "functionCall and functionResponse part pair", "functionCall and functionResponse part pairs"))
	if structured {
		desc += " (JSON result as an object)"
	}
	if follow {
		contents = append(contents, Obj{{"role", "model"}, {"parts", []any{Obj{{"text", c.text(c.budget / 10)}}}}})
		contents = append(contents, Obj{{"role", "user"}, {"parts", []any{Obj{{"text", c.text(c.budget / 10)}}}}})
		desc += ", then an answer and a follow-up"
	}
	c.b.Messages = len(contents)
	o = append(o, KV{"contents", contents}, KV{"tools", []any{Obj{{"functionDeclarations", decls}}}})
	c.b.Value = c.geminiConfig(o)
	c.b.Desc = desc
}

// ---- registry ---------------------------------------------------------------

type shape struct {
	name  string
	tools bool
	build func(*builder)
}

var shapes = []shape{
	{"openai_chat_string", false, shapeOpenAIChatString},
	{"openai_chat_parts", false, shapeOpenAIChatParts},
	{"openai_chat_tools", true, shapeOpenAIChatTools},
	{"openai_completions_string", false, shapeOpenAICompletionsString},
	{"openai_completions_array", false, shapeOpenAICompletionsArray},
	{"openai_responses_string", false, shapeOpenAIResponsesString},
	{"openai_responses_items", false, shapeOpenAIResponsesItems},
	{"openai_embeddings_string", false, shapeOpenAIEmbeddingsString},
	{"openai_embeddings_array", false, shapeOpenAIEmbeddingsArray},
	{"anthropic_basic", false, shapeAnthropicBasic},
	{"anthropic_blocks", false, shapeAnthropicBlocks},
	{"anthropic_tools", true, shapeAnthropicTools},
	{"gemini_basic", false, shapeGeminiBasic},
	{"gemini_multiturn", false, shapeGeminiMultiturn},
	{"gemini_tools", true, shapeGeminiTools},
}

// plural formats "1 tool" / "3 tools".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func kb(n int) string {
	if n < 1000 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f KB", float64(n)/1000)
}

func describe(b *Body, textBytes int) string {
	return fmt.Sprintf("%s; %s of text from %s; %s JSON", b.Desc, kb(textBytes), strings.Join(b.Labels, ", "), b.Style.Name)
}
