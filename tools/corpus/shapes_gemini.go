package main

// Gemini request shapes: generateContent and streamGenerateContent.

import "fmt"

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

// geminiStart begins a Gemini body: the path and, with probability pct, a
// systemInstruction of smallShare(frac, limit) bytes. It returns the body so
// far, the budget left and the start of the description.
func (c *builder) geminiStart(pct, frac, limit int) (Obj, int, string) {
	c.b.Path, c.b.Format = c.geminiPath(), "gemini"
	o := Obj{}
	rest := c.budget
	desc := "generateContent: "
	if s, ok := c.sideText(pct, frac, limit, &rest); ok {
		o = append(o, KV{"systemInstruction", Obj{{"parts", geminiText(s)}}})
		desc += "systemInstruction + "
	}
	return o, rest, desc
}

func (c *builder) geminiConfig(o Obj) Obj {
	gc := Obj{}
	if c.chance(40) {
		gc = append(gc, KV{"temperature", 0.4})
	}
	gc = c.maxOutput(gc, "maxOutputTokens")
	gc = c.twoChoices(gc, "candidateCount", 10)
	if len(gc) > 0 {
		o = append(o, KV{"generationConfig", gc})
	}
	return o
}

// geminiText is the parts array of one text part.
func geminiText(s string) []any { return []any{Obj{{"text", s}}} }

// geminiContent is one entry of contents.
func geminiContent(role string, parts []any) Obj { return Obj{{"role", role}, {"parts", parts}} }

func geminiTextParts(c *builder, n int) []any {
	k := 1
	if n > 1000 && c.chance(40) {
		k = 2
	}
	return c.texts(n, k, func(s string) any { return Obj{{"text", s}} })
}

func shapeGeminiBasic(c *builder) {
	o, rest, desc := c.geminiStart(60, 6, 1500)
	o = append(o, KV{"contents", []any{geminiContent("user", geminiTextParts(c, rest))}})
	c.b.Messages = 1
	c.b.Value = c.geminiConfig(o)
	c.b.Desc = desc + "one user content"
}

func shapeGeminiMultiturn(c *builder) {
	o, rest, desc := c.geminiStart(50, 8, 1200)
	turns := 3 + 2*c.r.Intn(min(2, 1+c.budget/4000))
	var contents []any
	for i, sz := range c.split(rest, turns) {
		contents = append(contents, geminiContent(turnRole(i, "model"), geminiTextParts(c, sz)))
	}
	c.b.Messages = len(contents)
	o = append(o, KV{"contents", contents})
	c.b.Value = c.geminiConfig(o)
	c.b.Desc = desc + plural(turns, "content", "contents") + ", user and model turns"
}

func shapeGeminiTools(c *builder) {
	o, rest, desc := c.geminiStart(50, 10, 600)
	tools, decls := c.toolDefs(tool.gemini)
	contents := []any{geminiContent("user", geminiText(c.question(&rest)))}
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
	contents = append(contents, geminiContent("model", callParts))
	follow := c.followUp(&rest)
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
	contents = append(contents, geminiContent("user", respParts))
	desc += fmt.Sprintf("%s, %s", plural(len(tools), "function declaration", "function declarations"), plural(calls, "functionCall and functionResponse part pair", "functionCall and functionResponse part pairs"))
	if structured {
		desc += " (JSON result as an object)"
	}
	if follow {
		answer, q := c.answerAndQuestion()
		contents = append(contents, geminiContent("model", geminiText(answer)), geminiContent("user", geminiText(q)))
		desc += followUpDesc
	}
	c.b.Messages = len(contents)
	o = append(o, KV{"contents", contents}, KV{"tools", []any{Obj{{"functionDeclarations", decls}}}})
	c.b.Value = c.geminiConfig(o)
	c.b.Desc = desc
}
