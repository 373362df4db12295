package llmratelimit

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// This file is the config's validation: Validate, and one named check per
// kind of value, which the Caddyfile parser also calls so that its errors
// carry the file and line.

// Validate rejects impossible values, naming the field. Every range or
// value rule is one of the check functions below, which the Caddyfile
// parser applies too, so a JSON config and a Caddyfile get the same errors
// (the Caddyfile's also carry the file and line). Here a zero value means
// "unset, take the default" and is not checked.
func (h *Handler) Validate() error {
	if h.Format != "" {
		if err := checkFormat(h.Format); err != nil {
			return err
		}
	}
	if h.MaxBody != 0 {
		if err := checkMaxBody(h.MaxBody); err != nil {
			return err
		}
	}
	if err := h.Limits.validate(""); err != nil {
		return err
	}
	if err := h.Retry.validate(); err != nil {
		return err
	}
	if h.Upstream != nil {
		if h.Upstream.Name != "" {
			return fmt.Errorf("upstream: the unnamed block has no name (got %q); a named account goes in upstreams", h.Upstream.Name)
		}
		if err := h.Upstream.validate("upstream: "); err != nil {
			return err
		}
	}
	if err := h.validateAccounts(); err != nil {
		return err
	}
	if err := h.validateSpend(); err != nil {
		return err
	}
	if err := checkMaxWait(time.Duration(h.MaxWait)); err != nil {
		return err
	}
	if h.KeyInfo != "" {
		if err := checkKeyInfo(h.KeyInfo); err != nil {
			return err
		}
	}
	if h.Store != nil && h.Store.Redis != nil {
		rc := h.Store.Redis
		target := rc.Address
		if len(rc.Addresses) > 0 {
			target = rc.Addresses[0]
		}
		if err := checkRedisTarget(target, rc.URL); err != nil {
			return err
		}
		if err := checkRedisMode(rc); err != nil {
			return err
		}
		if rc.Fail != "" {
			if err := checkFailMode(rc.Fail); err != nil {
				return err
			}
		}
		if rc.Timeout != 0 {
			if err := checkPositiveDuration("store redis timeout", time.Duration(rc.Timeout)); err != nil {
				return err
			}
		}
	}
	if h.MaxKeys != 0 {
		if err := checkMaxKeys(h.MaxKeys); err != nil {
			return err
		}
	}
	if err := checkUsageRetention(h.UsageRetention); err != nil {
		return err
	}
	if h.MaxQueue != 0 {
		if err := checkPositive("max_queue", int64(h.MaxQueue)); err != nil {
			return err
		}
	}
	if h.DefaultMaxOutput != 0 {
		if err := checkPositive("default_max_output", h.DefaultMaxOutput); err != nil {
			return err
		}
	}
	tierNames := make([]string, 0, len(h.Tiers))
	for name := range h.Tiers {
		tierNames = append(tierNames, name)
	}
	sort.Strings(tierNames) // the same config, the same first error
	for _, name := range tierNames {
		if err := checkTierName(name); err != nil {
			return err
		}
		if l := h.Tiers[name].Lane; l != "" {
			if err := checkLane(l); err != nil {
				return fmt.Errorf("tier %s: %w", name, err)
			}
		}
		if err := h.Tiers[name].validate("tier " + name + ": "); err != nil {
			return err
		}
	}
	keys := make(map[keyHash]bool, len(h.APIKeys))
	for i, k := range h.APIKeys {
		kh, err := parseKeySpec(k.Key)
		if err != nil {
			return fmt.Errorf("api_keys[%d]: %v", i, err) // never the key itself
		}
		if keys[kh] {
			return fmt.Errorf("api_keys[%d]: the same key is given twice", i)
		}
		keys[kh] = true
		if _, ok := h.Tiers[k.Tier]; !ok {
			return fmt.Errorf("api_keys[%d]: unknown tier %q", i, k.Tier)
		}
	}
	seen := make(map[string]bool, len(h.Models))
	for _, m := range h.Models {
		if err := checkModelName(m.Name); err != nil {
			return err
		}
		where := "model " + m.Name + ": "
		if seen[m.Name] {
			return fmt.Errorf("%sdefined twice", where)
		}
		seen[m.Name] = true
		if m.Concurrent != 0 {
			return fmt.Errorf("%sconcurrent is not supported per model", where)
		}
		if err := m.Limits.validate(where); err != nil {
			return err
		}
		for _, f := range []struct {
			name string
			v    int64
		}{{"context_window", m.ContextWindow}, {"max_output", m.MaxOutput}, {"image_tokens", m.ImageTokens}} {
			if f.v != 0 {
				if err := checkPositive(where+f.name, f.v); err != nil {
					return err
				}
			}
		}
		if m.TokenRatio != 0 {
			if err := checkTokenRatio(m.TokenRatio); err != nil {
				return fmt.Errorf("%s%w", where, err)
			}
		}
	}
	return nil
}

// The value checks. Each rule is defined here once; Validate and
// RetryConfig.validate apply it to a set value, and the Caddyfile parser
// applies it to each value it reads, adding only the file and line. A
// check judges a value that is set: JSON leaves a field zero for its
// default, the Caddyfile leaves the line out, so a check rejects the zero
// of a field whose zero means "unset".
//
// Every message starts with the field's name (a caller adds the block, as
// in "tier pro: ") and shows the value it rejects.

// checkPositive: a limit or count is a positive integer.
func checkPositive(field string, n int64) error {
	if n <= 0 {
		return fmt.Errorf("%s: must be a positive integer, got %d", field, n)
	}
	return nil
}

