package llmratelimit

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The Caddyfile's usage subdirective (SPEC "Usage for billing (admin
// API)"):
//
//	usage_retention <days> | off    # default 400

// parseUsageRetention reads usage_retention's argument: a number of days,
// or off (-1 in JSON); the cursor is on the subdirective.
func parseUsageRetention(d *caddyfile.Dispenser, what string) (int, error) {
	v, err := oneArg(d, what)
	if err != nil {
		return 0, err
	}
	if v == "off" {
		return -1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n == 0 {
		return 0, d.Errf("%s: want a number of days or off, got %q", what, v)
	}
	if err := checkUsageRetention(n); err != nil {
		return 0, d.Errf("%w", err)
	}
	return n, nil
}

// checkUsageRetention accepts 1 to maxUsageRetention days, 0 (the default)
// and -1 (off).
func checkUsageRetention(n int) error {
	if n < -1 || n > maxUsageRetention {
		return fmt.Errorf("usage_retention must be 1 to %d days, or off (-1), not %d", maxUsageRetention, n)
	}
	return nil
}
