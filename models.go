package llmratelimit

import (
	"path"
	"sort"
	"strings"
)

// The model blocks: how a request's model finds its block.

// provisionModels indexes the model blocks: exact names in a map, globs
// longest first.
func (h *Handler) provisionModels() {
	h.models = make(map[string]*Model)
	h.globs = nil
	for i := range h.Models {
		m := &h.Models[i]
		if m.TokenRatio == 0 {
			m.TokenRatio = 1
		}
		if strings.ContainsAny(m.Name, "*?[") {
			h.globs = append(h.globs, m)
		} else {
			h.models[m.Name] = m
		}
	}
	sort.SliceStable(h.globs, func(i, j int) bool { return len(h.globs[i].Name) > len(h.globs[j].Name) })
}

// modelFor returns the model block for a model name, or nil.
func (h *Handler) modelFor(name string) *Model {
	if name == "" {
		return nil
	}
	if m, ok := h.models[name]; ok {
		return m
	}
	for _, m := range h.globs {
		if ok, _ := path.Match(m.Name, name); ok {
			return m
		}
	}
	return nil
}