// checkPositiveDuration: a timeout or backoff is a positive duration.
func checkPositiveDuration(field string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s: must be a positive duration, got %v", field, d)
	}
	return nil
}

// checkFormat: "auto" or the name of a registered dialect.
func checkFormat(name string) error {
	if name == "auto" || dialectNamed(name) != nil {
		return nil
	}
	return fmt.Errorf("format: must be auto or one of %s, got %q", strings.Join(dialectNames(), ", "), name)
}

// checkMaxBody: the body bound is a positive number of bytes.
func checkMaxBody(n int64) error {
	if n <= 0 {
		return fmt.Errorf("max_body: must be a positive size, got %d", n)
	}
	return nil
}

// checkMaxWait: 0 (reject at once) or a positive duration.
func checkMaxWait(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("max_wait: must not be negative, got %v", d)
	}
	return nil
}

// checkMaxKeys: a positive bound, or -1 for none.
func checkMaxKeys(n int) error {
	if n <= 0 && n != -1 {
		return fmt.Errorf("max_keys: must be positive, or -1 for no bound, got %d", n)
	}
	return nil
}

// checkTierName: a tier has a name.
func checkTierName(name string) error {
	if name == "" {
		return fmt.Errorf("tier: a tier needs a name")
	}
	return nil
}

// checkModelName: a model has a name, and a valid path.Match pattern.
func checkModelName(name string) error {
	if name == "" {
		return fmt.Errorf("model: a model needs a name")
	}
	if _, err := path.Match(name, ""); err != nil {
		return fmt.Errorf("model %s: bad glob pattern: %v", name, err)
	}
	return nil
}

// checkTokenRatio: a positive factor up to 100 (NaN and infinities fail).
func checkTokenRatio(v float64) error {
	if !(v > 0 && v <= 100) {
		return fmt.Errorf("token_ratio: must be a positive number up to 100, got %v", v)
	}
	return nil
}

// checkFailMode: what a Redis outage does, "open" or "closed".
func checkFailMode(s string) error {
	if s != "open" && s != "closed" {
		return fmt.Errorf("store redis fail: must be open or closed, got %q", s)
	}
	return nil
}

// checkRedisTarget: the shared store needs an address or a URL.
func checkRedisTarget(address, url string) error {
	if address == "" && url == "" {
		return fmt.Errorf("store redis: address or url is required")
	}
	return nil
}

// checkRedisMode: cluster and sentinel exclude each other, and a
// Sentinel's addresses cannot come from a url.
func checkRedisMode(rc *RedisConfig) error {
	switch {
	case rc.Cluster && rc.Sentinel != "":
		return fmt.Errorf("store redis: cluster and sentinel exclude each other")
	case rc.Sentinel != "" && len(rc.addrs()) == 0:
		return fmt.Errorf("store redis: sentinel needs the Sentinels' addresses")
	case rc.URL != "" && len(rc.addrs()) > 0:
		return fmt.Errorf("store redis: url or address, not both")
	}
	return nil
}

// checkRetryAttempts: 0..100 retries after the first try.
func checkRetryAttempts(n int) error {
	if n < 0 || n > 100 {
		return fmt.Errorf("retry attempts: must be 0..100, got %d", n)
	}
	return nil
}

// checkJitter: the retry wait's spread, within 0..1.
func checkJitter(v float64) error {
	if !(v >= 0 && v <= 1) {
		return fmt.Errorf("retry jitter: must be within 0..1, got %v", v)
	}
	return nil
}

// checkRetryStatus: only an error status (400..599) can be retried.
func checkRetryStatus(code int) error {
	if code < 400 || code > 599 {
		return fmt.Errorf("retry statuses: %d is not an error status (400..599)", code)
	}
	return nil
}

// validateAccounts checks the pool: named, distinct accounts, not mixed
// with the unnamed block, with valid limits, headers and model globs.
func (h *Handler) validateAccounts() error {
	if len(h.Upstreams) == 0 {
		return nil
	}
	if h.Upstream != nil {
		return fmt.Errorf("upstream: the unnamed block cannot be mixed with named upstream blocks (a pool): name every account")
	}
	seen := make(map[string]bool, len(h.Upstreams))
	for _, a := range h.Upstreams {
		if err := checkAccountName(a.Name); err != nil {
			return err
		}
		if seen[a.Name] {
			return fmt.Errorf("upstream %s: defined twice", a.Name)
		}
		seen[a.Name] = true
		if err := a.validate("upstream " + a.Name + ": "); err != nil {
			return err
		}
	}
	return nil
}

// validate checks an account's limits, headers and model globs; where
// prefixes the error.
func (a *Account) validate(where string) error {
	if err := a.Limits.validate(where); err != nil {
		return err
	}
	for field := range a.HeaderUp {
		if field == "" {
			return fmt.Errorf("%sheader_up: a header needs a field name", where)
		}
	}
	for _, m := range a.Models {
		if err := checkModelName(m); err != nil {
			return fmt.Errorf("%smodels: %w", where, err)
		}
	}
	return nil
}

// checkAccountName: an account has a name, and not the unnamed block's.
func checkAccountName(name string) error {
	if name == "" {
		return fmt.Errorf("upstream: a named account needs a name")
	}
	if name == defaultAccount {
		return fmt.Errorf("upstream %s: the name %q is the unnamed block's; choose another", name, defaultAccount)
	}
	return nil
}

// checkLane: a tier's queue lane is interactive or batch.
func checkLane(s string) error {
	switch s {
	case "interactive", "batch":
		return nil
	}
	return fmt.Errorf("lane: must be interactive or batch, got %q", s)
}
