package llmratelimit

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// The usage record under store redis: one hash per zone and UTC day,
// {prefix + zone}:usage:<YYYY-MM-DD>, in the zone's hash slot, with six
// fields per key: <key_id>:t (tier), :n (requests), :i (input tokens), :c
// (cached input tokens), :o (output tokens) and :$ (cost, nano-dollars).
//
// Each instance's flusher adds its counts with HINCRBY, so that the rows
// of several instances add up. A flush is batches of usageBatchRows rows,
// each applied whole by one script and numbered in order by its writer;
// the script applies a batch only when its number is above the last one
// the writer had applied ({…}:usage:w:<writer>), so that a batch sent
// again after a lost reply never counts twice. A hash expires when its day
// leaves the retention, and holds at most usageMaxRows keys: the keys past
// it that day add up in the row usageOther. The hot path never calls
// Redis for usage: one script call per usageBatchRows keys every
// ledgerFlush instead of a few HINCRBY per request.

const (
	usageBatchRows = 500
	// usageMaxPending bounds the batches kept while Redis cannot be
	// reached (500,000 key-days); past it the oldest are dropped, logged
	// and counted in caddy_llm_ratelimit_ledger_errors_total.
	usageMaxPending = 1000
	usageMarkTTL    = 7 * 24 * 3600 // seconds a writer's last batch number is kept
	usageScanCount  = 3000          // fields an HSCAN asks for at once
)

// usageBatch is rows to add to Redis, numbered by their writer.
type usageBatch struct {
	seq  int64
	rows []usageDelta
}

// usageFlushScript adds a batch: KEYS are the writer's mark, then one hash
// per day of the batch; ARGV its number, the mark's TTL in seconds, the
// bound on keys per day, then per day the hash's expiry (unix ms) and its
// row count, then per row key_id, tier and the five counts.
var usageFlushScript = redis.NewScript(`
local seq = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') >= seq then return 0 end
local bound, a = tonumber(ARGV[3]) * 6, 4
for d = 2, #KEYS do
  local k, exp, n = KEYS[d], ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for r = 1, n do
    local id, tier = ARGV[a], ARGV[a + 1]
    if redis.call('HEXISTS', k, id .. ':n') == 0 and redis.call('HLEN', k) >= bound then
      id, tier = '` + usageOther + `', ''
    end
    redis.call('HSET', k, id .. ':t', tier)
    redis.call('HINCRBY', k, id .. ':n', ARGV[a + 2])
    redis.call('HINCRBY', k, id .. ':i', ARGV[a + 3])
    redis.call('HINCRBY', k, id .. ':c', ARGV[a + 4])
    redis.call('HINCRBY', k, id .. ':o', ARGV[a + 5])
    redis.call('HINCRBY', k, id .. ':$', ARGV[a + 6])
    a = a + 7
  end
  redis.call('PEXPIREAT', k, exp)
end
redis.call('SET', KEYS[1], seq, 'EX', ARGV[2])
return 1
`)

func usageDayKey(base string, day int32) string { return base + "usage:" + dayString(day) }

// flushRedis takes the shards' counts as new batches after those still
// pending, and sends them in order until one fails (it stays pending).
// The caller holds b.mu.
func (b *usageBook) flushRedis(z *zone, rs *redisStore) error {
	b.scratch = z.drainUsage(b.scratch[:0])
	for i := 0; i < len(b.scratch); i += usageBatchRows {
		b.seq++
		b.pending = append(b.pending, usageBatch{seq: b.seq, rows: slices.Clone(b.scratch[i:min(i+usageBatchRows, len(b.scratch))])})
	}
	clear(b.scratch)
	if over := len(b.pending) - usageMaxPending; over > 0 {
		b.logger.Error("usage: redis has been unreachable too long: the oldest counts are dropped",
			zap.String("zone", b.zone), zap.Int("batches", over), zap.Int("rows_per_batch", usageBatchRows))
		metricLedgerErrors.WithLabelValues(b.zone).Add(float64(over))
		clear(b.pending[:over])
		b.pending = b.pending[over:]
	}
	for len(b.pending) > 0 {
		if err := b.send(rs, &b.pending[0]); err != nil {
			rs.warn("usage: adding to redis failed; trying again at the next flush", err)
			z.m.storeErrors.Inc()
			return err
		}
		b.pending[0] = usageBatch{}
		b.pending = b.pending[1:]
	}
	b.pending = nil
	return nil
}

