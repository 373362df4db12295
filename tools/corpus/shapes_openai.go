package main

// OpenAI request shapes: chat completions, legacy completions, responses
// and embeddings.

import "fmt"

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

// ---- chat completions ---------------------------------------------------------

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
	turns := c.turns()
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

func shapeOpenAIChatTools(c *builder) {
	c.b.Path, c.b.Format = "/v1/chat/completions", "openai"
	tools, defs := c.toolDefs(tool.openAIChat)
	var msgs []any
	rest := c.budget
	if s, ok := c.sideText(50, 10, 600, &rest); ok {
		msgs = append(msgs, Obj{{"role", "system"}, {"content", s}})
	}
	msgs = append(msgs, Obj{{"role", "user"}, {"content", c.question(&rest)}})
	calls := 1 + c.r.Intn(2)
	var tc []any
	var ids []string
	for range calls {
		t, id, args := c.call(tools, "call_", 24)
		ids = append(ids, id)
		tc = append(tc, Obj{{"id", id}, {"type", "function"}, {"function", Obj{{"name", t.Name}, {"arguments", Compact(args)}}}})
	}
	msgs = append(msgs, Obj{{"role", "assistant"}, {"content", nil}, {"tool_calls", tc}})
	follow := c.followUp(&rest)
	for i, sz := range c.split(rest, calls) {
		msgs = append(msgs, Obj{{"role", "tool"}, {"tool_call_id", ids[i]}, {"content", c.toolResultContent(sz, 25)}})
	}
	desc := fmt.Sprintf("chat completions: %s, %s with tool messages", plural(len(tools), "tool definition", "tool definitions"), plural(calls, "tool call", "tool calls"))
	if follow {
		answer, q := c.answerAndQuestion()
		msgs = append(msgs, Obj{{"role", "assistant"}, {"content", answer}}, Obj{{"role", "user"}, {"content", q}})
		desc += followUpDesc
	}
	c.b.Messages = len(msgs)
	o := Obj{{"model", c.pick("gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-5-mini")}, {"messages", msgs}, {"tools", defs}}
	if c.chance(40) {
		o = append(o, KV{"tool_choice", "auto"})
	}
	c.b.Value = c.openAIMax(o, false)
	c.b.Desc = desc
}

// ---- completions ------------------------------------------------------------

func shapeOpenAICompletionsString(c *builder) {
	c.b.Path, c.b.Format = "/v1/completions", "openai"
	o := Obj{{"model", "gpt-3.5-turbo-instruct"}, {"prompt", c.text(c.budget)}}
	o = c.maxOutput(o, "max_tokens")
	c.b.Value = c.twoChoices(o, "n", 15)
	c.b.Desc = "completions: prompt string"
}

func shapeOpenAICompletionsArray(c *builder) {
	c.b.Path, c.b.Format = "/v1/completions", "openai"
	k := 2 + c.r.Intn(min(5, 1+c.budget/1000))
	o := Obj{{"model", "gpt-3.5-turbo-instruct"}, {"prompt", c.texts(c.budget, k, nil)}}
	if c.chance(85) {
		mt := c.maxTokens()
		c.b.MaxOutput = mt * k
		o = append(o, KV{"max_tokens", mt})
	}
	c.b.Value = o
	c.b.Desc = fmt.Sprintf("completions: prompt array of %d", k)
}

// ---- responses --------------------------------------------------------------

// responsesStart begins a Responses API body: the model and, with
// probability pct, instructions of smallShare(frac, limit) bytes. It returns
// the body so far, the budget left and the start of the description.
func (c *builder) responsesStart(pct, frac, limit int) (Obj, int, string) {
	c.b.Path, c.b.Format = "/v1/responses", "openai"
	o := Obj{{"model", c.pick("gpt-4.1", "gpt-5", "o4-mini", "gpt-4o")}}
	rest := c.budget
	desc := "responses: "
	if s, ok := c.sideText(pct, frac, limit, &rest); ok {
		o = append(o, KV{"instructions", s})
		desc += "instructions + "
	}
	return o, rest, desc
}

func shapeOpenAIResponsesString(c *builder) {
	o, rest, desc := c.responsesStart(65, 6, 1200)
	o = append(o, KV{"input", c.text(rest)})
	c.b.Value = c.maxOutput(o, "max_output_tokens")
	c.b.Desc = desc + "input string"
}

func shapeOpenAIResponsesItems(c *builder) {
	o, rest, desc := c.responsesStart(50, 8, 1000)
	var items, defs []any
	if c.budget >= 1500 && c.chance(45) {
		var tools []tool
		tools, defs = c.toolDefs(tool.openAIResponses)
		items = append(items, Obj{{"role", "user"}, {"content", []any{typedText("input_text", c.question(&rest))}}})
		t, id, args := c.call(tools, "call_", 24)
		items = append(items, Obj{{"type", "function_call"}, {"call_id", id}, {"name", t.Name}, {"arguments", Compact(args)}})
		items = append(items, Obj{{"type", "function_call_output"}, {"call_id", id}, {"output", c.rec(c.toolResult(rest))}})
		desc += plural(len(defs), "tool", "tools") + ", input items: user input_text, function_call, function_call_output"
	} else {
		turns := c.turns()
		for i, sz := range c.split(rest, turns) {
			switch {
			case i%2 == 1:
				items = append(items, Obj{{"type", "message"}, {"role", "assistant"}, {"content", textParts(c, "output_text", sz)}})
			case c.chance(70):
				items = append(items, Obj{{"role", "user"}, {"content", textParts(c, "input_text", sz)}})
			default:
				items = append(items, Obj{{"role", "user"}, {"content", c.text(sz)}})
			}
		}
		desc += plural(turns, "input item", "input items") + " with input_text/output_text parts"
	}
	c.b.Messages = len(items)
	o = append(o, KV{"input", items})
	if defs != nil {
		o = append(o, KV{"tools", defs})
	}
	c.b.Value = c.maxOutput(o, "max_output_tokens")
	c.b.Desc = desc
}

// ---- embeddings -------------------------------------------------------------

func embeddingsModel(c *builder) string {
	return c.pick("text-embedding-3-small", "text-embedding-3-large")
}

func shapeOpenAIEmbeddingsString(c *builder) {
	c.b.Path, c.b.Format = "/v1/embeddings", "openai"
	o := Obj{{"model", embeddingsModel(c)}, {"input", c.text(c.budget)}}
	if c.chance(40) {
		o = append(o, KV{"encoding_format", "float"})
	}
	c.b.Value = o
	c.b.Desc = "embeddings: input string"
}

func shapeOpenAIEmbeddingsArray(c *builder) {
	c.b.Path, c.b.Format = "/v1/embeddings", "openai"
	k := min(max(2, c.budget/1200), 48)
	in := c.texts(c.budget, k, nil)
	o := Obj{{"model", embeddingsModel(c)}, {"input", in}}
	if c.chance(40) {
		o = append(o, KV{"dimensions", 512})
	}
	c.b.Value = o
	c.b.Desc = fmt.Sprintf("embeddings: input array of %d", k)
}
