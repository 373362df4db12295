package llmratelimit

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestUpgradedConnectionPassesThroughTheAttemptWriter: a WebSocket-style
// upgrade (OpenAI's Realtime API) goes through the handler's writers: the
// 101 reaches the client, and reverse_proxy hijacks the connection
// through them and copies both ways.
func TestUpgradedConnectionPassesThroughTheAttemptWriter(t *testing.T) {
	mustLoad(t, "zone upgrade\nrpm 1000")
	setUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("upstream hijack: %v", err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	})
	conn, err := net.Dial("tcp", gateway)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer sk-upgrade\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", gateway)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	fmt.Fprint(conn, "hello over the upgraded connection\n")
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if line != "echo: hello over the upgraded connection\n" {
		t.Fatalf("got %q", line)
	}
}
