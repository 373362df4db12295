package llmratelimit

import (
	"context"
	"sort"
	"strconv"
	"time"
)

// The stats of a shared zone: the levels stored in Redis for the keys
// this instance has seen, and the shared upstream's buckets.

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
	level := float64(limit)
	if len(vals) == 2 && vals[0] != nil && vals[1] != nil {
		l, err1 := strconv.ParseFloat(vals[0].(string), 64)
		at, err2 := strconv.ParseFloat(vals[1].(string), 64)
		if err1 == nil && err2 == nil {
			level = min(float64(limit), l+(float64(nowUs)-at)*float64(limit)/60e6)
		}
	}
	v := floorNonNeg(level)
	return &v
}

// sharedStats fills out with the keys this instance has seen and the
// shared upstream's buckets, read from Redis; on a Redis error it leaves
// them as they are.
func (z *zone) sharedStats(rs *redisStore, up Limits, out *ZoneStats) {
	base := rs.zoneBase(z.name)
	type row struct {
		id string
		k  seenKey
	}
	var rows []row
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kp, k := range s.seen {
			rows = append(rows, row{kp.id(), k})
		}
		s.mu.Unlock()
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].id < rows[j].id })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	pipe := rs.client.Pipeline()
	for _, r := range rows {
		pipe.HMGet(ctx, base+r.id+":rpm", "l", "t")
		pipe.HMGet(ctx, base+r.id+":tpm", "l", "t")
	}
	for _, b := range []string{"rpm", "tpm", "itpm", "otpm"} {
		pipe.HMGet(ctx, base+"upstream:"+b, "l", "t")
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil {
		rs.warn("reading the stats from redis failed", err)
		return
	}
	nowUs := now().UnixMicro()
	vals := func(i int) []any {
		v, _ := cmds[i].(interface{ Val() []any })
		if v == nil {
			return nil
		}
		return v.Val()
	}
	shared := map[string]bool{}
	for i, r := range rows {
		shared[r.id] = true
		k := KeyStats{KeyID: r.id, Tier: r.k.tier, CalibrationFactor: 1,
			RPMAvailable: redisLevel(vals(2*i), r.k.lim.RPM, nowUs), TPMAvailable: redisLevel(vals(2*i+1), r.k.lim.TPM, nowUs)}
		replaced := false
		for j := range out.Keys { // a key also decided here (fail open): Redis has the levels
			if out.Keys[j].KeyID == r.id {
				out.Keys[j].RPMAvailable, out.Keys[j].TPMAvailable = k.RPMAvailable, k.TPMAvailable
				replaced = true
			}
		}
		if !replaced {
			out.Keys = append(out.Keys, k)
		}
	}
	sort.Slice(out.Keys, func(i, j int) bool { return out.Keys[i].KeyID < out.Keys[j].KeyID })
	n := 2 * len(rows)
	out.Upstream = UpstreamStats{RPMAvailable: redisLevel(vals(n), up.RPM, nowUs), TPMAvailable: redisLevel(vals(n+1), up.TPM, nowUs),
		ITPMAvailable: redisLevel(vals(n+2), up.ITPM, nowUs), OTPMAvailable: redisLevel(vals(n+3), up.OTPM, nowUs)}
	if up.any() {
		acct := out.Upstreams[defaultAccount]
		acct.UpstreamStats = out.Upstream
		out.Upstreams[defaultAccount] = acct
	}
}
