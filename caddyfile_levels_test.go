package llmratelimit

import (
	"fmt"
	"strings"
	"testing"
)

// TestRejectsBadLinesAtEveryLevel checks that every block of the grammar
// rejects the same mistakes the same way: an unknown subdirective, a
// missing or extra argument, a bad value, a repeat and a block after a
// line that takes none. Each error names the subdirective as its block
// does, shows the bad token, and points at the offending line.
func TestRejectsBadLinesAtEveryLevel(t *testing.T) {
	for _, lv := range []struct {
		name  string
		open  string // lines before the subdirective, from line 3
		close string
		where string // how errors name the block; "" at the top level
		what  string // how errors name the subdirective
		sub   string // a subdirective taking one integer
		good  string
	}{
		{"top level", "", "", "", "max_queue", "max_queue", "5"},
		{"tier", "tier pro {", "}", "tier pro: ", "tier pro: rpm", "rpm", "5"},
		{"model", "model gpt-4o {", "}", "model gpt-4o: ", "model gpt-4o: max_output", "max_output", "5"},
		{"unnamed upstream", "upstream {", "}", "upstream: ", "upstream: priority", "priority", "5"},
		{"named upstream", "upstream eu {", "}", "upstream eu: ", "upstream eu: priority", "priority", "5"},
		{"retry", "retry {", "}", "retry: ", "retry attempts", "attempts", "5"},
		{"store redis", "store redis {\n\taddress x:1", "}", "store redis: ", "store redis timeout", "timeout", "1s"},
	} {
		// The subdirective's line: after the opening lines, which start at
		// Caddyfile:3.
		line := 3
		if lv.open != "" {
			line += strings.Count(lv.open, "\n") + 1
		}
		at := func(n int) string { return fmt.Sprintf("Caddyfile:%d", n) }
		for _, tc := range []struct {
			name  string
			lines string
			want  []string
		}{
			{"unknown subdirective", "burst 5",
				[]string{lv.where + `unknown subdirective "burst"`, at(line)}},
			{"missing argument", lv.sub,
				[]string{lv.what + ": wants one argument", at(line)}},
			{"extra argument", lv.sub + " " + lv.good + " 7",
				[]string{lv.what + `: wants one argument, got more: "7"`, at(line)}},
			{"bad value", lv.sub + " many",
				[]string{lv.what + ": ", `"many"`, at(line)}},
			{"given twice", lv.sub + " " + lv.good + "\n" + lv.sub + " " + lv.good,
				[]string{lv.what + ": given twice", at(line + 1)}},
			{"block after a plain line", lv.sub + " " + lv.good + " {\n\tx 1\n}",
				[]string{lv.what + ": takes no block", at(line)}},
		} {
			t.Run(lv.name+"/"+tc.name, func(t *testing.T) {
				block := tc.lines
				if lv.open != "" {
					block = lv.open + "\n" + indentCaddyfileLines(tc.lines, "\t") + "\n" + lv.close
				}
				wantAdaptError(t, block, tc.want)
			})
		}
	}
}

// wantAdaptError adapts an llm_ratelimit block of lines and wants an
// error that says each of want.
func wantAdaptError(t *testing.T, block string, want []string) {
	t.Helper()
	body := ":8080 {\n\tllm_ratelimit {\n" + indentCaddyfileLines(block, "\t\t") + "\n\t}\n}\n"
	_, err := adaptCaddyfileForTest(body)
	if err == nil {
		t.Fatalf("no error for:\n%s", body)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

// TestRejectsBadStoreLines covers what only the store block has: flags
// that take no argument, a list that must not be empty, and the checks
// made when the block is done.
func TestRejectsBadStoreLines(t *testing.T) {
	for _, tc := range []struct {
		name  string
		block string // lines inside store redis { ... }, from line 4
		want  []string
	}{
		{"tls with an argument", "address x:1\ntls on",
			[]string{`store redis tls: takes no arguments, got "on"`, "Caddyfile:5"}},
		{"cluster with an argument", "address x:1\ncluster yes",
			[]string{`store redis cluster: takes no arguments, got "yes"`, "Caddyfile:5"}},
		{"address without one", "address",
			[]string{"store redis address: want <host:port>...", "Caddyfile:4"}},
		{"unknown subdirective without arguments", "address x:1\nburst",
			[]string{`store redis: unknown subdirective "burst"`, "Caddyfile:5"}},
		{"a tier inside", "address x:1\ntier pro {\n\trpm 1\n}",
			[]string{`store redis: unknown subdirective "tier"`, "Caddyfile:5"}},
		{"url and address", "address x:1\nurl redis://y:2",
			[]string{"store redis: url or address, not both", "Caddyfile:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			block := "store redis {\n" + indentCaddyfileLines(tc.block, "\t") + "\n}"
			wantAdaptError(t, block, tc.want)
		})
	}
}

// TestReadsEveryStoreAndRetryLine checks the values the store and retry
// blocks fill, line by line, next to TestUnmarshalsEachSubdirective's.
func TestReadsEveryStoreAndRetryLine(t *testing.T) {
	body := `:8080 {
	llm_ratelimit {
		store redis {
			address a:1 b:2 c:3
			cluster
			username u
			password "{env.REDIS_PASSWORD}"
			tls
			prefix gw:
			fail open
			timeout 250ms
		}
		retry off
		learn_limits off
		calibrate on
		clamp_max_tokens
		usage_retention off
		key_info
	}
}
`
	out, err := adaptCaddyfileForTest(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		// The adapter sorts the keys.
		`"store":{"redis":{"address":"a:1","addresses":["b:2","c:3"],"cluster":true,"fail":"open","password":"{env.REDIS_PASSWORD}","prefix":"gw:","timeout":250000000,"tls":true,"username":"u"}}`,
		`"retry":{"off":true}`,
		`"learn_limits":false`,
		`"calibrate":true`,
		`"clamp_max_tokens":256`,
		`"usage_retention":-1`,
		`"key_info":"/v1/llm_ratelimit/key"`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, out)
		}
	}
}
