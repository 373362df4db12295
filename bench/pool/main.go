// Command pool shows llm_ratelimit's pool of provider accounts, and its
// learned limits, working under load. It builds this repository's Caddy,
// runs it as child processes in front of an in-process mock OpenAI
// provider on loopback, offers three times the provider's quota open loop
// (requests launched on schedule, whatever the earlier ones got, at most
// -conns in flight per gateway on top of the calls the latency holds) and
// prints what the clients and the provider saw, with PASS/FAIL checks.
//
// The mock provider knows its accounts by `Authorization: Bearer <token>`
// (401 otherwise), enforces each one's RPM as a token bucket (capacity
// -rpm, refilled continuously, full at first use), answers chat
// completions with a usage block after -latency plus 20–40 ms, and sends
// OpenAI's x-ratelimit-{limit,remaining,reset}-requests on every answer,
// with retry-after-ms and an OpenAI error body on a 429, which it answers
// at once. The remaining it reports is taken when the call arrives
// (-remaining arrival, as most providers do) or when it answers
// (-remaining answer).
//
// Scenarios:
//
//	pool        -accounts N accounts (default 2) of -rpm each as
//	            `upstream a { rpm R header_up ... }`, b, …, offered 3NR a minute
//	            from -keys client keys per gateway. Checks: ≥ 95 % of
//	            NR×duration served upstream, each account ≥ 0.8/N of the
//	            successes, upstream 429s ≤ 1 % of the
//	            upstream calls, no provider 429 reaching a client.
//	configured  one account configured at its true quota (`rpm R`), one
//	            gateway offered 3R, learn_limits on and then off. Checks: on
//	            ≥ 97 % of R×duration served and no more than 1 point below
//	            off; no provider 429 reaching a client.
//	learned     one account of -rpm that only its headers tell (no rpm in the
//	            config, learn_limits on), two gateway processes with no shared
//	            store, each offered 1.5R a minute. Checks: ≥ 90 % of R×duration
//	            served, upstream 429s ≤ 2 %. Then the same with learn_limits off,
//	            as the control (figures only).
//
// With -table it runs, instead, the configured and learned scenarios at
// every -latencies, with the remaining taken at arrival and at the answer,
// learn_limits on and off, -parallel runs at a time (each with its own
// provider and Caddy children), and prints one Markdown table.
//
// The buckets start full, so each run first runs a warm-up (by default
// the time the offered load takes to drain the full buckets, + the
// latency + 5s) and measures after it: the window counts requests by the
// time they were sent (clients) or arrived (provider).
//
// With -instances N the pool and configured scenarios spread their load
// over N gateway processes, and with -redis ADDR[,ADDR...] (and -cluster
// for a Redis Cluster's seeds) those share their state in Redis: the
// pool's accounts, their cooldowns and learned limits, the keys' buckets.
//
//	go run ./bench/pool [-scenario pool|configured|learned|all] [-duration 60s] [-rpm 600] [-conns 64] [-latency 0s] [-remaining arrival|answer] [-instances 1] [-redis ADDR [-cluster]]
//	go run ./bench/pool -table [-latencies 0s,10s,30s,60s,120s] [-parallel 0] [-rpm 600] [-duration 60s]
//
// It exits non-zero only on a setup error; a failed check prints FAIL.
package main

