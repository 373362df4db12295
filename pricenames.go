package llmratelimit

import (
	"hash/maphash"
	"sort"
	"strings"
	"sync/atomic"
)

// The names clients send for a model are rarely the file's keys: a
// provider prefix (<provider>/<model>, models/<model>), another case
// (MODEL-4.1), dots for dashes in a version (model-4.5 for model-4-5), a
// date (model-4-5-20250929), or no prefix where LiteLLM keys the model
// under its provider's (<provider>/<model>). A priceTable finds a
// request's model by the first of these that matches (SPEC "Prices as
// published"):
//
//  1. the exact name;
//  2. the name without case (ASCII), then also with a '.' between two
//     digits read as '-': 4.5 and 4-5 are the same version (every key of
//     the file is indexed by both forms at load);
//  3. the name without a provider prefix (everything up to the last '/'),
//     exact, then as in step 2;
//  4. that name with the request's provider prefix added: the dialect's
//     own provider (dialectSpec.pricesProvider), then the provider the
//     name starts with (deepseek-chat → deepseek/deepseek-chat, for the
//     many providers that speak another provider's format);
//  5. steps 1 to 4 again for the name without a trailing date or -latest
//     (-20250929, -2024-08-06, @20240620).
//
// The indexes are built once at load. A lookup reads the exact index,
// then a small cache of resolved names (direct-mapped: a name always goes
// to the same slot, so that any number of distinct names holds it to its
// size); only a name that is not there is resolved, without allocating.

// priceTable is a prices file ready for lookups. Its entries never change
// once built (only its cache of resolved names fills): a new file makes a
// new table, which can replace the old one whole.
type priceTable struct {
	path  string
	exact map[string]*filePrice // by the file's key
	lower map[string]*filePrice // by the key in lowercase
	loose map[string]*filePrice // by the key in lowercase, with dots in versions as dashes
	seed  maphash.Seed
	cache [resolvedSlots]atomic.Pointer[resolvedName]
}

// resolvedSlots is the size of a table's cache of resolved names.
const resolvedSlots = 1024

// resolvedName is a name resolved: the entry it found, or nil.
type resolvedName struct {
	name, provider string
	fp             *filePrice
}

// maxResolvedName is the longest name resolved past its exact form; no
// model name is longer.
const maxResolvedName = 200

func newPriceTable(path string, entries map[string]*filePrice) *priceTable {
	t := &priceTable{path: path, exact: entries, seed: maphash.MakeSeed(),
		lower: make(map[string]*filePrice, len(entries)), loose: make(map[string]*filePrice, len(entries))}
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var buf [maxResolvedName]byte
	for _, k := range keys {
		l, ok := appendLower(buf[:0], "", k)
		if !ok {
			continue
		}
		index(t.lower, string(l), entries[k])
		foldDots(l)
		index(t.loose, string(l), entries[k])
	}
	return t
}

// index puts fp under key, unless an entry is there already: of two keys
// of one form, the key already in that form wins, else the first in
// order.
func index(m map[string]*filePrice, key string, fp *filePrice) {
	if prev, dup := m[key]; dup && (prev.name == key || fp.name != key) {
		return
	}
	m[key] = fp
}

// lookup finds the entry of a request's model (the body's or the path's
// name) sent in the format of provider (a dialect's pricesProvider; ""
// for none).
func (t *priceTable) lookup(model, provider string) (*filePrice, bool) {
	if t == nil {
		return nil, false
	}
	if fp, ok := t.exact[model]; ok {
		return fp, true
	}
	if model == "" || len(model) > maxResolvedName {
		return nil, false
	}
	slot := &t.cache[(maphash.String(t.seed, model)+maphash.String(t.seed, provider))%resolvedSlots]
	if r := slot.Load(); r != nil && r.name == model && r.provider == provider {
		return r.fp, r.fp != nil
	}
	fp := t.resolve(model, provider)
	slot.Store(&resolvedName{name: strings.Clone(model), provider: provider, fp: fp})
	return fp, fp != nil
}

// resolve applies steps 1 to 5 to a name that is not a key.
func (t *priceTable) resolve(model, provider string) *filePrice {
	if fp := t.find(model, provider); fp != nil {
		return fp
	}
	if u := undated(model); u != model {
		if fp := t.exact[u]; fp != nil {
			return fp
		}
		return t.find(u, provider)
	}
	return nil
}

