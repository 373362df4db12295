package llmratelimit

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// key_info in a shared zone: the figures are the ones every instance
// decides on, read from Redis in one pipeline: the key's buckets (on
// Redis's clock, as the scripts refill them), its leases, its budget's
// hash for the current period and its usage of the day (dayKey).

// sharedKeyView puts what Redis holds of key kh into v, which holds this
// instance's own figures: the requests it decided alone (fail open) stay
// counted in flight and today, on top of Redis's. b is the key's budget
// (nil: none); at is the package clock's now, which names the budget's
// period and the day.
func (h *Handler) sharedKeyView(kh keyHash, b *budget, at time.Time, v *keyView) error {
	rs := h.rs
	base := rs.zoneBase(h.Zone)
	id := kh.id()
	kb := base + id + ":"
	ctx, cancel := context.WithTimeout(context.Background(), max(rs.timeout, time.Second))
	defer cancel()
	pipe := rs.client.Pipeline()
	tm := pipe.Time(ctx)
	lims := v.lim.perDim()
	var levels [4]*redis.SliceCmd
	for i, name := range [4]string{"rpm", "tpm", "itpm", "otpm"} {
		if lims[i] > 0 {
			levels[i] = pipe.HMGet(ctx, kb+name, "l", "t")
		}
	}
	var leases *redis.IntCmd
	if v.lim.Concurrent > 0 {
		leases = pipe.ZCard(ctx, kb+"leases")
	}
	var spend *redis.SliceCmd
	if b != nil {
		spend = pipe.HMGet(ctx, spendKey(base, id, b.period.start(at)), "s", "r")
	}
	day := pipe.HMGet(ctx, dayKey(kb, utcDay(at.UnixNano())), "n", "i", "o", "c")
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	redisNowUs := tm.Val().UnixMicro()
	for i, cmd := range levels {
		if cmd != nil {
			v.levels[i] = redisLevelAt(cmd.Val(), lims[i], redisNowUs)
		}
	}
	if leases != nil {
		v.inflight += leases.Val()
	}
	if spend != nil {
		vals := spend.Val()
		v.spent, v.reserved = hashInt(vals, 0), hashInt(vals, 1)
	}
	vals := day.Val()
	v.today.requests += uint32(hashInt(vals, 0))
	v.today.inTokens += hashInt(vals, 1)
	v.today.outTokens += hashInt(vals, 2)
	v.today.costNano += hashInt(vals, 3)
	return nil
}

// hashInt is the integer of HMGET's value i (0 for an absent field).
func hashInt(vals []any, i int) int64 {
	if i >= len(vals) {
		return 0
	}
	s, _ := vals[i].(string)
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
