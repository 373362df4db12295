package llmratelimit

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisAcct is the pool account that serves a request admitted on Redis.
type redisAcct struct {
	accts []*accountCfg // the accounts that can serve the request
	idx   int           // the serving one's index in accts
	lease string        // its concurrency lease's id
	sent  [6]any        // the current attempt's snapshot, as the scripts return it
}

// poolKeys appends the pool's keys for a request of key keyBase: the
// key's affinity, then each account's hash and leases.
func poolKeys(keys []string, base, keyBase string, accts []*accountCfg) []string {
	keys = append(keys, keyBase+"aff")
	for _, ac := range accts {
		keys = append(keys, base+"a:"+ac.name, base+"a:"+ac.name+":leases")
	}
	return keys
}

// poolArgs appends the pool's accounts as pool_accounts reads them.
func poolArgs(args []any, accts []*accountCfg) []any {
	for _, ac := range accts {
		l := ac.lim
		args = append(args, ac.name, ac.priority, l.RPM, l.TPM, l.ITPM, l.OTPM, l.Concurrent)
	}
	return args
}

// isPool tells whether a request's accounts are a pool's (named ones,
// chosen in Redis); the unnamed block is one shared upstream instead.
func isPool(accts []*accountCfg) bool { return len(accts) > 0 && accts[0].pool }

// poolVerdict turns the admission script's verdict on the pool (kind,
// wait µs, limit, level, never, dim) into the verdict of a request no
// account can take now.
func poolVerdict(v []any, d demand) (verdict, error) {
	var f [6]float64
	for i := range f {
		x, err := strconv.ParseFloat(fmt.Sprint(v[i]), 64)
		if err != nil {
			return verdict{}, fmt.Errorf("store redis: unexpected pool verdict %v", v)
		}
		f[i] = x
	}
	switch f[0] {
	case 1:
		return verdict{never: f[4] == 1, wait: time.Duration(f[1]) * time.Microsecond, blocking: use{dim: dimCooldown, scope: scopeUpstream}}, nil
	case 2:
		return verdict{wait: time.Second, blocking: use{limit: int64(f[2]), need: 1, dim: dimConcurrency, scope: scopeUpstream}}, nil
	}
	dim := dimension(max(int(f[5])-1, 0))
	need := [...]float64{1, d.in + d.out, d.in, d.out}[dim]
	limit := int64(f[2])
	v2 := verdict{never: f[4] == 1, blocking: use{limit: limit, need: need, dim: dim, scope: scopeUpstream}, available: floorNonNeg(f[3])}
	if !v2.never && limit > 0 {
		v2.wait = durationFromTokens(limit, need-f[3])
	}
	return v2, nil
}

// acctKey is the hash of the account serving the request.
func (rt *redisTicket) acctKey() string { return rt.base + "a:" + rt.acct.accts[rt.acct.idx].name }

// acctCfg is the config of the account serving the request.
func (rt *redisTicket) acctCfg() *accountCfg { return rt.acct.accts[rt.acct.idx] }

// poolChargeRetry counts a retry on the serving account in Redis.
func (rt *redisTicket) poolChargeRetry() {
	ac := rt.acctCfg()
	ctx, cancel := context.WithTimeout(context.Background(), rt.rs.timeout)
	defer cancel()
	res, err := poolRetryScript.Run(ctx, rt.rs.client, []string{rt.acctKey()}, ac.lim.RPM, ac.lim.TPM, ac.lim.ITPM, ac.lim.OTPM).Slice()
	if err != nil {
		rt.rs.warn("charging a retry in redis failed", err)
		return
	}
	rt.setSent(res)
}

func (rt *redisTicket) setSent(snap []any) {
	if len(snap) == len(rt.acct.sent) {
		copy(rt.acct.sent[:], snap)
	}
}

// move cools the serving account down for cool (never shortening its
// cooldown) and, with move, moves the request to another account that
// can take it now; true when it moved. The cooldown is counted in t's
// zone's metrics.
func (rt *redisTicket) move(t *ticket, cool time.Duration, move bool) bool {
	ra := rt.acct
	old := ra.accts[ra.idx]
	lease := rt.rs.instance + ":" + strconv.FormatUint(rt.rs.leaseSeq.Add(1), 10)
	keys := poolKeys(make([]string, 0, 1+2*len(ra.accts)), rt.base, rt.keyBase, ra.accts)
	args := make([]any, 0, 11+7*len(ra.accts))
	args = append(args, max(cool, 0).Microseconds(), b2i(move), ra.idx+1,
		strconv.FormatFloat(math.Ceil(t.a.d.in), 'f', -1, 64), strconv.FormatFloat(math.Ceil(t.a.d.out), 'f', -1, 64),
		1, b2i(t.a.learn), ra.lease, lease, leaseTTL.Microseconds(), len(ra.accts))
	args = poolArgs(args, ra.accts)
	ctx, cancel := context.WithTimeout(context.Background(), rt.rs.timeout)
	defer cancel()
	res, err := poolMoveScript.Run(ctx, rt.rs.client, keys, args...).Slice()
	if err != nil || len(res) < 2 {
		rt.rs.warn("cooling an account down in redis failed", err)
		return false
	}
	if added, _ := strconv.ParseFloat(fmt.Sprint(res[0]), 64); added > 0 && t.z != nil {
		t.z.m.cooldown(old.name, added/1e6)
	}
	chosen, _ := res[1].(int64)
	if chosen < 1 || int(chosen) > len(ra.accts) {
		return false
	}
	ra.idx, ra.lease = int(chosen)-1, lease
	rt.setSent(res[2:])
	t.acfg = ra.accts[ra.idx]
	return true
}