// find is steps 2 to 4 for name.
func (t *priceTable) find(name, provider string) *filePrice {
	var buf [maxResolvedName + 64]byte
	if fp := t.looseLookup(buf[:0], "", name); fp != nil {
		return fp
	}
	bare := name[strings.LastIndexByte(name, '/')+1:]
	if bare != name {
		if fp := t.exact[bare]; fp != nil {
			return fp
		}
		if fp := t.looseLookup(buf[:0], "", bare); fp != nil {
			return fp
		}
	}
	if provider != "" {
		if fp := t.looseLookup(buf[:0], provider, bare); fp != nil {
			return fp
		}
	}
	if family := nameFamily(bare); family != "" && !strings.EqualFold(family, provider) {
		return t.looseLookup(buf[:0], family, bare)
	}
	return nil
}

// looseLookup finds prefix/name (name alone for no prefix) without case,
// then with dots in versions as dashes, built in buf.
func (t *priceTable) looseLookup(buf []byte, prefix, name string) *filePrice {
	l, ok := appendLower(buf, prefix, name)
	if !ok {
		return nil
	}
	if fp := t.lower[string(l)]; fp != nil { // no allocation: the compiler reads the bytes in place
		return fp
	}
	if foldDots(l) {
		return t.loose[string(l)]
	}
	return nil
}

// appendLower appends prefix/name (name alone for no prefix) to dst in
// ASCII lowercase. ok is false when it would not fit in dst's capacity.
func appendLower(dst []byte, prefix, name string) (out []byte, ok bool) {
	n := len(name)
	if prefix != "" {
		n += len(prefix) + 1
	}
	if len(dst)+n > cap(dst) {
		return dst, false
	}
	if prefix != "" {
		dst = appendLowerASCII(dst, prefix)
		dst = append(dst, '/')
	}
	return appendLowerASCII(dst, name), true
}

func appendLowerASCII(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// foldDots turns each '.' between two digits of b into '-' (claude-4.5 →
// claude-4-5), and tells whether there was one.
func foldDots(b []byte) (changed bool) {
	for i := 1; i < len(b)-1; i++ {
		if b[i] == '.' && isDigit(b[i-1]) && isDigit(b[i+1]) {
			b[i] = '-'
			changed = true
		}
	}
	return changed
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// nameFamily is the run of letters a model's name starts with, which for
// most providers that serve their own models is the provider's name
// (deepseek-chat, mistral-large-latest); "" when it is
// shorter than 3 letters.
func nameFamily(name string) string {
	i := 0
	for i < len(name) && ('a' <= name[i] && name[i] <= 'z' || 'A' <= name[i] && name[i] <= 'Z') {
		i++
	}
	if i < 3 {
		return ""
	}
	return name[:i]
}

// undated is name without a trailing date or "latest" tag: -20250929,
// @20250929, -2024-08-06, -latest, @latest. Anything else is name itself.
func undated(name string) string {
	n := len(name)
	for _, tag := range [...]string{"-latest", "@latest"} {
		if n > len(tag) && strings.EqualFold(name[n-len(tag):], tag) {
			return name[:n-len(tag)]
		}
	}
	if n > 9 && (name[n-9] == '-' || name[n-9] == '@') && isDate(name[n-8:n-4], name[n-4:n-2], name[n-2:]) {
		return name[:n-9]
	}
	if n > 11 && name[n-11] == '-' && name[n-6] == '-' && name[n-3] == '-' && isDate(name[n-10:n-6], name[n-5:n-3], name[n-2:]) {
		return name[:n-11]
	}
	return name
}

// isDate tells digits that read as a date of this century.
func isDate(year, month, day string) bool {
	for _, part := range [...]string{year, month, day} {
		for i := 0; i < len(part); i++ {
			if !isDigit(part[i]) {
				return false
			}
		}
	}
	m := int(month[0]-'0')*10 + int(month[1]-'0')
	d := int(day[0]-'0')*10 + int(day[1]-'0')
	return year[:2] == "20" && m >= 1 && m <= 12 && d >= 1 && d <= 31
}
