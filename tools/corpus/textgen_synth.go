package main

// Synthetic text generators: seeded, from a fixed word list and a fixed time
// origin, for the kinds no fixed file holds (base64, hex and UUIDs, digits
// and CSV, log lines, letter runs).

import (
	"encoding/base64"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"time"
)

var words = strings.Fields(`
time person year way day thing man world life hand part child eye woman place
work week case point government company number group problem fact be have do
say get make go know take see come think look want give use find tell ask
seem feel try leave call good new first last long great little own other old
right big high different small large next early young important few public bad
same able to of in for on with at by from up about into over after beneath
under above the and a that I it not he as you this but his they her she or an
will my one all would there their what so out if who which me when can like
no just him people your some could them than then now only its also back two
how our well even because any these most us river mountain garden window
kitchen pencil orange silver thunder meadow harbor lantern compass violin
quartz ember glacier canyon falcon willow copper marble velvet prairie
cathedral tunnel beacon orbit vector kernel buffer socket packet cluster shard
replica ledger invoice payload session gateway router cursor token quota
bucket window budget latency throughput request response header channel
stream worker thread mutex signal handler module plugin schema record column
index query filter sort merge batch commit branch release deploy rollback
`)

func randWord(r *rand.Rand) string { return words[r.Intn(len(words))] }

func title(w string) string {
	if w == "" {
		return w
	}
	return strings.ToUpper(w[:1]) + w[1:]
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Intn(256))
	}
	return b
}

func randHex(r *rand.Rand, n int) string {
	const h = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = h[r.Intn(16)]
	}
	return string(b)
}

// randDigits returns n random decimal digits.
func randDigits(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('0' + r.Intn(10))
	}
	return string(b)
}

// grid writes lines of cols space-separated cells, each from cell, until b
// holds at least n bytes.
func grid(b *strings.Builder, n, cols int, cell func() string) {
	for b.Len() < n {
		for i := range cols {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(cell())
		}
		b.WriteByte('\n')
	}
}