// send applies one batch in Redis (or finds it applied already).
func (b *usageBook) send(rs *redisStore, bt *usageBatch) error {
	base := rs.zoneBase(b.zone)
	var days []int32
	byDay := map[int32][]int{}
	for i := range bt.rows {
		d := bt.rows[i].u.day
		if byDay[d] == nil {
			days = append(days, d)
		}
		byDay[d] = append(byDay[d], i)
	}
	keys := make([]string, 1, 1+len(days))
	keys[0] = base + "usage:w:" + b.writer
	args := make([]any, 0, 3+2*len(days)+7*len(bt.rows))
	args = append(args, bt.seq, usageMarkTTL, usageMaxRows)
	retention := int64(b.retention.Load())
	for _, d := range days {
		keys = append(keys, usageDayKey(base, d))
		args = append(args, (int64(d)+retention)*86_400_000, len(byDay[d]))
		for _, i := range byDay[d] {
			r := &bt.rows[i]
			args = append(args, r.kp.id(), r.tier, r.u.requests, r.u.in, r.u.cached, r.u.out, r.u.cost)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), rs.timeout)
	defer cancel()
	return usageFlushScript.Run(ctx, rs.client, keys, args...).Err()
}

// readRedis is readStored for a shared zone: this instance's counts are
// added first, then each day's hash is read (scanned, however many keys
// it holds).
func (b *usageBook) readRedis(z *zone, rs *redisStore, from, to int32, keyID string, emit func(day int32, rows []UsageRow) error) error {
	b.mu.Lock()
	err := b.flushRedis(z, rs)
	b.mu.Unlock()
	if err != nil {
		return err
	}
	base := rs.zoneBase(b.zone)
	for day := from; day <= to; day++ {
		sum := map[string]*usageRow{}
		key := usageDayKey(base, day)
		if keyID != "" {
			ctx, cancel := context.WithTimeout(context.Background(), rs.timeout)
			fields := []string{keyID + ":t", keyID + ":n", keyID + ":i", keyID + ":c", keyID + ":o", keyID + ":$"}
			vals, err := rs.client.HMGet(ctx, key, fields...).Result()
			cancel()
			if err != nil {
				return err
			}
			for i, v := range vals {
				if s, ok := v.(string); ok {
					addUsageField(sum, fields[i], s)
				}
			}
		} else {
			var cursor uint64
			for {
				ctx, cancel := context.WithTimeout(context.Background(), rs.timeout)
				kv, next, err := rs.client.HScan(ctx, key, cursor, "*", usageScanCount).Result()
				cancel()
				if err != nil {
					return err
				}
				for i := 0; i+1 < len(kv); i += 2 {
					addUsageField(sum, kv[i], kv[i+1])
				}
				if cursor = next; cursor == 0 {
					break
				}
			}
		}
		if err := emit(day, sortedRows(day, sum)); err != nil {
			return err
		}
	}
	return nil
}

// addUsageField puts one field of a day's hash (<key_id>:<f>) into sum.
func addUsageField(sum map[string]*usageRow, field, val string) {
	i := strings.LastIndexByte(field, ':')
	if i <= 0 {
		return
	}
	id, f := field[:i], field[i+1:]
	r := sum[id]
	if r == nil {
		r = new(usageRow)
		sum[id] = r
	}
	if f == "t" {
		r.Tier = val
		return
	}
	n, _ := strconv.ParseInt(val, 10, 64)
	switch f {
	case "n":
		r.Requests = n
	case "i":
		r.Input = n
	case "c":
		r.Cached = n
	case "o":
		r.Output = n
	case "$":
		r.Cost = n
	}
}
