package main

// A small catalogue of function tools, rendered in each API's format, and
// seeded argument generators for calls to them.

import (
	"fmt"
	"math/rand"
	"strings"
	"time"
)

type param struct {
	Name, Type, Desc string
	Enum             []string
	Items            string // element type of an array
}

type tool struct {
	Name, Desc string
	Params     []param
	Required   []string
	Args       func(r *rand.Rand) Obj
}

var toolCatalog = []tool{
	{
		Name: "search_documents", Desc: "Search the knowledge base and return the best matching passages.",
		Params: []param{
			{Name: "query", Type: "string", Desc: "Free-text search query."},
			{Name: "limit", Type: "integer", Desc: "Maximum number of passages to return."},
			{Name: "language", Type: "string", Desc: "ISO 639-1 code of the passages to search.", Enum: []string{"en", "fr", "de", "ru", "ja", "ko", "zh", "vi", "el"}},
		},
		Required: []string{"query"},
		Args: func(r *rand.Rand) Obj {
			return Obj{{"query", randWord(r) + " " + randWord(r) + " " + randWord(r)}, {"limit", 1 + r.Intn(10)}}
		},
	},
	{
		Name: "read_file", Desc: "Read a range of lines from a file in the repository.",
		Params: []param{
			{Name: "path", Type: "string", Desc: "Path relative to the repository root."},
			{Name: "start_line", Type: "integer", Desc: "First line to read, 1-based."},
			{Name: "end_line", Type: "integer", Desc: "Last line to read, inclusive."},
		},
		Required: []string{"path"},
		Args: func(r *rand.Rand) Obj {
			s := 1 + r.Intn(2000)
			return Obj{{"path", randFile(r)}, {"start_line", s}, {"end_line", s + 50 + r.Intn(900)}}
		},
	},
	{
		Name: "get_logs", Desc: "Fetch recent log lines of a service.",
		Params: []param{
			{Name: "service", Type: "string", Desc: "Service name."},
			{Name: "since", Type: "string", Desc: "RFC 3339 start time."},
			{Name: "level", Type: "string", Desc: "Minimum level.", Enum: []string{"debug", "info", "warn", "error"}},
		},
		Required: []string{"service", "since"},
		Args: func(r *rand.Rand) Obj {
			return Obj{{"service", services[r.Intn(len(services))]},
				{"since", baseTime.Add(-time.Duration(r.Intn(86400)) * time.Second).Format(time.RFC3339)},
				{"level", []string{"info", "warn", "error"}[r.Intn(3)]}}
		},
	},
	{
		Name: "run_sql", Desc: "Run a read-only SQL query against the analytics warehouse and return CSV.",
		Params: []param{
			{Name: "query", Type: "string", Desc: "A single SELECT statement."},
			{Name: "max_rows", Type: "integer", Desc: "Row limit."},
		},
		Required: []string{"query"},
		Args: func(r *rand.Rand) Obj {
			return Obj{{"query", fmt.Sprintf("SELECT * FROM %s_%s WHERE %s > %d ORDER BY id LIMIT %d",
				randWord(r), randWord(r), randWord(r), r.Intn(1000), 100+r.Intn(5000))}, {"max_rows", 10000}}
		},
	},
	{
		Name: "fetch_url", Desc: "Download a web page or API response and return its body as text.",
		Params: []param{
			{Name: "url", Type: "string", Desc: "Absolute http or https URL."},
			{Name: "headers", Type: "array", Desc: "Extra request headers as Name: value strings.", Items: "string"},
		},
		Required: []string{"url"},
		Args: func(r *rand.Rand) Obj {
			return Obj{{"url", "https://" + randWord(r) + ".example.com" + randPath(r)}}
		},
	},
	{
		Name: "get_blob", Desc: "Return the raw content of a stored object, base64 encoded when binary.",
		Params: []param{
			{Name: "id", Type: "string", Desc: "Object id."},
			{Name: "encoding", Type: "string", Desc: "Transfer encoding.", Enum: []string{"base64", "hex", "utf-8"}},
		},
		Required: []string{"id"},
		Args: func(r *rand.Rand) Obj {
			return Obj{{"id", randUUID(r)}, {"encoding", []string{"base64", "hex", "utf-8"}[r.Intn(3)]}}
		},
	},
	{
		Name: "lookup_records", Desc: "Look up records by their ids.",
		Params: []param{
			{Name: "ids", Type: "array", Desc: "Record ids.", Items: "string"},
			{Name: "fields", Type: "array", Desc: "Fields to return.", Items: "string"},
		},
		Required: []string{"ids"},
		Args: func(r *rand.Rand) Obj {
			var ids []any
			for range 1 + r.Intn(4) {
				ids = append(ids, randUUID(r))
			}
			return Obj{{"ids", ids}}
		},
	},
}

// preferredTool is the index of the tool whose result fits a kind.
func preferredTool(kind string) int {
	switch {
	case strings.HasPrefix(kind, "code_"):
		return 1
	case kind == "log_lines":
		return 2
	case kind == "digits_csv":
		return 3
	case kind == "json_in_string" || kind == "html_markdown":
		return 4
	case kind == "base64" || kind == "letter_runs":
		return 5
	case kind == "hex_uuid":
		return 6
	}
	return 0
}

// pickTools returns 1-4 tools including the preferred one, in catalogue order.
func pickTools(r *rand.Rand, kind string) []tool {
	pref := preferredTool(kind)
	want := 1 + r.Intn(4)
	chosen := make([]bool, len(toolCatalog))
	chosen[pref] = true
	for n := 1; n < want; {
		i := r.Intn(len(toolCatalog))
		if !chosen[i] {
			chosen[i] = true
			n++
		}
	}
	var out []tool
	for i, t := range toolCatalog {
		if chosen[i] {
			out = append(out, t)
		}
	}
	return out
}

func (t tool) schema(upper bool) Obj {
	typ := func(s string) string {
		if upper {
			return strings.ToUpper(s)
		}
		return s
	}
	props := Obj{}
	for _, p := range t.Params {
		o := Obj{{"type", typ(p.Type)}, {"description", p.Desc}}
		if p.Enum != nil {
			o = append(o, KV{"enum", p.Enum})
		}
		if p.Items != "" {
			o = append(o, KV{"items", Obj{{"type", typ(p.Items)}}})
		}
		props = append(props, KV{p.Name, o})
	}
	return Obj{{"type", typ("object")}, {"properties", props}, {"required", t.Required}}
}

func (t tool) openAIChat() Obj {
	return Obj{{"type", "function"}, {"function", Obj{{"name", t.Name}, {"description", t.Desc}, {"parameters", t.schema(false)}}}}
}

func (t tool) openAIResponses() Obj {
	return Obj{{"type", "function"}, {"name", t.Name}, {"description", t.Desc}, {"parameters", t.schema(false)}}
}

func (t tool) anthropic() Obj {
	return Obj{{"name", t.Name}, {"description", t.Desc}, {"input_schema", t.schema(false)}}
}

func (t tool) gemini() Obj {
	return Obj{{"name", t.Name}, {"description", t.Desc}, {"parameters", t.schema(true)}}
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func randID(r *rand.Rand, prefix string, n int) string {
	b := []byte(prefix)
	for range n {
		b = append(b, alnum[r.Intn(len(alnum))])
	}
	return string(b)
}