import (
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

var (
	scenario = flag.String("scenario", "all", "pool, learned or all")
	duration = flag.Duration("duration", 60*time.Second, "measured time per scenario")
	rpm      = flag.Int("rpm", 600, "each provider account's requests per minute (R)")
	conns    = flag.Int("conns", 64, "most requests in flight per gateway; a launch beyond it is skipped and counted")
	keys     = flag.Int("keys", 8, "client keys per gateway")
	maxWait  = flag.Duration("max-wait", 2*time.Second, "llm_ratelimit max_wait")
	warmup   = flag.Duration("warmup", 0, "time before measuring; 0: the time the offered load takes to drain the full buckets, + the latency + 5s")
	latency  = flag.Duration("latency", 0, "how long the provider holds each answer it accepts (plus 20–40 ms); a 429 is answered at once")
	remAt    = flag.String("remaining", "arrival", "when the provider takes the remaining it reports: arrival (most providers) or answer")
	table    = flag.Bool("table", false, "run the latency table instead of -scenario: -latencies × learn_limits on/off × remaining at arrival/answer × {configured, learned}, -parallel at a time")
	lats     = flag.String("latencies", "0s,10s,30s,60s,120s", "the latency table's latencies")
	parallel = flag.Int("parallel", 0, "latency table runs at once; 0: all of them")
	insts    = flag.Int("instances", 1, "gateway instances that share the pool and configured scenarios' load (each a Caddy process); with -redis they share their state there")
	redisAt  = flag.String("redis", "", "Redis address(es), comma-separated: the pool and configured scenarios' gateways get `store redis` (a fresh prefix per run)")
	cluster  = flag.Bool("cluster", false, "-redis names a Redis Cluster's seed nodes")
	nAccts   = flag.Int("accounts", 2, "the pool scenario's accounts")
)

const retryBlock = `		retry {
			attempts 3
			base 200ms
			max 2s
			max_total 10s
		}`

// retryMaxTotal is retryBlock's max_total, for the clients' timeout.
const retryMaxTotal = 10 * time.Second

// setup describes one run: the provider's accounts, one llm_ratelimit
// block per gateway process, and the load offered to each.
type setup struct {
	name       string
	title      string
	accounts   map[string]string // bearer token → account name
	gateways   []string          // llm_ratelimit blocks, one per process
	perGateway float64           // requests a minute offered to each
	latency    time.Duration     // the provider's hold on each answer it accepts
	answerTime bool              // the provider reports remaining at the answer
	quiet      bool              // print nothing (a latency table run)
}

type result struct {
	t     *tally
	prov  *provider
	names []string // the accounts, sorted
	from  time.Time
	to    time.Time
	quota float64 // requests the provider allows in the window, refill only
}

func main() {
	flag.Parse()
	switch {
	case *scenario != "pool" && *scenario != "learned" && *scenario != "configured" && *scenario != "all":
		check(fmt.Errorf("-scenario: want pool, learned, configured or all, got %q", *scenario))
	case *rpm < 6 || *duration <= 0 || *conns < 1 || *keys < 1 || *maxWait <= 0 || *warmup < 0 || *latency < 0 || *parallel < 0:
		check(fmt.Errorf("want -rpm ≥ 6, -duration > 0, -conns ≥ 1, -keys ≥ 1, -max-wait > 0, -warmup ≥ 0, -latency ≥ 0, -parallel ≥ 0"))
	case *nAccts < 1 || *nAccts > 26:
		check(fmt.Errorf("-accounts: want 1 to 26, got %d", *nAccts))
	case *insts < 1 || *insts > 16:
		check(fmt.Errorf("-instances: want 1 to 16, got %d", *insts))
	case *cluster && *redisAt == "":
		check(fmt.Errorf("-cluster needs -redis"))
	case *remAt != "arrival" && *remAt != "answer":
		check(fmt.Errorf("-remaining: want arrival or answer, got %q", *remAt))
	}
	latencies := parseLatencies(*lats)
	onSignal()
	dir, err := os.MkdirTemp("", "llm-pool-")
	check(err)
	started.Lock()
	started.dir = dir
	started.Unlock()
	defer cleanup()
	bin := build(dir)

	if *table {
		latencyTable(bin, dir, latencies)
		return
	}
	var summaries []string
	if *scenario == "pool" || *scenario == "all" {
		summaries = append(summaries, poolScenario(bin, dir))
	}
	if *scenario == "configured" || *scenario == "all" {
		summaries = append(summaries, configuredScenario(bin, dir)...)
	}
	if *scenario == "learned" || *scenario == "all" {
		summaries = append(summaries, learnedScenario(bin, dir)...)
	}
	fmt.Println("\nsummary:")
	for _, s := range summaries {
		fmt.Println("  " + s)
	}
}

// limitsBlock is the llm_ratelimit block: generous per-key limits, the
// given upstream blocks and options, max_wait and the retry policy.
func limitsBlock(zone string, upstreams string) string {
	return fmt.Sprintf(`	llm_ratelimit {
		zone %s
		rpm %d
%s
		max_wait %s
%s
	}`, zone, *rpm*60, upstreams, *maxWait, retryBlock)
}

// account is an upstream block with the account's credential; name ""
// is the unnamed block (the single account).
func account(name, token, limits string) string {
	if name != "" {
		name += " "
	}
	return fmt.Sprintf("\t\tupstream %s{\n%s\t\t\theader_up Authorization \"Bearer %s\"\n\t\t}", name, limits, token)
}

// storeBlock is the `store redis` block of -redis (nothing without it),
// with a prefix of the run's own so that runs never share state.
func storeBlock(run string) string {
	if *redisAt == "" {
		return ""
	}
	b := "\t\tstore redis {\n\t\t\taddress " + strings.ReplaceAll(*redisAt, ",", " ") + "\n"
	if *cluster {
		b += "\t\t\tcluster\n"
	}
	return b + fmt.Sprintf("\t\t\tprefix bench:%s:%d:\n\t\t}\n", run, time.Now().UnixNano())
}

// instances is -instances copies of a gateway block, and the load each is
// offered so that together they get perMin.
func instances(block string, perMin float64) ([]string, float64) {
	gws := make([]string, *insts)
	for i := range gws {
		gws[i] = block
	}
	return gws, perMin / float64(*insts)
}

// where says where the gateways keep their state, for the titles.
func where() string {
	switch {
	case *redisAt == "" && *insts == 1:
		return "1 gateway"
	case *redisAt == "":
		return fmt.Sprintf("%d gateways, no shared store", *insts)
	case *cluster:
		return fmt.Sprintf("%d gateways sharing a Redis Cluster", *insts)
	default:
		return fmt.Sprintf("%d gateways sharing Redis", *insts)
	}
}

func poolScenario(bin, dir string) string {
	R, N := *rpm, *nAccts
	lim := fmt.Sprintf("\t\t\trpm %d\n", R)
	s := setup{
		name:       "pool",
		accounts:   map[string]string{},
		latency:    *latency,
		answerTime: *remAt == "answer",
	}
	var blocks []string
	for i := range N {
		name := string(rune('a' + i))
		token := "sk-acct-" + name
		s.accounts[token] = name
		blocks = append(blocks, account(name, token, lim))
	}
	s.gateways, s.perGateway = instances(limitsBlock("pool", storeBlock("pool")+strings.Join(blocks, "\n")), float64(3*N*R))
	s.title = fmt.Sprintf("pool: %d accounts of %d RPM each, %s offered %d/min in all (3× the pool) from %d keys each", N, R, where(), 3*N*R, *keys)
	o, skipped := run(bin, dir, s)
	if skipped != "" {
		fmt.Printf("\n== %s\nskipped: %s\n", s.title, skipped)
		return "pool: skipped: " + skipped
	}
	report(o)
	used := o.upstreamOK() / o.quota
	total := o.upstreamOK()
	minShare, shares := 1.0, []string{}
	for _, n := range o.names {
		sh := float64(o.prov.cred(n).okIn.Load()) / math.Max(1, total)
		minShare = min(minShare, sh)
		shares = append(shares, fmt.Sprintf("%s %.1f %%", n, 100*sh))
	}
	r429 := o.upstream429() / math.Max(1, total+o.upstream429())
	fmt.Println("checks:")
	pass := verdict(used >= 0.95, "upstream successes ≥ 95 %% of %dR×duration: %.1f %% (%.0f of %.0f)", N, 100*used, total, o.quota)
	pass = verdict(minShare >= 0.8/float64(N), "each account ≥ %.0f %% of the successes: %s", 80/float64(N), strings.Join(shares, ", ")) && pass
	pass = verdict(r429 <= 0.01, "upstream 429s ≤ 1 %% of the upstream calls: %.2f %%", 100*r429) && pass
	pass = verdict(o.t.leakedAll == 0, "no provider 429 reaches a client (whole run): %d", o.t.leakedAll) && pass
	return fmt.Sprintf("pool (%d×%d RPM, %s, 3× load, %v measured): %s — %.1f %% of the pool's quota served (%s), upstream 429s %.2f %%, provider 429s reaching clients %d, gateway 429s %d of %d sent",
		N, R, where(), *duration, passFail(pass), 100*used, strings.Join(shares, " / "), 100*r429, o.t.leakedAll, o.t.shed, o.t.sent)
}

func learnedScenario(bin, dir string) []string {
	R := *rpm
	var out []string
	for _, mode := range []string{"on", "off"} {
		block := limitsBlock("learned", account("acct", "sk-acct-a", "")+"\n\t\tlearn_limits "+mode)
		s := setup{
			name:       "learned-" + mode,
			accounts:   map[string]string{"sk-acct-a": "acct"},
			gateways:   []string{block, block},
			perGateway: 1.5 * float64(R),
			latency:    *latency,
			answerTime: *remAt == "answer",
		}
		label := "learned"
		if mode == "off" {
			label = "CONTROL (learn_limits off)"
		}
		s.title = fmt.Sprintf("%s: one account of %d RPM that only its headers tell, 2 gateway processes (no shared store) each offered %.0f/min from %d keys",
			label, R, s.perGateway, *keys)
		o, skipped := run(bin, dir, s)
		if skipped != "" {
			fmt.Printf("\n== %s\nskipped: %s\n", s.title, skipped)
			out = append(out, fmt.Sprintf("%s: skipped: %s", label, skipped))
			continue
		}
		report(o)
		total := o.upstreamOK()
		used := total / o.quota
		r429 := o.upstream429() / math.Max(1, total+o.upstream429())
		if mode == "off" {
			fmt.Println("(control: no checks)")
			out = append(out, fmt.Sprintf("learned CONTROL, learn_limits off (1×%d RPM, 2 gateways, 3× load, %v measured): %.1f %% of the quota served, upstream 429s %.2f %%, provider 429s reaching clients %d",
				R, *duration, 100*used, 100*r429, o.t.leakedAll))
			continue
		}
		fmt.Println("checks:")
		pass := verdict(used >= 0.90, "upstream successes ≥ 90 %% of R×duration: %.1f %% (%.0f of %.0f)", 100*used, total, o.quota)
		pass = verdict(r429 <= 0.02, "upstream 429s ≤ 2 %% of the upstream calls: %.2f %%", 100*r429) && pass
		out = append(out, fmt.Sprintf("learned, learn_limits on (1×%d RPM, 2 gateways, 3× load, %v measured): %s — %.1f %% of the quota served, upstream 429s %.2f %%, provider 429s reaching clients %d",
			R, *duration, passFail(pass), 100*used, 100*r429, o.t.leakedAll))
	}
	return out
}

// run starts the provider and the gateways, offers the load through the
// warm-up and the measured window, and stops them. A non-empty skipped
// says why the scenario could not run on this build.
func run(bin, dir string, s setup) (o *result, skipped string) {
	prov := newProvider(*rpm, s.accounts, s.latency, s.answerTime)
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	srv := &http.Server{Handler: prov, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(pl) }()
	defer srv.Close()

	var gws []*child
	defer func() { stopChildren(gws...) }()
	for i, block := range s.gateways {
		name := fmt.Sprintf("%s-gw%d", s.name, i+1)
		addr := freeAddr()
		path := filepath.Join(dir, name+".Caddyfile")
		check(os.WriteFile(path, []byte(caddyfile(addr, block, pl.Addr().String())), 0o600))
		if out, err := validate(bin, path); err != nil {
			if strings.Contains(out, "learn_limits") || strings.Contains(out, "not supported") {
				return nil, "not supported by this build (caddy validate: " + lastLine(out) + ")"
			}
			check(fmt.Errorf("%s: caddy validate: %v\n%s", name, err, out))
		}
		gws = append(gws, start(bin, name, path, addr))
	}

	quotaPerMin := float64(*rpm * len(s.accounts))
	offered := s.perGateway * float64(len(gws))
	warm := *warmup
	if warm == 0 {
		warm = time.Duration(quotaPerMin/(offered-quotaPerMin)*float64(time.Minute)) + s.latency + 5*time.Second
	}
	// Calls the provider holds are in flight for the latency: -conns is
	// on top of them.
	inflight := *conns + int(s.perGateway/60*s.latency.Seconds()*1.2)
	if !s.quiet {
		fmt.Printf("\n== %s\n", s.title)
		fmt.Printf("max_wait %v, -conns %d per gateway (%d with the calls the latency holds), provider latency %v, remaining taken at %s, %v warm-up then %v measured ...\n",
			*maxWait, *conns, inflight, s.latency, arrivalOrAnswer(s.answerTime), warm.Round(time.Second), *duration)
	}
	t0 := time.Now().Add(100 * time.Millisecond)
	from, to := t0.Add(warm), t0.Add(warm+*duration)
	prov.window(from, to)
	tallies := make(chan *tally, len(gws))
	for i, gw := range gws {
		ks := make([]string, *keys)
		for k := range ks {
			ks[k] = fmt.Sprintf("sk-client-%s-gw%d-%02d", s.name, i+1, k)
		}
		go func() {
			tallies <- load(gw, ks, s.perGateway, inflight, t0, from, to, *maxWait+retryMaxTotal+10*time.Second+s.latency*5/4)
		}()
	}
	t := newTally()
	for range gws {
		t.merge(<-tallies)
	}
	for _, gw := range gws {
		select {
		case <-gw.done:
			fmt.Printf("%s: ", s.name)
			fmt.Printf("WARNING: %s exited during the run (%v); the figures are not valid\n", gw.name, gw.cmd.ProcessState)
		default:
		}
	}
	var names []string
	for _, n := range s.accounts {
		names = append(names, n)
	}
	sort.Strings(names)
	return &result{t: t, prov: prov, names: names, from: from, to: to,
		quota: quotaPerMin * to.Sub(from).Minutes()}, ""
}

func (p *provider) cred(name string) *credential {
	for _, c := range p.creds {
		if c.name == name {
			return c
		}
	}
	return &credential{}
}

func (o *result) upstreamOK() float64 {
	var n int64
	for _, c := range o.prov.creds {
		n += c.okIn.Load()
	}
	return float64(n)
}

func (o *result) upstream429() float64 {
	var n int64
	for _, c := range o.prov.creds {
		n += c.limitedIn.Load()
	}
	return float64(n)
}

// report prints the measured window's figures and the whole run's leaks
// and failures.
func report(o *result) {
	t := o.t
	fmt.Printf("offered in the measured window:  %d requests sent, %d skipped (at -conns in flight)\n", t.sent, t.skipped)
	fmt.Printf("client outcomes:                 200: %d   gateway 429: %d   provider 429 reaching the client: %d   other: %d\n",
		t.ok, t.shed, t.leaked, t.other)
	var by []string
	for _, n := range sortedKeys(t.byAccount) {
		label := n
		if label == "" {
			label = "(no header)"
		}
		by = append(by, fmt.Sprintf("%s %d", label, t.byAccount[n]))
	}
	fmt.Printf("  200s by x-llm-ratelimit-upstream: %s; retried (x-llm-ratelimit-attempts > 1): %d; latency p50 %v, p99 %v\n",
		strings.Join(by, ", "), t.retried, t.percentile(0.5).Round(time.Millisecond), t.percentile(0.99).Round(time.Millisecond))
	var per []string
	for _, n := range o.names {
		per = append(per, fmt.Sprintf("%s %d", n, o.prov.cred(n).okIn.Load()))
	}
	fmt.Printf("upstream successes:              %s (total %.0f; the quota's refill over %v is %.0f)\n",
		strings.Join(per, ", "), o.upstreamOK(), o.to.Sub(o.from).Round(time.Millisecond), o.quota)
	if o.upstreamOK() > 1.05*o.quota {
		fmt.Println("NOTE: more successes than the quota's refill: the full buckets were not drained before the window (-warmup too short); the utilization check means nothing here")
	}
	calls := o.upstreamOK() + o.upstream429()
	fmt.Printf("upstream 429s:                   %.0f of %.0f upstream calls (%.2f %%)\n", o.upstream429(), calls, 100*o.upstream429()/math.Max(1, calls))
	var okAll, limAll int64
	for _, c := range o.prov.creds {
		okAll += c.ok.Load()
		limAll += c.limited.Load()
	}
	fmt.Printf("whole run (warm-up included):    upstream 200s %d, upstream 429s %d, provider 429s reaching clients %d, other %d, skipped %d, unknown credentials at the provider %d\n",
		okAll, limAll, t.leakedAll, t.otherAll, t.skippedAll, o.prov.unknown.Load())
	for _, r := range sortedKeys(t.reasons) {
		fmt.Printf("  other: %6d  %s\n", t.reasons[r], r)
	}
}

func verdict(ok bool, format string, args ...any) bool {
	fmt.Printf("  %s  %s\n", passFail(ok), fmt.Sprintf(format, args...))
	return ok
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func sortedKeys(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
