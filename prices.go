package llmratelimit

import (
	"encoding/json"
	"fmt"
	"os"
)

// prices_file: the pricing table LiteLLM maintains and many tools share
// (model_prices_and_context_window.json). The real file holds thousands of
// models with dozens of fields each; only the prices and the two token
// limits are kept.

// filePrice is what the plugin keeps of one model of a prices file.
type filePrice struct {
	p             price
	maxInput      int64 // becomes the model's context_window where no block sets one
	maxOutput     int64 // becomes the model's max_output where no block sets one
	hasCacheRead  bool
	hasCacheWrite bool
}

// liteLLMEntry is the part of an entry the plugin reads; every other field
// is skipped by the decoder.
type liteLLMEntry struct {
	InputCostPerToken           *float64        `json:"input_cost_per_token"`
	OutputCostPerToken          *float64        `json:"output_cost_per_token"`
	CacheReadInputTokenCost     *float64        `json:"cache_read_input_token_cost"`
	CacheCreationInputTokenCost *float64        `json:"cache_creation_input_token_cost"`
	MaxInputTokens              json.RawMessage `json:"max_input_tokens"`
	MaxOutputTokens             json.RawMessage `json:"max_output_tokens"`
}

// loadPricesFile reads a LiteLLM prices file: an object of model name →
// entry. Entries without an input or output price per token are left out
// (the file also lists image and audio models), and so is "sample_spec",
// the file's documentation of its own fields.
func loadPricesFile(path string) (map[string]filePrice, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var entries map[string]liteLLMEntry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	out := make(map[string]filePrice, len(entries))
	for name, e := range entries {
		if name == "sample_spec" || e.InputCostPerToken == nil && e.OutputCostPerToken == nil {
			continue // the file's documentation entry; models not priced per token
		}
		var fp filePrice
		perToken := func(v *float64) (float64, error) {
			if v == nil {
				return 0, nil
			}
			if err := checkPrice(*v); err != nil {
				return 0, fmt.Errorf("%s: model %q: %v", path, name, err)
			}
			return *v * 1e9, nil // USD per token → nano-dollars per token
		}
		if fp.p.in, err = perToken(e.InputCostPerToken); err != nil {
			return nil, err
		}
		if fp.p.out, err = perToken(e.OutputCostPerToken); err != nil {
			return nil, err
		}
		fp.p.cached, fp.p.write = fp.p.in, fp.p.in
		if e.CacheReadInputTokenCost != nil {
			if fp.p.cached, err = perToken(e.CacheReadInputTokenCost); err != nil {
				return nil, err
			}
			fp.hasCacheRead = true
		}
		if e.CacheCreationInputTokenCost != nil {
			if fp.p.write, err = perToken(e.CacheCreationInputTokenCost); err != nil {
				return nil, err
			}
			fp.hasCacheWrite = true
		}
		fp.maxInput, fp.maxOutput = jsonCount(e.MaxInputTokens), jsonCount(e.MaxOutputTokens)
		out[name] = fp
	}
	return out, nil
}

// jsonCount reads a token limit of the file: an integer, or anything else
// (null, a string, absent) as none.
func jsonCount(raw json.RawMessage) int64 {
	var v float64
	if json.Unmarshal(raw, &v) != nil || v < 1 || v > 1e12 {
		return 0
	}
	return int64(v)
}