func randUUID(r *rand.Rand) string {
	b := randBytes(r, 16)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func randIP(r *rand.Rand) string {
	switch r.Intn(4) {
	case 0:
		return fmt.Sprintf("10.%d.%d.%d", r.Intn(256), r.Intn(256), 1+r.Intn(254))
	case 1:
		return fmt.Sprintf("192.168.%d.%d", r.Intn(256), 1+r.Intn(254))
	case 2:
		return fmt.Sprintf("2001:db8:%x:%x::%x", r.Intn(65536), r.Intn(65536), 1+r.Intn(65535))
	}
	return fmt.Sprintf("%d.%d.%d.%d", 1+r.Intn(223), r.Intn(256), r.Intn(256), 1+r.Intn(254))
}

func randPath(r *rand.Rand) string {
	var b strings.Builder
	for range 1 + r.Intn(4) {
		b.WriteString("/")
		b.WriteString(randWord(r))
	}
	if r.Intn(3) == 0 {
		fmt.Fprintf(&b, "/%d", r.Intn(100000))
	}
	if r.Intn(4) == 0 {
		fmt.Fprintf(&b, "?%s=%d&%s=%s", randWord(r), r.Intn(100), randWord(r), randWord(r))
	}
	return b.String()
}

func randFile(r *rand.Rand) string {
	exts := []string{".go", ".c", ".h", ".json", ".txt", ".tar.gz", ".png", ".so", ".py", ".md"}
	return strings.Join([]string{randWord(r), randWord(r), randWord(r) + "_" + randWord(r) + exts[r.Intn(len(exts))]}, "/")
}

// baseTime is the fixed origin of every synthetic timestamp.
var baseTime = time.Date(2025, time.March, 12, 14, 3, 11, 0, time.UTC)

func wrap(s string, width int) string {
	var b strings.Builder
	for len(s) > width {
		b.WriteString(s[:width])
		b.WriteByte('\n')
		s = s[width:]
	}
	b.WriteString(s)
	return b.String()
}

func genBase64(r *rand.Rand, n int) (string, string) {
	switch r.Intn(5) {
	case 0:
		s := base64.StdEncoding.EncodeToString(randBytes(r, n*3/4+3))
		return s[:n/4*4], "random bytes, base64 (one line)"
	case 1:
		s := base64.StdEncoding.EncodeToString(randBytes(r, n*3/4+80))
		return wrap(s, 76), "random bytes, base64 (MIME, 76 columns)"
	case 2:
		var b strings.Builder
		for b.Len() < n {
			l := 600 + r.Intn(1200)
			fmt.Fprintf(&b, "-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n",
				wrap(base64.StdEncoding.EncodeToString(randBytes(r, l)), 64))
		}
		return b.String(), "random bytes, PEM blocks"
	case 3:
		var b strings.Builder
		enc := base64.RawURLEncoding
		for b.Len() < n {
			h := fmt.Sprintf(`{"alg":"RS256","typ":"JWT","kid":"%s"}`, randHex(r, 16))
			t := baseTime.Add(time.Duration(r.Intn(1e6)) * time.Second).Unix()
			p := fmt.Sprintf(`{"sub":"%s","iss":"https://auth.example.com/","aud":"%s","iat":%d,"exp":%d,"scope":"%s %s"}`,
				randUUID(r), randWord(r), t, t+3600, randWord(r), randWord(r))
			fmt.Fprintf(&b, "%s.%s.%s\n", enc.EncodeToString([]byte(h)), enc.EncodeToString([]byte(p)),
				enc.EncodeToString(randBytes(r, 256)))
		}
		return b.String(), "JWT-like base64url tokens"
	default:
		s := base64.StdEncoding.EncodeToString(randBytes(r, n*3/4+3))
		return "data:application/octet-stream;base64," + s, "random bytes, base64 data URI"
	}
}

func genHex(r *rand.Rand, n int) (string, string) {
	var b strings.Builder
	switch r.Intn(6) {
	case 0:
		for b.Len() < n {
			b.WriteString(randUUID(r))
			b.WriteByte('\n')
		}
		return b.String(), "UUID v4 list"
	case 1:
		for b.Len() < n {
			fmt.Fprintf(&b, "%s  %s\n", randHex(r, 64), randFile(r))
		}
		return b.String(), "sha256sum listing"
	case 2:
		data := randBytes(r, n/4+16)
		for off := 0; b.Len() < n && off+16 <= len(data); off += 16 {
			line := data[off : off+16]
			fmt.Fprintf(&b, "%08x  ", off)
			for i, c := range line {
				fmt.Fprintf(&b, "%02x ", c)
				if i == 7 {
					b.WriteByte(' ')
				}
			}
			b.WriteString(" |")
			for _, c := range line {
				if c >= 0x20 && c < 0x7f {
					b.WriteByte(c)
				} else {
					b.WriteByte('.')
				}
			}
			b.WriteString("|\n")
		}
		return b.String(), "hexdump -C"
	case 3:
		grid(&b, n, 12, func() string { return fmt.Sprintf("0x%02x,", r.Intn(256)) })
		return b.String(), "C byte array in hex"
	case 4:
		return randHex(r, n), "one long hex string"
	default:
		for b.Len() < n {
			fmt.Fprintf(&b, "%s,%s,%s\n", randUUID(r), randHex(r, 24), randHex(r, 40))
		}
		return b.String(), "UUID, object-id and SHA-1 table"
	}
}

func genDigits(r *rand.Rand, n int) (string, string) {
	var b strings.Builder
	switch r.Intn(5) {
	case 0:
		b.WriteString("id,timestamp,sensor,temperature,humidity,pressure,lat,lon\n")
		t := baseTime.Unix()
		for i := 1; b.Len() < n; i++ {
			t += int64(1 + r.Intn(60))
			fmt.Fprintf(&b, "%d,%d,%d,%.2f,%.1f,%.2f,%.6f,%.6f\n", 100000+i, t, 1+r.Intn(64),
				-10+40*r.Float64(), 100*r.Float64(), 950+100*r.Float64(), -90+180*r.Float64(), -180+360*r.Float64())
		}
		return b.String(), "sensor CSV (numeric)"
	case 1:
		grid(&b, n, 6, func() string { return randDigits(r, 10) })
		return b.String(), "random digits in groups of ten"
	case 2:
		for b.Len() < n {
			b.WriteByte(byte('0' + r.Intn(10)))
		}
		return b.String(), "one unbroken run of digits"
	case 3:
		cols := 8 + r.Intn(12)
		grid(&b, n, cols, func() string { return strconv.Itoa(r.Intn(1000) - r.Intn(300)) })
		return b.String(), "integer matrix"
	default:
		b.WriteString("date,open,high,low,close,volume\n")
		d := baseTime
		p := 100 + 400*r.Float64()
		for b.Len() < n {
			o := p * (1 + 0.02*(r.Float64()-0.5))
			c := o * (1 + 0.04*(r.Float64()-0.5))
			fmt.Fprintf(&b, "%s,%.2f,%.2f,%.2f,%.2f,%d\n", d.Format("2006-01-02"), o, max(o, c)*1.01, min(o, c)*0.99, c, 100000+r.Intn(9000000))
			p = c
			d = d.AddDate(0, 0, 1)
		}
		return b.String(), "daily price CSV"
	}
}

var (
	levels   = []string{"DEBUG", "INFO", "INFO", "INFO", "WARN", "ERROR"}
	methods  = []string{"GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH"}
	statuses = []int{200, 200, 200, 201, 204, 301, 304, 400, 401, 403, 404, 429, 500, 502, 503}
	agents   = []string{
		"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
		"curl/8.5.0", "Go-http-client/2.0", "python-requests/2.32.3", "okhttp/4.12.0",
	}
	services = []string{"api-gateway", "billing", "auth", "search", "ingest", "scheduler", "frontend"}
	msgs     = []string{"request completed", "cache miss", "retrying upstream call", "connection reset by peer",
		"slow query", "token bucket exhausted", "user logged in", "payload too large", "context deadline exceeded",
		"worker started", "config reloaded", "health check failed", "rate limit exceeded"}
)

func genLogs(r *rand.Rand, n int) (string, string) {
	var b strings.Builder
	t := baseTime.Add(time.Duration(r.Intn(86400)) * time.Second)
	step := func() { t = t.Add(time.Duration(r.Intn(2500)) * time.Millisecond) }
	switch r.Intn(5) {
	case 0:
		for b.Len() < n {
			step()
			fmt.Fprintf(&b, "%s - - [%s] \"%s %s HTTP/1.1\" %d %d \"-\" \"%s\"\n", randIP(r), t.Format("02/Jan/2006:15:04:05 -0700"),
				methods[r.Intn(len(methods))], randPath(r), statuses[r.Intn(len(statuses))], r.Intn(60000), agents[r.Intn(len(agents))])
		}
		return b.String(), "access log (combined format)"
	case 1:
		hosts := []string{"web-01", "web-02", "db-01", "lb-03"}
		for b.Len() < n {
			step()
			host := hosts[r.Intn(len(hosts))]
			switch r.Intn(3) {
			case 0:
				fmt.Fprintf(&b, "%s %s sshd[%d]: Accepted publickey for %s from %s port %d ssh2: ED25519 SHA256:%s\n",
					t.Format(time.Stamp), host, 1000+r.Intn(60000), randWord(r), randIP(r), 1024+r.Intn(64000),
					base64.RawStdEncoding.EncodeToString(randBytes(r, 32)))
			case 1:
				fmt.Fprintf(&b, "%s %s kernel: [%d.%06d] TCP: request_sock_TCP: Possible SYN flooding on port %d. Sending cookies.\n",
					t.Format(time.Stamp), host, r.Intn(900000), r.Intn(1000000), []int{80, 443, 8080}[r.Intn(3)])
			default:
				fmt.Fprintf(&b, "%s %s systemd[1]: Started %s-%s.service - %s %s.\n", t.Format(time.Stamp), host,
					randWord(r), randWord(r), randWord(r), randWord(r))
			}
		}
		return b.String(), "syslog"
	case 2:
		for b.Len() < n {
			step()
			fmt.Fprintf(&b, "ts=%s level=%s service=%s msg=%q method=%s path=%s status=%d duration_ms=%.3f request_id=%s remote=%s\n",
				t.Format("2006-01-02T15:04:05.000Z07:00"), strings.ToLower(levels[r.Intn(len(levels))]), services[r.Intn(len(services))],
				msgs[r.Intn(len(msgs))], methods[r.Intn(len(methods))], randPath(r), statuses[r.Intn(len(statuses))],
				1000*r.Float64()*r.Float64(), randHex(r, 16), randIP(r))
		}
		return b.String(), "logfmt"
	case 3:
		for b.Len() < n {
			step()
			fmt.Fprintf(&b, `{"time":"%s","level":"%s","logger":"%s","msg":"%s","trace_id":"%s","span_id":"%s","latency":%.4f,"status":%d}`+"\n",
				t.Format(time.RFC3339Nano), levels[r.Intn(len(levels))], services[r.Intn(len(services))], msgs[r.Intn(len(msgs))],
				randHex(r, 32), randHex(r, 16), r.Float64(), statuses[r.Intn(len(statuses))])
		}
		return b.String(), "JSON log lines"
	default:
		for b.Len() < n {
			step()
			lv := levels[r.Intn(len(levels))]
			fmt.Fprintf(&b, "%s [%s] %s: %s (peer=%s, attempt=%d, elapsed=%s)\n", t.Format("2006/01/02 15:04:05.000000"), lv,
				services[r.Intn(len(services))], msgs[r.Intn(len(msgs))], randIP(r), 1+r.Intn(5),
				time.Duration(r.Intn(5e9)).Round(time.Microsecond))
			if lv == "ERROR" && r.Intn(2) == 0 {
				fmt.Fprintf(&b, "goroutine %d [running]:\nmain.(*%s).%s(0xc%09x)\n\t/srv/app/%s.go:%d +0x%x\n", 1+r.Intn(900),
					title(randWord(r)), title(randWord(r)), r.Intn(1<<30), randWord(r), 10+r.Intn(900), r.Intn(4096))
			}
		}
		return b.String(), "Go log with stack traces"
	}
}

func genLetters(r *rand.Rand, n int) (string, string) {
	var b strings.Builder
	lineEvery := 0
	if r.Intn(2) == 0 {
		lineEvery = 60 + r.Intn(60)
	}
	col := 0
	put := func(s string) {
		b.WriteString(s)
		col += len(s)
		if lineEvery > 0 && col >= lineEvery {
			b.WriteByte('\n')
			col = 0
		}
	}
	var label string
	switch r.Intn(7) {
	case 0:
		label = "words concatenated without spaces"
		for b.Len() < n {
			put(randWord(r))
		}
	case 1:
		label = "random lowercase letters"
		for b.Len() < n {
			put(string(rune('a' + r.Intn(26))))
		}
	case 2:
		label = "DNA (ACGT)"
		lineEvery = 60
		for b.Len() < n {
			put(string("ACGT"[r.Intn(4)]))
		}
	case 3:
		label = "CamelCase words concatenated"
		for b.Len() < n {
			w := randWord(r)
			put(strings.ToUpper(w[:1]) + w[1:])
		}
	case 4:
		label = "protein sequence letters"
		lineEvery = 70
		const aa = "ACDEFGHIKLMNPQRSTVWY"
		for b.Len() < n {
			put(string(aa[r.Intn(len(aa))]))
		}
	case 5:
		label = "repeated letter patterns"
		for b.Len() < n {
			unit := ""
			for range 1 + r.Intn(3) {
				unit += string(rune('a' + r.Intn(26)))
			}
			put(strings.Repeat(unit, 5+r.Intn(40)))
		}
	default:
		label = "random mixed-case letters"
		const al = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		for b.Len() < n {
			put(string(al[r.Intn(len(al))]))
		}
	}
	return b.String(), label
}
