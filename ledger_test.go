package llmratelimit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// freePort is a loopback port nobody listens on (a moment ago).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyProcess is this module's Caddy (cmd/caddy) running as a process of
// its own.
type caddyProcess struct {
	t          *testing.T
	bin, conf  string
	admin, gw  string
	cmd        *exec.Cmd
	out        lockedBuffer
	httpClient *http.Client
}

// lockedBuffer is the process's output, written by exec's copier and read
// by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func (p *caddyProcess) start() {
	p.t.Helper()
	p.out.Reset()
	p.cmd = exec.Command(p.bin, "run", "--config", p.conf, "--adapter", "caddyfile")
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("tcp", p.gw); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("caddy did not start:\n%s", p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop asks Caddy to stop through its admin API, as an operator does, and
// waits for the process to end.
func (p *caddyProcess) stop() {
	p.t.Helper()
	resp, err := p.httpClient.Post("http://"+p.admin+"/stop", "", nil)
	if err == nil {
		resp.Body.Close()
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		p.t.Fatalf("caddy did not stop:\n%s", p.out.String())
	}
}

func (p *caddyProcess) get(path string) string {
	p.t.Helper()
	resp, err := p.httpClient.Get("http://" + p.admin + path)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A restart of a real Caddy process keeps the spend: it is saved through
// the configured storage when Caddy stops and loaded when it starts. A
// ledger that cannot be read is moved aside, logged and counted, and Caddy
// starts with no spend.
func TestSpendSurvivesARestartOfCaddyAndACorruptLedgerIsMovedAside(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	up := httptestServer(t, func(w http.ResponseWriter, r *http.Request) { chatCompletion(w, r, 1000, 500) })
	storage := filepath.Join(dir, "storage")
	p := &caddyProcess{t: t, bin: bin, conf: filepath.Join(dir, "Caddyfile"),
		admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), gw: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		httpClient: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	conf := fmt.Sprintf(`{
	admin %s
	auto_https off
	persist_config off
	storage file_system %s
}
http://%s {
	llm_ratelimit {
		zone restart
		calibrate off
		default_price input 1 output 2
		budget 10 daily
	}
	reverse_proxy %s
}
`, p.admin, storage, p.gw, up.Listener.Addr().String())
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	const key = "sk-restart"
	spend := func() float64 {
		var st KeyStats
		body := p.get("/llm_ratelimit/stats/restart/" + hashKey(key).id())
		if err := json.Unmarshal([]byte(body), &st); err != nil || st.SpendUSD == nil {
			return -1
		}
		return *st.SpendUSD
	}
	p.start()
	defer func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_, _ = p.cmd.Process.Wait()
		}
	}()
	for range 3 {
		req, _ := http.NewRequest(http.MethodPost, "http://"+p.gw+"/v1/chat/completions",
			strings.NewReader(`{"model":"gpt-4o","max_tokens":600,"messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := p.httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request: %d", resp.StatusCode)
		}
	}
	want := 3 * (1000*1e-6 + 500*2e-6) // $0.006
	if got := spend(); math.Abs(got-want) > 1e-12 {
		t.Fatalf("spend before the restart: %v, want %v", got, want)
	}
	p.stop()

	ledger := filepath.Join(storage, "llm_ratelimit", "restart", "spend.json")
	if _, err := os.Stat(ledger); err != nil {
		t.Fatalf("no ledger after the stop: %v\n%s", err, p.out.String())
	}
	p.start()
	if got := spend(); math.Abs(got-want) > 1e-12 {
		t.Fatalf("spend after the restart: %v, want %v\n%s", got, want, p.out.String())
	}
	p.stop()

	if err := os.WriteFile(ledger, []byte(`{"version":1,"keys":{"abc`), 0o600); err != nil {
		t.Fatal(err)
	}
	p.start()
	if got := spend(); got != -1 {
		t.Fatalf("spend after a corrupt ledger: %v, want none", got)
	}
	aside, _ := filepath.Glob(ledger + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("the corrupt ledger was not moved aside: %v\n%s", aside, p.out.String())
	}
	if !strings.Contains(p.out.String(), "the spend ledger is corrupt") {
		t.Fatalf("no error logged:\n%s", p.out.String())
	}
	if m := p.get("/metrics"); !strings.Contains(m, `caddy_llm_ratelimit_ledger_errors_total{zone="restart"} 1`) {
		t.Fatalf("ledger_errors_total not counted")
	}
	p.stop()
}