// poolLearn takes an answer's rate-limit report into the serving account
// in Redis.
func (rt *redisTicket) poolLearn(status int, r *rateReport, ok bool) {
	ac := rt.acctCfg()
	args := make([]any, 0, 20)
	args = append(args, status, b2i(ok))
	for d := range numLearned {
		args = append(args, r.limit[d])
	}
	for d := range numLearned {
		args = append(args, r.remaining[d])
	}
	args = append(args, rt.acct.sent[:]...)
	args = append(args, ac.lim.RPM, ac.lim.TPM, ac.lim.ITPM, ac.lim.OTPM)
	ctx, cancel := context.WithTimeout(context.Background(), rt.rs.timeout)
	defer cancel()
	if err := poolLearnScript.Run(ctx, rt.rs.client, []string{rt.acctKey()}, args...).Err(); err != nil {
		rt.rs.warn("learning limits in redis failed", err)
	}
}

// poolSettle appends the serving account's part of the settle script's
// keys and arguments.
func (rt *redisTicket) poolSettle(keys []string, args []any, dIn, dOut float64) ([]string, []any) {
	ac := rt.acctCfg()
	key := rt.acctKey()
	keys = append(keys, key, key+":leases")
	args = append(args, 1, rt.acct.lease, strconv.FormatFloat(dIn, 'f', -1, 64), strconv.FormatFloat(dOut, 'f', -1, 64),
		ac.lim.RPM, ac.lim.TPM, ac.lim.ITPM, ac.lim.OTPM, ac.lim.Concurrent)
	return keys, args
}

// learn reads an answer's rate-limit headers for the pool account that
// served it.
func (s sharedHold) learn(t *ticket, nowNs int64, status int, h http.Header) {
	if s.rt.acct == nil {
		return
	}
	r, ok := rateLimitsOf(h, time.Unix(0, nowNs))
	if !ok && status != http.StatusTooManyRequests {
		return
	}
	s.rt.poolLearn(status, &r, ok)
}

// sharedPoolStats puts what Redis holds of the pool's accounts into the
// zone's stats, on Redis's clock: every instance shows the same buckets,
// leases in flight, cooldowns, learned limits and counts. On a Redis
// error it leaves this instance's own figures.
func (z *zone) sharedPoolStats(rs *redisStore, accts []*accountCfg, out *ZoneStats) {
	base := rs.zoneBase(z.name)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	pipe := rs.client.Pipeline()
	tm := pipe.Time(ctx)
	hashes := make([]*redis.MapStringStringCmd, len(accts))
	leases := make([]*redis.IntCmd, len(accts))
	for i, ac := range accts {
		hashes[i] = pipe.HGetAll(ctx, base+"a:"+ac.name)
		leases[i] = pipe.ZCard(ctx, base+"a:"+ac.name+":leases")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		rs.warn("reading the pool's stats from redis failed", err)
		return
	}
	nowNs := tm.Val().UnixNano()
	if out.Upstreams == nil {
		out.Upstreams = map[string]AccountStats{}
	}
	for i, ac := range accts {
		m := hashes[i].Val()
		num := func(k string) (float64, bool) {
			v, err := strconv.ParseFloat(m[k], 64)
			return v, err == nil
		}
		st := account{cfg: ac.lim, inflight: leases[i].Val()}
		for d, b := range [...]*bucket{&st.rpm, &st.tpm, &st.itpm, &st.otpm} {
			l, ok1 := num("b" + strconv.Itoa(d+1))
			at, ok2 := num("u" + strconv.Itoa(d+1))
			if ok1 && ok2 {
				*b = bucket{level: l, at: max(int64(at)*1000, 1)}
			}
		}
		if f, ok := num("f"); ok {
			ls := &learnedState{factor: f}
			rise, _ := num("rise")
			pk, _ := num("pk")
			ls.lastRise, ls.peak = int64(rise)*1000, pk
			for d := range numLearned {
				l, _ := num("L" + strconv.Itoa(d+1))
				seen, _ := num("S" + strconv.Itoa(d+1))
				ls.limit[d], ls.seenAt[d] = int64(l), int64(seen)*1000
			}
			st.learned = ls
		}
		calls, _ := num("calls")
		rl, _ := num("rl")
		as := AccountStats{UpstreamStats: st.snapshot(nowNs), Learned: st.learned.stats(nowNs), CallsTotal: int64(calls), RateLimitedTotal: int64(rl)}
		if cool, ok := num("cool"); ok && int64(cool)*1000 > nowNs {
			t := time.Unix(0, int64(cool)*1000).UTC().Format(time.RFC3339Nano)
			as.CooldownUntil = &t
		}
		out.Upstreams[ac.name] = as
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
