package main

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// The learned limits at real LLM latencies: SPEC "Learned limits under
// real latencies" says that with learn_limits on a zone uses its quota at
// least as well as with it off, at any latency and whether the provider
// takes the remaining it reports when a call arrives or when it answers.

// configuredScenario is one account configured at its true quota, one
// gateway offered 3× it, with learn_limits on and then off.
func configuredScenario(bin, dir string) []string {
	on, off := configuredPair(bin, dir, *latency, *remAt == "answer", false)
	pass := verdict(on.used >= 0.97, "learn_limits on: ≥ 97 %% of the quota used: %.1f %%", 100*on.used)
	pass = verdict(on.used >= off.used-0.01, "learn_limits on no more than 1 point below off: %.1f %% vs %.1f %%", 100*on.used, 100*off.used) && pass
	pass = verdict(on.leaked+off.leaked == 0, "no provider 429 reaches a client: %d (on), %d (off)", on.leaked, off.leaked) && pass
	return []string{fmt.Sprintf("configured (1×%d RPM, %s, 3× load, latency %v, remaining at %s, %v measured): %s — learn_limits on %.1f %% of the quota, off %.1f %%; upstream 429s %.2f %% / %.2f %%",
		*rpm, where(), *latency, *remAt, *duration, passFail(pass), 100*on.used, 100*off.used, 100*on.r429, 100*off.r429)}
}

// figures is what one run measured, for the table.
type figures struct {
	used, r429 float64
	leaked     int
}

func figuresOf(o *result) figures {
	total := o.upstreamOK()
	return figures{used: total / o.quota, r429: o.upstream429() / math.Max(1, total+o.upstream429()), leaked: o.t.leakedAll}
}

func configuredPair(bin, dir string, lat time.Duration, answerTime, quiet bool) (on, off figures) {
	R := *rpm
	name := "acct"
	for _, mode := range []string{"on", "off"} {
		runName := fmt.Sprintf("configured-%s-%v-%s", mode, lat, arrivalOrAnswer(answerTime))
		block := limitsBlock("configured", storeBlock(runName)+account(name, "sk-acct-a", fmt.Sprintf("\t\t\trpm %d\n", R))+"\n\t\tlearn_limits "+mode)
		s := setup{
			name:       runName,
			accounts:   map[string]string{"sk-acct-a": "acct"},
			latency:    lat,
			answerTime: answerTime,
			quiet:      quiet,
		}
		s.gateways, s.perGateway = instances(block, 3*float64(R))
		s.title = fmt.Sprintf("configured, learn_limits %s: one account configured at its quota of %d RPM, %s offered %.0f/min in all from %d keys each, latency %v, remaining at %s",
			mode, R, where(), 3*float64(R), *keys, lat, arrivalOrAnswer(answerTime))
		o, skipped := run(bin, dir, s)
		if skipped != "" {
			check(fmt.Errorf("%s: %s", s.name, skipped))
		}
		if !quiet {
			report(o)
		}
		if mode == "on" {
			on = figuresOf(o)
		} else {
			off = figuresOf(o)
		}
	}
	return on, off
}

// learnedPair is the learned scenario (one account only its headers tell,
// two gateway processes with no shared store, 3× offered in all) with
// learn_limits on and off.
func learnedPair(bin, dir string, lat time.Duration, answerTime bool) (on, off figures) {
	R := *rpm
	for _, mode := range []string{"on", "off"} {
		block := limitsBlock("learned", account("acct", "sk-acct-a", "")+"\n\t\tlearn_limits "+mode)
		s := setup{
			name:       fmt.Sprintf("learned-%s-%v-%s", mode, lat, arrivalOrAnswer(answerTime)),
			accounts:   map[string]string{"sk-acct-a": "acct"},
			gateways:   []string{block, block},
			perGateway: 1.5 * float64(R),
			latency:    lat,
			answerTime: answerTime,
			quiet:      true,
		}
		o, skipped := run(bin, dir, s)
		if skipped != "" {
			check(fmt.Errorf("%s: %s", s.name, skipped))
		}
		if mode == "on" {
			on = figuresOf(o)
		} else {
			off = figuresOf(o)
		}
	}
	return on, off
}

// latencyTable runs every latency × remaining at arrival/answer ×
// {configured, learned}, each with learn_limits on and off, -parallel at a
// time (each run has its own provider and Caddy children), and prints one
// Markdown table with the checks of SPEC's rule.
func latencyTable(bin, dir string, latencies []time.Duration) {
	type cell struct {
		kind       string // configured or learned
		lat        time.Duration
		answerTime bool
		on, off    figures
	}
	var cells []*cell
	for _, kind := range []string{"configured", "learned"} {
		for _, answerTime := range []bool{false, true} {
			for _, lat := range latencies {
				cells = append(cells, &cell{kind: kind, lat: lat, answerTime: answerTime})
			}
		}
	}
	n := *parallel
	if n == 0 {
		n = len(cells)
	}
	fmt.Printf("latency table: %d cells of two runs each, %d at a time; %d RPM, 3× offered, %v measured after a warm-up of the drain time + the latency + 5 s ...\n",
		len(cells), n, *rpm, *duration)
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, c := range cells {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if c.kind == "configured" {
				c.on, c.off = configuredPair(bin, dir, c.lat, c.answerTime, true)
			} else {
				c.on, c.off = learnedPair(bin, dir, c.lat, c.answerTime)
			}
			fmt.Printf("  done: %s, latency %v, remaining at %s\n", c.kind, c.lat, arrivalOrAnswer(c.answerTime))
		}()
	}
	wg.Wait()
	fmt.Println("\n| account | remaining taken at | latency | quota used, learning on | learning off | upstream 429s, on | off | provider 429s reaching clients (on / off) | check |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	all := true
	for _, c := range cells {
		var ok bool
		switch c.kind {
		case "configured":
			// SPEC: never below learning off; the issue: ≥ 97 %, within a point of off.
			ok = c.on.used >= 0.97 && c.on.used >= c.off.used-0.01 && c.on.leaked == 0
		default:
			// Two gateways with no store: ≥ 90 %, ≤ 2 % upstream 429s.
			ok = c.on.used >= 0.90 && c.on.r429 <= 0.02 && c.on.leaked == 0
		}
		all = all && ok
		label := "configured at its quota, 1 gateway"
		if c.kind == "learned" {
			label = "learned only, 2 gateways, no store"
		}
		fmt.Printf("| %s | %s | %v | %.1f %% | %.1f %% | %.2f %% | %.2f %% | %d / %d | %s |\n",
			label, arrivalOrAnswer(c.answerTime), c.lat, 100*c.on.used, 100*c.off.used, 100*c.on.r429, 100*c.off.r429, c.on.leaked, c.off.leaked, passFail(ok))
	}
	fmt.Printf("\nchecks: configured ≥ 97 %% used and no more than 1 point below learning off; learned ≥ 90 %% used and ≤ 2 %% upstream 429s; no provider 429 reaches a client with learning on: %s\n", passFail(all))
}

func arrivalOrAnswer(answerTime bool) string {
	if answerTime {
		return "answer"
	}
	return "arrival"
}

func parseLatencies(s string) []time.Duration {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d < 0 {
			check(fmt.Errorf("-latencies: %q is not a duration ≥ 0", f))
		}
		out = append(out, d)
	}
	return out
}
