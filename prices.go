package llmratelimit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// prices_file: the pricing table LiteLLM maintains and many tools share
// (model_prices_and_context_window.json; SPEC "Prices as published"). The
// real file holds thousands of models with dozens of fields each and
// changes every day; only the per-token prices, their long-context tiers
// and the two token limits are kept. One row the reader cannot use is
// skipped and reported, never the whole file: only a file that cannot be
// read or is not a JSON object fails. The file is read in one pass by the
// plugin's own JSON scanner (internal/jsonscan), which validates it as it goes
// and hands each price's text over without building a tree: LiteLLM's
// 2,984 entries load in about 5 ms.

// filePrice is what the plugin keeps of one model of a prices file.
type filePrice struct {
	// name is the file's own key for the model.
	name string
	// p is the price below every tier, in nano-dollars per token.
	p price
	// hasIn and hasOut tell that the input and the output prices are
	// set: a null or absent price is not priced, never $0.
	hasIn, hasOut bool
	// hasCacheRead and hasCacheWrite tell the cache prices that the file
	// sets (else they are the input price).
	hasCacheRead, hasCacheWrite bool
	// tiers are the long-context prices (*_above_200k_tokens and the
	// like), by threshold, lowest first.
	tiers []priceTier
	// maxInput becomes the model's context_window, maxOutput its
	// max_output, where no block sets one (0: none).
	maxInput, maxOutput int64
}

// priceTier is what the whole of a request costs when its input is above
// a number of tokens, as providers bill long contexts.
type priceTier struct {
	above int64
	p     price
}

// priceAt is the price of a request that reads in input tokens: the price
// of the highest tier it is above, else base.
func priceAt(base price, tiers []priceTier, in float64) price {
	for i := len(tiers) - 1; i >= 0; i-- {
		if in > float64(tiers[i].above) {
			return tiers[i].p
		}
	}
	return base
}

// maxFilePrice is the dearest price per token a prices file is believed
// to give, in USD: $10,000 per million tokens, 16 times the dearest real
// price (o1-pro's output, $600 per million). A larger figure is a mistake
// of the file, such as LiteLLM's wandb/… rows at $135,000 per million
// tokens (prices per million written as prices per token).
const maxFilePrice = 0.01

// The four prices of a row, and the suffix of their long-context tiers:
// input_cost_per_token_above_200k_tokens is the input price of a request
// whose input is above 200,000 tokens.
const (
	fieldIn    = "input_cost_per_token"
	fieldOut   = "output_cost_per_token"
	fieldRead  = "cache_read_input_token_cost"
	fieldWrite = "cache_creation_input_token_cost"
)

var priceFields = [...]string{fieldIn, fieldOut, fieldRead, fieldWrite}

// Indexes into priceFields and a row's prices.
const (
	priceIn = iota
	priceOut
	priceRead
	priceWrite
)

// rowPrices are one row's prices at one level (the base, or one tier), in
// USD per token; nil where the row gives none.
type rowPrices [len(priceFields)]*float64

// skippedRow is a row of a prices file that the reader cannot use, and
// why: each field it cannot use ("input_cost_per_token is a string").
type skippedRow struct {
	model string
	why   []string
}

func (r skippedRow) String() string { return r.model + ": " + strings.Join(r.why, "; ") }

// loadPricesFile reads a LiteLLM prices file into a table. skipped are the
// rows left out because the reader cannot use them, by model name. Rows
// that are not priced per token (images, seconds, characters, a null
// price) are left out quietly, and so is "sample_spec", the file's
// documentation of its own fields. Only a file that cannot be read or is
// not a JSON object is an error.
func loadPricesFile(path string) (t *priceTable, skipped []skippedRow, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err // *PathError names the file
	}
	return parsePricesFile(path, raw)
}

