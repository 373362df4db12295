package llmratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// A test-only events handler module, registered for every test of the
// package: a config subscribes it with the events global option
// (on <event> llm_ratelimit_test_recorder), and the tests read what it was
// given.

func init() {
	caddy.RegisterModule(alertRecorder{})
}

// alertRecorder is the events handler events.handlers.llm_ratelimit_test_recorder:
// it keeps every event it is given in recordedAlerts. With recorderHold
// set it blocks until that channel closes; with recorderFails it fails.
type alertRecorder struct{}

func (alertRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.llm_ratelimit_test_recorder",
		New: func() caddy.Module { return new(alertRecorder) },
	}
}

func (*alertRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the handler's name
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// recordedEvent is an event as a handler sees it.
type recordedEvent struct {
	name, origin string
	data         map[string]any
	cloud        string // the event as a CloudEvent in JSON, as handlers that forward events send it
	expanded     string // placeholders of the event, as exec expands them in its arguments
}

var (
	recordedAlerts struct {
		mu     sync.Mutex
		events []recordedEvent
	}
	recorderHold  atomic.Pointer[chan struct{}]
	recorderFails atomic.Bool
)

// expandedAlert is what the recorder expands with the event's replacer.
const expandedAlert = "{event.name} {event.data.zone} {event.data.key_id} {event.data.percent} {event.data.resets_at}"

func (*alertRecorder) Handle(ctx context.Context, e caddy.Event) error {
	rec := recordedEvent{name: e.Name(), data: maps.Clone(e.Data)}
	if o := e.Origin(); o != nil {
		rec.origin = string(o.CaddyModule().ID)
	}
	cloud, _ := json.Marshal(e.CloudEvent())
	rec.cloud = string(cloud)
	if repl, ok := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		rec.expanded = repl.ReplaceAll(expandedAlert, "")
	}
	recordedAlerts.mu.Lock()
	recordedAlerts.events = append(recordedAlerts.events, rec)
	recordedAlerts.mu.Unlock()
	if hold := recorderHold.Load(); hold != nil {
		<-*hold
	}
	if recorderFails.Load() {
		return errors.New("the recorder fails, as a handler may")
	}
	return nil
}

// alertsOf is the events recorded so far from the named zones, in the
// order they came.
func alertsOf(zoneNames ...string) []recordedEvent {
	recordedAlerts.mu.Lock()
	defer recordedAlerts.mu.Unlock()
	var out []recordedEvent
	for _, e := range recordedAlerts.events {
		if z, _ := e.data["zone"].(string); slices.Contains(zoneNames, z) {
			out = append(out, e)
		}
	}
	return out
}

// waitAlerts waits until the zones have n events, lets a moment pass in
// which a stray one could still arrive (they are emitted from goroutines
// of their own), and returns them: exactly n, or the test fails.
func waitAlerts(t *testing.T, n int, zoneNames ...string) []recordedEvent {
	t.Helper()
	eventually(t, fmt.Sprintf("%d budget alerts from %v", n, zoneNames), func() bool { return len(alertsOf(zoneNames...)) >= n })
	time.Sleep(50 * time.Millisecond)
	got := alertsOf(zoneNames...)
	if len(got) != n {
		t.Fatalf("%d budget alerts from %v, want %d: %v", len(got), zoneNames, n, percentsOf(got))
	}
	return got
}

func percentsOf(events []recordedEvent) []float64 {
	var p []float64
	for _, e := range events {
		v, _ := e.data["percent"].(float64)
		p = append(p, v)
	}
	return p
}

// Interface guards
var (
	_ caddyevents.Handler   = (*alertRecorder)(nil)
	_ caddyfile.Unmarshaler = (*alertRecorder)(nil)
)
