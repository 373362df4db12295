package main

// Anthropic request shapes: the Messages API.

import "fmt"

// anthropicStart begins a Messages API body: the model and max_tokens.
func (c *builder) anthropicStart() Obj {
	c.b.Path, c.b.Format = "/v1/messages", "anthropic"
	model := c.pick("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-7")
	c.b.MaxOutput = c.maxTokens()
	return Obj{{"model", model}, {"max_tokens", c.b.MaxOutput}}
}

func shapeAnthropicBasic(c *builder) {
	o := c.anthropicStart()
	rest := c.budget
	desc := "messages: "
	if s, ok := c.sideText(70, 6, 1500, &rest); ok {
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
	o := c.anthropicStart()
	rest := c.budget
	desc := "messages: "
	if c.chance(80) {
		n := c.smallShare(5, 3000)
		var blocks []any
		for i, sz := range c.split(n, 1+c.r.Intn(2)) {
			blk := typedText("text", c.text(sz))
			if i == 0 && c.chance(60) {
				blk = append(blk, KV{"cache_control", Obj{{"type", "ephemeral"}}})
			}
			blocks = append(blocks, blk)
		}
		rest -= n
		o = append(o, KV{"system", blocks})
		desc += "system as " + plural(len(blocks), "text block", "text blocks") + " + "
	}
	turns := c.turns()
	var msgs []any
	for i, sz := range c.split(rest, turns) {
		var content any
		if c.chance(65) {
			content = textParts(c, "text", sz)
		} else {
			content = c.text(sz)
		}
		msgs = append(msgs, Obj{{"role", turnRole(i, "assistant")}, {"content", content}})
	}
	c.b.Messages = len(msgs)
	o = append(o, KV{"messages", msgs})
	c.b.Value = o
	c.b.Desc = desc + plural(turns, "message", "messages") + ", text blocks or strings"
}

func shapeAnthropicTools(c *builder) {
	o := c.anthropicStart()
	rest := c.budget
	if s, ok := c.sideText(50, 10, 600, &rest); ok {
		o = append(o, KV{"system", s})
	}
	tools, defs := c.toolDefs(tool.anthropic)
	msgs := []any{Obj{{"role", "user"}, {"content", c.question(&rest)}}}
	var asst []any
	if s, ok := c.sideText(60, 20, 200, &rest); ok {
		asst = append(asst, typedText("text", s))
	}
	calls := 1 + c.r.Intn(2)
	var ids []string
	for range calls {
		t, id, in := c.call(tools, "toolu_01", 22)
		ids = append(ids, id)
		asst = append(asst, Obj{{"type", "tool_use"}, {"id", id}, {"name", t.Name}, {"input", in}})
	}
	msgs = append(msgs, Obj{{"role", "assistant"}, {"content", asst}})
	follow := c.followUp(&rest)
	var results []any
	for i, sz := range c.split(rest, calls) {
		results = append(results, Obj{{"type", "tool_result"}, {"tool_use_id", ids[i]}, {"content", c.toolResultContent(sz, 35)}})
	}
	msgs = append(msgs, Obj{{"role", "user"}, {"content", results}})
	desc := fmt.Sprintf("messages: %s, %s", plural(len(tools), "tool", "tools"), plural(calls, "tool_use and tool_result block pair", "tool_use and tool_result block pairs"))
	if follow {
		answer, q := c.answerAndQuestion()
		msgs = append(msgs, Obj{{"role", "assistant"}, {"content", []any{typedText("text", answer)}}}, Obj{{"role", "user"}, {"content", q}})
		desc += followUpDesc
	}
	c.b.Messages = len(msgs)
	o = append(o, KV{"tools", defs}, KV{"messages", msgs})
	if c.chance(30) {
		o = append(o, KV{"tool_choice", Obj{{"type", "auto"}}})
	}
	c.b.Value = o
	c.b.Desc = desc
}