// parsePricesFile is loadPricesFile of a file's content.
func parsePricesFile(path string, raw []byte) (t *priceTable, skipped []skippedRow, err error) {
	sc := jsonscan.New(raw)
	s := &sc
	if s.Peek() != jsonscan.Object {
		return nil, nil, fmt.Errorf("%s is not a JSON object of model name → prices (%s)", path, startsWith(raw[s.Pos():]))
	}
	entries := make(map[string]*filePrice, len(raw)/600+16) // LiteLLM's rows: about 550 bytes each
	err = s.Members(func(key []byte) error {
		name, err := memberName(key)
		if err != nil {
			return err
		}
		if name == "sample_spec" {
			return s.Skip(nil)
		}
		fp, why, err := scanPriceRow(s)
		switch {
		case err != nil:
			return err
		case len(why) > 0:
			skipped = append(skipped, skippedRow{model: name, why: why})
		case fp != nil:
			fp.name = name
			entries[name] = fp
		}
		return nil
	})
	if err == nil {
		if s.Peek() != jsonscan.End {
			err = s.SyntaxError()
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", path, err) // "invalid JSON: … at offset n"
	}
	sort.Slice(skipped, func(i, j int) bool { return skipped[i].model < skipped[j].model })
	return newPriceTable(path, entries), skipped, nil
}

// startsWith says what a document that is not an object is.
func startsWith(doc []byte) string {
	if len(doc) == 0 {
		return "it is empty"
	}
	switch doc[0] {
	case '[':
		return "it is an array"
	case '"':
		return "it is a string"
	}
	return fmt.Sprintf("it starts with %q", doc[0])
}

// memberName is a raw key as a string, its escapes decoded.
func memberName(key []byte) (string, error) {
	if bytes.IndexByte(key, '\\') < 0 {
		return string(key[1 : len(key)-1]), nil
	}
	var name string
	err := json.Unmarshal(key, &name)
	return name, err
}

// scanPriceRow reads the row at s.pos. fp is nil for a row that is not
// priced per token; why lists each field the reader cannot use (the row
// is then skipped whole: a model priced without its tier would be
// undercharged); err is the file's syntax error.
func scanPriceRow(s *jsonscan.Scanner) (fp *filePrice, why []string, err error) {
	if s.Peek() != jsonscan.Object {
		return nil, []string{"is not an object"}, s.Skip(nil)
	}
	var base rowPrices
	var tiers map[int64]*rowPrices
	var maxIn, maxOut []byte
	err = s.Members(func(key []byte) error {
		k := key[1 : len(key)-1]
		f, above, isPrice := priceField(k)
		if !isPrice {
			switch string(k) {
			case "max_input_tokens":
				maxIn, err = s.Value()
				return err
			case "max_output_tokens":
				maxOut, err = s.Value()
				return err
			}
			return s.Skip(nil)
		}
		v, err := s.Value()
		if err != nil {
			return err
		}
		usd, bad := filePriceValue(v)
		switch {
		case bad != nil:
			why = append(why, string(k)+" "+bad.Error())
			return nil
		case usd == nil:
			return nil // null: not priced
		}
		level := &base
		if above > 0 {
			if tiers == nil {
				tiers = map[int64]*rowPrices{}
			}
			if level = tiers[above]; level == nil {
				level = new(rowPrices)
				tiers[above] = level
			}
		}
		level[f] = usd
		return nil
	})
	if err != nil || len(why) > 0 {
		sort.Strings(why)
		return nil, why, err
	}
	if base[priceIn] == nil && base[priceOut] == nil {
		return nil, nil, nil // priced per image, second or character, or not at all
	}
	fp = &filePrice{hasIn: base[priceIn] != nil, hasOut: base[priceOut] != nil,
		hasCacheRead: base[priceRead] != nil, hasCacheWrite: base[priceWrite] != nil}
	fp.p = base.over(price{})
	if !fp.hasCacheRead {
		fp.p.cached = fp.p.in
	}
	if !fp.hasCacheWrite {
		fp.p.write = fp.p.in
	}
	thresholds := make([]int64, 0, len(tiers))
	for above := range tiers {
		thresholds = append(thresholds, above)
	}
	sort.Slice(thresholds, func(i, j int) bool { return thresholds[i] < thresholds[j] })
	// Each tier starts from the prices below it; a cache price that
	// follows the input price (none set) follows it into the tier too.
	below, readFollows, writeFollows := fp.p, !fp.hasCacheRead, !fp.hasCacheWrite
	for _, above := range thresholds {
		r := tiers[above]
		tp := r.over(below)
		if readFollows = readFollows && r[priceRead] == nil; readFollows {
			tp.cached = tp.in
		}
		if writeFollows = writeFollows && r[priceWrite] == nil; writeFollows {
			tp.write = tp.in
		}
		fp.tiers = append(fp.tiers, priceTier{above: above, p: tp})
		below = tp
	}
	fp.maxInput, fp.maxOutput = jsonCount(maxIn), jsonCount(maxOut)
	return fp, nil, nil
}

// over is the price with the prices of r where it gives them, and those
// of below elsewhere.
func (r *rowPrices) over(below price) price {
	p := below
	for f, dst := range [...]*float64{&p.in, &p.out, &p.cached, &p.write} {
		if r[f] != nil {
			*dst = nanoPerToken(*r[f])
		}
	}
	return p
}

// nanoPerToken turns USD per token into nano-dollars per token, rounded to
// a millionth of a nano-dollar so that 2e-06 is exactly 2000 (binary
// floating point makes it 1999.9999999999998).
func nanoPerToken(usd float64) float64 { return math.Round(usd*1e15) / 1e6 }

// priceField tells a price field of a row: f indexes priceFields, above is
// the tier's threshold in tokens (0 for the base price). Every other field
// (per image, per second, per character, batches, priority, the hour-long
// cache, the tier of a priority price) is not one.
func priceField(key []byte) (f int, above int64, ok bool) {
	for i, name := range priceFields {
		if !bytes.HasPrefix(key, []byte(name)) {
			continue
		}
		rest := key[len(name):]
		if len(rest) == 0 {
			return i, 0, true
		}
		// _above_<n>k_tokens
		n, ok := bytes.CutPrefix(rest, []byte("_above_"))
		if !ok {
			return 0, 0, false
		}
		n, ok = bytes.CutSuffix(n, []byte("k_tokens"))
		if !ok || len(n) == 0 || len(n) > 6 {
			return 0, 0, false
		}
		k, err := strconv.ParseUint(string(n), 10, 32)
		if err != nil || k == 0 {
			return 0, 0, false
		}
		return i, int64(k) * 1000, true
	}
	return 0, 0, false
}

// filePriceValue reads one price in USD per token: nil for null; an error
// that says why for anything the reader cannot use.
func filePriceValue(v []byte) (*float64, error) {
	if len(v) == 0 {
		return nil, errors.New("is empty")
	}
	switch v[0] {
	case 'n':
		return nil, nil
	case '"':
		return nil, fmt.Errorf("is a string (%s), not a number", clip(v))
	case '{', '[':
		return nil, errors.New("is not a number")
	case 't', 'f':
		return nil, errors.New("is a boolean, not a number")
	}
	usd, err := strconv.ParseFloat(string(v), 64)
	switch {
	case err != nil:
		return nil, fmt.Errorf("is out of range (%s)", clip(v))
	case usd < 0:
		return nil, fmt.Errorf("is negative (%s)", clip(v))
	case usd > maxFilePrice:
		return nil, fmt.Errorf("is out of range (%s USD per token, above $10,000 per million tokens)", clip(v))
	}
	return &usd, nil
}

// clip is a value as a log shows it: at most 40 bytes.
func clip(v []byte) string {
	if len(v) > 40 {
		return string(v[:40]) + "…"
	}
	return string(v)
}

// jsonCount reads a token limit of the file: a number, or anything else
// (null, a string, absent) as none.
func jsonCount(raw []byte) int64 {
	v, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || v < 1 || v > 1e12 {
		return 0
	}
	return int64(v)
}
