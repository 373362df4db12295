package llmratelimit

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// TestPooledBufferReturnsOnlyAfterEveryReaderCloses: the handler's
// reference and each reader's keep the buffer; a reader read after its
// Close reads nothing, and GetBody after the buffer went back fails.
func TestPooledBufferReturnsOnlyAfterEveryReaderCloses(t *testing.T) {
	var bb bodyBuf
	body := bb.take(100)
	copy(body, strings.Repeat("a", 100))
	if !bb.holds(body) || !bb.holds(body[10:]) || bb.holds(make([]byte, 1)) {
		t.Fatal("holds: wrong about which bytes lie in the buffer")
	}
	var r1 replayBody
	if err := newReplay(&r1, body, &bb); err != nil {
		t.Fatal(err)
	}
	r2, err := r1.fresh()
	if err != nil {
		t.Fatal(err)
	}
	if got := bb.refs.Load(); got != 3 {
		t.Fatalf("refs = %d, want 3 (the handler and two readers)", got)
	}
	bb.release() // the handler is done
	if b, _ := io.ReadAll(r2); len(b) != 100 {
		t.Fatalf("an open reader read %d bytes, want 100", len(b))
	}
	_ = r1.Close()
	_ = r1.Close() // twice: one reference only
	if got := bb.refs.Load(); got != 1 {
		t.Fatalf("refs = %d after the handler and one reader, want 1", got)
	}
	if n, err := r1.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("a closed reader read %d bytes (%v), want none", n, err)
	}
	_ = r2.Close()
	if got := bb.refs.Load(); got != 0 {
		t.Fatalf("refs = %d after everything closed, want 0 (given back)", got)
	}
	if _, err := r1.fresh(); err == nil {
		t.Fatal("GetBody after the buffer went back handed out a reader")
	}
	var w bytes.Buffer
	if n, _ := r2.(*replayBody).WriteTo(&w); n != 0 {
		t.Fatalf("WriteTo of a closed reader wrote %d bytes", n)
	}
}

// TestPooledBodiesReachTheUpstreamIntact runs many requests at once, with
// bodies of one pool class, through a real Caddy to an upstream that
// answers half of the first attempts with a 429 before reading the body
// (the transport may then write and close the body after the answer), and
// checks that every body the upstream reads is exactly the one its client
// sent: a buffer is never reused while a transport can still read it.
func TestPooledBodiesReachTheUpstreamIntact(t *testing.T) {
	mustLoad(t, "zone body_pool\nrpm 100000000\ntpm 100000000000\nretry {\n\tbase 1ms\n}")
	var mu sync.Mutex
	attempts := map[string]int{}
	var bad []string
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Body-Id")
		mu.Lock()
		attempts[id]++
		n := attempts[id]
		mu.Unlock()
		if n == 1 && (id[len(id)-1]-'0')%2 == 1 { // half of the first attempts
			w.Header().Set("retry-after-ms", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		b, _ := io.ReadAll(r.Body)
		if string(b) != poolBody(id) {
			mu.Lock()
			bad = append(bad, fmt.Sprintf("%s: got %d bytes %.60q…", id, len(b), b))
			mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"ok","usage":{"prompt_tokens":7,"completion_tokens":3}}`)
	})
	const workers, each = 8, 40
	errs := make(chan error, workers*each)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("%d-%d", g, i)
				req, err := http.NewRequest(http.MethodPost, "http://"+gateway+"/v1/chat/completions", strings.NewReader(poolBody(id)))
				if err != nil {
					errs <- err
					return
				}
				req.Header.Set("Authorization", "Bearer sk-pool-"+id)
				req.Header.Set("X-Body-Id", id)
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("%s: status %d", id, resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, b := range bad {
		t.Error("the upstream read another body than the client sent:", b)
	}
	retried := 0
	for _, n := range attempts {
		if n > 1 {
			retried++
		}
	}
	if retried != workers*each/2 {
		t.Errorf("%d requests were sent twice, want %d: the early answers did not happen", retried, workers*each/2)
	}
}

// poolBody is a chat body of 5–9 KB (one pool class) that names its id
// all through, so that a body mixed with another shows.
func poolBody(id string) string {
	n := 5000 + len(id)*400
	text := strings.Repeat(id+" ", n/(len(id)+1))
	return `{"model":"gpt-4o","max_tokens":16,"messages":[{"role":"user","content":"` + text + `"}]}`
}
