package main

// Request shapes: one builder per request format the estimator reads. Each
// builder spends a text budget drawn from the kind's provider and records
// the text pieces the model reads, so they can be checked against an
// independent extraction from the written body. The builders themselves are
// in shapes_openai.go, shapes_anthropic.go and shapes_gemini.go; this file
// holds what they share and the registry.
//
// Every helper here draws from the body's math/rand in a fixed order, so a
// change to the order of calls changes the corpus.

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

// texts draws total bytes of text as k recorded pieces, each wrapped by
// wrap, or left a bare string when wrap is nil.
func (c *builder) texts(total, k int, wrap func(string) any) []any {
	var out []any
	for _, sz := range c.split(total, k) {
		s := c.text(sz)
		if wrap == nil {
			out = append(out, s)
		} else {
			out = append(out, wrap(s))
		}
	}
	return out
}

func (c *builder) pick(xs ...string) string { return xs[c.r.Intn(len(xs))] }

func (c *builder) chance(pct int) bool { return c.r.Intn(100) < pct }

var maxChoices = []int{128, 256, 300, 512, 800, 1000, 1024, 1500, 2048, 4000, 4096, 8192, 16384}

func (c *builder) maxTokens() int { return maxChoices[c.r.Intn(len(maxChoices))] }

// maxOutput adds, with probability 85 %, a max-output limit under key.
func (c *builder) maxOutput(o Obj, key string) Obj {
	if c.chance(85) {
		c.b.MaxOutput = c.maxTokens()
		o = append(o, KV{key, c.b.MaxOutput})
	}
	return o
}

// twoChoices asks, with probability pct, for two choices (n = 2) under key.
func (c *builder) twoChoices(o Obj, key string, pct int) Obj {
	if c.chance(pct) {
		c.b.N = 2
		o = append(o, KV{key, 2})
	}
	return o
}

// smallShare is the size of a short side text (system prompt, question).
func (c *builder) smallShare(frac int, limit int) int {
	return min(max(c.budget/frac, 40), limit)
}

// sideText draws, with probability pct, a short side text (a system prompt,
// instructions) of smallShare(frac, limit) bytes and takes its length off
// *rest.
func (c *builder) sideText(pct, frac, limit int, rest *int) (string, bool) {
	if !c.chance(pct) {
		return "", false
	}
	s := c.text(c.smallShare(frac, limit))
	*rest -= len(s)
	return s, true
}

// turns is the number of entries of a user/assistant conversation: 1, 3 or 5.
func (c *builder) turns() int { return 1 + 2*c.r.Intn(min(3, 1+c.budget/2500)) }

// turnRole is the role of entry i of a conversation: "user", then reply.
func turnRole(i int, reply string) string {
	if i%2 == 1 {
		return reply
	}
	return "user"
}

// typedText is a {"type": typ, "text": s} part or block.
func typedText(typ, s string) Obj { return Obj{{"type", typ}, {"text", s}} }

// textParts draws n bytes as one to three typedText parts.
func textParts(c *builder, typ string, n int) []any {
	k := 1
	if n > 800 {
		k = 1 + c.r.Intn(3)
	}
	return c.texts(n, k, func(s string) any { return typedText(typ, s) })
}

// ---- tool use ---------------------------------------------------------------

// toolDefs picks the tools of a tool-use body and renders their definitions
// with def; the model reads the definitions as their compact JSON.
func (c *builder) toolDefs(def func(tool) Obj) ([]tool, []any) {
	tools := pickTools(c.r, c.kind)
	var defs []any
	for _, t := range tools {
		defs = append(defs, def(t))
	}
	c.rec(Compact(defs))
	return tools, defs
}

// question draws the user's question of a tool-use body and takes its length
// off *rest.
func (c *builder) question(rest *int) string {
	q := c.text(c.smallShare(8, 700))
	*rest -= len(q)
	return q
}

// call picks one of tools and a fresh call id (prefix and idLen random
// characters) and draws the call's arguments, recorded as compact JSON.
func (c *builder) call(tools []tool, prefix string, idLen int) (tool, string, Obj) {
	t := tools[c.r.Intn(len(tools))]
	id := randID(c.r, prefix, idLen)
	args := t.Args(c.r)
	c.rec(Compact(args))
	return t, id, args
}

// toolResult returns the text a tool gives back.
func (c *builder) toolResult(n int) string { return c.take(n) }

// toolResultContent draws a recorded tool result of about n bytes: a string,
// or with probability pct an array of one text block.
func (c *builder) toolResultContent(n, pct int) any {
	res := c.rec(c.toolResult(n))
	if c.chance(pct) {
		return []any{typedText("text", res)}
	}
	return res
}

// followUp decides (40 %) whether a tool-use body ends with an answer and a
// follow-up question; if so it keeps a fifth of *rest back for them.
func (c *builder) followUp(rest *int) bool {
	if !c.chance(40) {
		return false
	}
	*rest = *rest * 4 / 5
	return true
}

// followUpDesc ends the description of a body with a follow-up.
const followUpDesc = ", then an answer and a follow-up"

// answerAndQuestion draws the answer to the tool results and the user's
// follow-up question.
func (c *builder) answerAndQuestion() (answer, question string) {
	answer = c.text(c.budget / 10)
	return answer, c.text(c.budget / 10)
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
