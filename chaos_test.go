package llmratelimit

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReloadUnderLoadLosesNothing runs sustained traffic while the config is
// reloaded 20 times with alternating limits on one address: every request
// gets an answer, none a 5xx, the key's bucket level carries across every
// reload, and the goroutines go back to their baseline.
func TestReloadUnderLoadLosesNothing(t *testing.T) {
	setUpstream(t, noUsage)
	addr := nextGateway()
	cfg := func(tpm int) string {
		return fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n}\nhttp://%s {\n\tllm_ratelimit {\n\t\tzone reload_load\n\t\trpm 1000000\n\t\ttpm %d\n\t}\n\treverse_proxy %s\n}\n",
			testAdmin, addr, tpm, upstream.Listener.Addr())
	}
	if err := load(t, cfg(100000000)); err != nil {
		t.Fatal(err)
	}
	baseline := runtime.NumGoroutine()
	// Keep-alive clients; Go's transport sends a request again only when it
	// never reached a server (a connection closed under it by the old
	// server), which the Idempotency-Key header allows.
	kc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var sent, answered, failed, fiveXX atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				// A connection the old server closed as idle just as this
				// request went out fails at the transport now and then (Go
				// retries only what it knows never left). The client sends
				// it again, as an SDK does: had the first try been served,
				// the bucket check below would count one request too many.
				var resp *http.Response
				var err error
				for try := 0; try < 3; try++ {
					req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/chat/completions", strings.NewReader(chatBody))
					req.Header.Set("Authorization", "Bearer sk-reload-load")
					req.Header.Set("Idempotency-Key", "x")
					if resp, err = kc.Do(req); err == nil {
						break
					}
				}
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				answered.Add(1)
				if resp.StatusCode >= 500 {
					fiveXX.Add(1)
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		if err := load(t, cfg(100000000+i%2)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // let traffic flow between reloads
	}
	close(stop)
	wg.Wait()
	kc.CloseIdleConnections()
	if failed.Load() != 0 || fiveXX.Load() != 0 || answered.Load() != sent.Load() {
		t.Errorf("sent %d, answered %d, failed %d, 5xx %d", sent.Load(), answered.Load(), failed.Load(), fiveXX.Load())
	}
	// The fake clock has not moved: the requests bucket lost exactly one
	// per answered request, across all 20 reloads.
	z := zoneOf(t, "reload_load")
	st, ok := z.keyStats(hashKey("sk-reload-load").id(), now().UnixNano())
	if !ok || st.RPMAvailable == nil || *st.RPMAvailable != 1000000-answered.Load() {
		t.Errorf("rpm_available %v after %d answered requests", st.RPMAvailable, answered.Load())
	}
	// The old configs' reverse_proxy transports keep idle keep-alive
	// connections to the upstream until their idle timeout (Caddy's, not
	// ours): close them, then nothing of the 20 configs may be left.
	upstream.CloseClientConnections()
	eventually(t, fmt.Sprintf("goroutines back to the baseline %d", baseline), func() bool {
		return runtime.NumGoroutine() <= baseline+5
	})
}

// TestCancellationStormLeavesNothingBehind cancels 10,000 requests at four
// points — waiting in the queue, waiting to retry, mid-stream, and before
// the upstream answers — and checks that no slot, waiter or token leaks.
func TestCancellationStormLeavesNothingBehind(t *testing.T) {
	mustLoad(t, "zone storm\nrpm 100000000\ntpm 100000000000\nmax_wait 10000h\nmodel queued {\n\trpm 1\n}")
	clk.setManual(t)
	var arrived atomic.Int64
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.Header.Get("X-Mode") {
		case "retry":
			// No hint: the retry loop backs off (a hint would also close the
			// zone's cooldown gate for every later batch).
			w.WriteHeader(503)
			return
		case "stream":
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
			http.NewResponseController(w).Flush()
			<-r.Context().Done()
			return
		case "queued":
			noUsage(w, r)
			return
		}
		arrived.Add(1)
		<-r.Context().Done()
	})
	z := zoneOf(t, "storm")
	// The one request of the queued key that gets through takes its rpm.
	if r := sendReq(t, stormReq(t, context.Background(), "queued")); r.status != 200 {
		t.Fatalf("first queued-key request: %d", r.status)
	}
	arrived.Store(0)
	modes := []string{"queued", "retry", "stream", "hold"}
	const total, batch = 10000, 250
	for done := 0; done < total; done += batch {
		mode := modes[(done/batch)%len(modes)]
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		ready := make(chan struct{}, batch)
		for i := 0; i < batch; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Do(stormReq(t, ctx, mode))
				if err != nil {
					ready <- struct{}{} // cancelled before an answer
					return
				}
				defer resp.Body.Close()
				if mode == "stream" {
					_, _ = bufio.NewReader(resp.Body).ReadString('\n') // the first event
					ready <- struct{}{}
					<-ctx.Done()
				}
			}()
		}
		switch mode {
		case "queued":
			eventually(t, "the batch to queue", func() bool { return z.queue.length() == batch })
		case "retry":
			eventually(t, "the batch to wait to retry", func() bool { return clk.sleeping() == batch })
		case "stream":
			for i := 0; i < batch; i++ {
				<-ready
			}
		case "hold":
			eventually(t, "the batch at the upstream", func() bool { return arrived.Load() == batch })
		}
		cancel()
		wg.Wait()
		arrived.Store(0)
	}
	eventually(t, "every slot back", func() bool { return z.inFlight() == 0 })
	if n := z.queue.length(); n != 0 {
		t.Errorf("queue length %d after the storm", n)
	}
	// Tokens: refunded for every request cancelled before an answer
	// (queued, retry, hold); kept for streams cut with no usage.
	reservation := stormReservation(t)
	for _, mode := range modes {
		st, ok := z.keyStats(hashKey("sk-storm-"+mode).id(), now().UnixNano())
		if !ok {
			t.Fatalf("no state for %s", mode)
		}
		want := int64(100000000000)
		switch mode {
		case "stream":
			want -= int64(total/len(modes)) * reservation
		case "queued":
			want = 100000000000 // its one admitted request settled to no usage: reservation kept
			want -= reservation
		}
		if st.InFlight != 0 || st.TPMAvailable == nil || *st.TPMAvailable != want {
			t.Errorf("%s: in_flight %d, tpm_available %v, want %d", mode, st.InFlight, st.TPMAvailable, want)
		}
	}
}

func stormReq(t *testing.T, ctx context.Context, mode string) *http.Request {
	body := chatBody
	if mode == "queued" {
		body = strings.Replace(chatBody, `"gpt-4o"`, `"queued"`, 1)
	}
	if mode == "stream" {
		body = strings.Replace(chatBody, `"max_tokens"`, `"stream":true,"stream_options":{"include_usage":true},"max_tokens"`, 1)
	}
	req := newReq(t, "/v1/chat/completions", "sk-storm-"+mode, body).WithContext(ctx)
	req.Header.Set("X-Mode", mode)
	return req
}

// stormReservation is what one chatBody request reserves, read from a
// fresh key's x-ratelimit-remaining-tokens.
func stormReservation(t *testing.T) int64 {
	setUpstream(t, noUsage)
	r := send(t, "/v1/chat/completions", "sk-storm-probe", chatBody)
	rem, err := strconv.ParseInt(r.header.Get("x-ratelimit-remaining-tokens"), 10, 64)
	if err != nil {
		t.Fatalf("probe: %d %v", r.status, r.header)
	}
	return 100000000000 - rem
}
