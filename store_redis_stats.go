package llmratelimit

import (
	"context"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The stats of a shared zone: for the keys this instance has seen, the
// levels and the counters (store_redis_counters.go) stored in Redis, and
// the shared upstream's buckets.

// seenKey is a key this instance decided on Redis: what its stats need.
type seenKey struct {
	tier string
	lim  Limits
	at   int64 // unix ns of its last decision, for the sweeper
}

// sawShared records a key decided on Redis, under its shard's lock.
func (z *zone) sawShared(q *ask) {
	s := z.shard(q.kh)
	s.mu.Lock()
	if s.seen == nil {
		s.seen = make(map[keyPrefix]seenKey)
	}
	s.seen[q.kh.prefix()] = seenKey{tier: q.tier, lim: q.lim, at: now().UnixNano()}
	s.mu.Unlock()
}

// redisLevel is a bucket's level in Redis now (refilled from its stored
// time), or nil without a limit; an absent bucket is full.
func redisLevel(vals []any, limit int64, nowUs int64) *int64 {
	if limit <= 0 {
		return nil
	}
	v := floorNonNeg(redisLevelAt(vals, limit, nowUs))
	return &v
}

// redisLevelAt is a bucket's level at nowUs from its stored {l, t} (HMGET
// values), as the scripts' level_at computes it; an absent bucket is full.
func redisLevelAt(vals []any, limit int64, nowUs int64) float64 {
	level := float64(limit)
	if len(vals) == 2 && vals[0] != nil && vals[1] != nil {
		l, err1 := strconv.ParseFloat(vals[0].(string), 64)
		at, err2 := strconv.ParseFloat(vals[1].(string), 64)
		if err1 == nil && err2 == nil {
			level = min(float64(limit), l+(float64(nowUs)-at)*float64(limit)/60e6)
		}
	}
	return level
}

// sharedRow is a key this instance has seen, with its reads in the
// stats' pipeline.
type sharedRow struct {
	id                 string
	k                  seenKey
	rpm, tpm, counters *redis.SliceCmd
	leases             *redis.IntCmd // nil: the key has no concurrency limit
}

// seenRows are the keys this instance has seen (only keyID's, when not
// empty), sorted by key_id.
func (z *zone) seenRows(keyID string) []sharedRow {
	var rows []sharedRow
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kp, k := range s.seen {
			if id := kp.id(); keyID == "" || id == keyID {
				rows = append(rows, sharedRow{id: id, k: k})
			}
		}
		s.mu.Unlock()
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].id < rows[j].id })
	return rows
}

// readShared reads the rows' levels, counters and leases, and with up the
// shared upstream's buckets, in one pipeline; it returns Redis's time (µs),
// which the counters' last minute is measured on.
func (z *zone) readShared(rs *redisStore, rows []sharedRow, up bool) (upCmds [4]*redis.SliceCmd, redisNowUs int64, err error) {
	base := rs.zoneBase(z.name)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	pipe := rs.client.Pipeline()
	tm := pipe.Time(ctx)
	for i := range rows {
		r := &rows[i]
		kb := base + r.id + ":"
		r.rpm = pipe.HMGet(ctx, kb+"rpm", "l", "t")
		r.tpm = pipe.HMGet(ctx, kb+"tpm", "l", "t")
		r.counters = pipe.HMGet(ctx, kb+"stats", counterFields...)
		if r.k.lim.Concurrent > 0 {
			r.leases = pipe.ZCard(ctx, kb+"leases")
		}
	}
	if up {
		for i, b := range [...]string{"rpm", "tpm", "itpm", "otpm"} {
			upCmds[i] = pipe.HMGet(ctx, base+"upstream:"+b, "l", "t")
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return upCmds, 0, err
	}
	return upCmds, tm.Val().UnixMicro(), nil
}

// addTo puts what Redis holds of the row's key into k: its levels, and
// its counters and leases on top of what this instance counted alone
// (requests it decided without Redis, under fail open).
func (r *sharedRow) addTo(k *KeyStats, nowUs, redisNowUs int64) {
	k.RPMAvailable = redisLevel(r.rpm.Val(), r.k.lim.RPM, nowUs)
	k.TPMAvailable = redisLevel(r.tpm.Val(), r.k.lim.TPM, nowUs)
	c := readCounters(r.counters.Val(), redisNowUs)
	k.RequestsTotal += c.requests
	k.InputTokensTotal += c.inTokens
	k.OutputTokensTotal += c.outTokens
	k.RequestsLastMinute += c.reqLastMinute
	k.TokensLastMinute += c.tokLastMinute
	if r.leases != nil {
		k.InFlight += r.leases.Val()
	}
}

// sharedStats fills out with the keys this instance has seen and the
// shared upstream's buckets, read from Redis; on a Redis error it leaves
// them as they are.
func (z *zone) sharedStats(rs *redisStore, up Limits, out *ZoneStats) {
	rows := z.seenRows("")
	upCmds, redisNowUs, err := z.readShared(rs, rows, true)
	if err != nil {
		rs.warn("reading the stats from redis failed", err)
		return
	}
	nowUs := now().UnixMicro()
	local := make(map[string]int, len(out.Keys)) // keys also decided here (fail open)
	for j := range out.Keys {
		local[out.Keys[j].KeyID] = j
	}
	for i := range rows {
		r := &rows[i]
		if j, ok := local[r.id]; ok {
			r.addTo(&out.Keys[j], nowUs, redisNowUs)
			continue
		}
		k := KeyStats{KeyID: r.id, Tier: r.k.tier, CalibrationFactor: 1}
		r.addTo(&k, nowUs, redisNowUs)
		out.Keys = append(out.Keys, k)
	}
	sort.Slice(out.Keys, func(i, j int) bool { return out.Keys[i].KeyID < out.Keys[j].KeyID })
	out.Upstream = UpstreamStats{RPMAvailable: redisLevel(upCmds[0].Val(), up.RPM, nowUs), TPMAvailable: redisLevel(upCmds[1].Val(), up.TPM, nowUs),
		ITPMAvailable: redisLevel(upCmds[2].Val(), up.ITPM, nowUs), OTPMAvailable: redisLevel(upCmds[3].Val(), up.OTPM, nowUs)}
	if up.any() {
		acct := out.Upstreams[defaultAccount]
		acct.UpstreamStats = out.Upstream
		out.Upstreams[defaultAccount] = acct
	}
}

// sharedKeyStats puts what Redis holds of one key into k when this
// instance has seen it; false when it has not (or Redis cannot say).
func (z *zone) sharedKeyStats(rs *redisStore, keyID string, k *KeyStats, local bool) bool {
	rows := z.seenRows(keyID)
	if len(rows) == 0 {
		return false
	}
	_, redisNowUs, err := z.readShared(rs, rows, false)
	if err != nil {
		rs.warn("reading the stats from redis failed", err)
		return false
	}
	if !local {
		*k = KeyStats{KeyID: keyID, Tier: rows[0].k.tier, CalibrationFactor: 1}
	}
	rows[0].addTo(k, now().UnixMicro(), redisNowUs)
	return true
}
