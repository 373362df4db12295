package llmratelimit

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/llmgate/caddy-llm-ratelimit/internal/jsonscan"
)

// usageTailSize bounds what the handler keeps of a response to find its
// usage: providers put the usage object at the end of a JSON response (and
// of a stream's data line), so the last few KiB are enough, and the
// response itself streams through.
const usageTailSize = 8 << 10

// maxHeldEvent bounds one SSE event held back while the handler decides
// whether it is the usage-only chunk it must strip; a longer event is let
// through as it is.
const maxHeldEvent = 64 << 10

// How the writer reads a response.
const (
	readNothing = iota
	readJSON    // keep the tail, find the usage object at the end
	readStream  // read the usage from each event as it passes (the dialect's framing)
)

// usageWriter passes the response through, except that it sets the
// x-ratelimit-* headers when the status is written (replacing the
// upstream's), records the status, and reads the usage of a successful
// response as it passes: from the tail of a JSON body, or from the data
// lines of an event stream. With strip, it removes from a stream the
// usage-only chunk that the handler asked for on the client's behalf.
type usageWriter struct {
	http.ResponseWriter
	h       *Handler
	d       dialect  // reads the usage; nil: nothing to read
	t       ticket   // the request's hold, settled once the usage is known
	u       usage    // the usage it settles to (here: a local would escape through the hold)
	qs      quotaSet // the rate-limit headers as of the admission
	hd      dialect  // the request's dialect, whose family the headers take
	strip   bool     // the handler injected include_usage
	status  int
	mode    uint8
	framing framing // how a stream's events are cut (readStream)
	tail    []byte  // JSON: the body's tail; a stream: the current line's tail
	held    []byte  // a stream with strip (SSE): the event being held back
	scanned int     // how much of held has been searched for an event end
	acc     usageAcc
	length  int64 // the answer's Content-Length; -1 when unknown
	written int64
	ended   bool // the end of a stream ([DONE], message_stop, response.completed) was read
}

func (uw *usageWriter) WriteHeader(code int) {
	if uw.status != 0 {
		return
	}
	if code < 200 {
		uw.ResponseWriter.WriteHeader(code)
		return
	}
	uw.status = code
	// What the provider's own rate-limit headers say is learned before the
	// handler's replace them.
	at := now()
	uw.t.learn(at.UnixNano(), code, uw.Header())
	if uw.h.headersOn {
		setQuotaHeadersAt(uw.Header(), uw.hd, uw.qs, at)
	}
	uw.length = -1
	if cl := uw.Header().Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil {
			uw.length = n
		}
	}
	if code >= 200 && code <= 299 && uw.d != nil {
		switch mt, f := mediaType(uw.Header().Get("Content-Type")), uw.d.spec().stream; {
		case mt == "application/json":
			uw.mode = readJSON
		case mt == f.mediaType():
			uw.mode, uw.framing = readStream, f
		}
	}
	uw.ResponseWriter.WriteHeader(code)
}

func (uw *usageWriter) Write(p []byte) (int, error) {
	if uw.status == 0 {
		uw.WriteHeader(http.StatusOK)
	}
	// The last bytes of an answer whose length is known: settle before
	// they go out, for a stream that has no end event too.
	last := uw.length >= 0 && uw.written+int64(len(p)) >= uw.length
	uw.written += int64(len(p))
	switch {
	case uw.mode == readJSON:
		uw.keep(p)
		if last {
			uw.settle()
		}
	case uw.mode == readStream && uw.strip:
		return uw.writeEvents(p, last)
	case uw.mode == readStream:
		uw.scanLines(p)
		if uw.ended || last {
			uw.settle()
		}
	}
	return uw.ResponseWriter.Write(p)
}

// settle settles the request's ticket from the answer, once: a successful
// answer is settled as soon as its end is seen, before its last bytes go
// out, so that a client that sends its next request the moment it has read
// this one sees the settled buckets. A final non-2xx gives every token back
// (the request still counts); a success without usage keeps its
// reservation.
func (uw *usageWriter) settle() {
	if uw.t.done {
		return
	}
	if uw.mode == readStream && len(uw.tail) > 0 && !uw.ended {
		uw.line(uw.tail) // a last line without its line end
	}
	nowNs := now().UnixNano()
	var ok bool
	switch uw.u, ok = uw.usage(); {
	case uw.status < 200 || uw.status > 299:
		uw.t.finish(nowNs, nil, true)
	case ok:
		uw.h.zone.m.settled(uw.t.a.d.in, uw.u)
		uw.t.finish(nowNs, &uw.u, false)
	default:
		uw.t.finish(nowNs, nil, false)
	}
}

// abandon finishes a request that ends without settle (a panic such as
// http.ErrAbortHandler): the slot is freed, the reservation stands.
func (uw *usageWriter) abandon() {
	if !uw.t.done {
		uw.t.finish(now().UnixNano(), nil, false)
	}
}

// mediaType is a Content-Type without its parameters, lower-cased only
// when it has to be.
func mediaType(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	for i := 0; i < len(ct); i++ {
		if 'A' <= ct[i] && ct[i] <= 'Z' {
			return strings.ToLower(ct)
		}
	}
	return ct
}

// keep appends p to the tail, dropping the oldest bytes past usageTailSize.
func (uw *usageWriter) keep(p []byte) {
	if uw.tail == nil {
		uw.tail = tailPool.Get().(*[usageTailSize]byte)[:0]
	}
	if len(p) >= usageTailSize {
		uw.tail = append(uw.tail[:0], p[len(p)-usageTailSize:]...)
		return
	}
	if over := len(uw.tail) + len(p) - usageTailSize; over > 0 {
		uw.tail = append(uw.tail[:0], uw.tail[over:]...)
	}
	uw.tail = append(uw.tail, p...)
}

// scanLines reads the usage from every complete data line of a stream.
// Only the tail of a long line is kept: the usage is at its end.
func (uw *usageWriter) scanLines(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			uw.keep(p)
			return
		}
		uw.keep(p[:i])
		uw.line(uw.tail)
		uw.tail = uw.tail[:0]
		p = p[i+1:]
	}
}

// line reads one line of a stream, by the dialect's framing: an SSE data
// line's data, or an NDJSON line, is one event. An event that ends the
// stream sets ended.
func (uw *usageWriter) line(l []byte) {
	var data []byte
	switch uw.framing {
	case framingNDJSON:
		data = bytes.TrimSpace(l)
	default:
		data, _ = jsonscan.SSEData(l)
	}
	if len(data) > 0 && streamEvent(uw.d, data, &uw.acc) {
		uw.ended = true
	}
}

// writeEvents holds back each event until it is complete, drops the
// usage-only chunk the client did not ask for, and passes every other
// event on unchanged.
func (uw *usageWriter) writeEvents(p []byte, last bool) (int, error) {
	uw.held = append(uw.held, p...)
	start := 0
	for {
		end := eventEnd(uw.held[start:], max(uw.scanned-start, 0))
		if end < 0 {
			break
		}
		ev := uw.held[start : start+end]
		uw.scanLines(ev)
		if uw.ended {
			uw.settle()
		}
		if !isAddedUsageEvent(uw.d, ev) {
			if _, err := uw.ResponseWriter.Write(ev); err != nil {
				return 0, err
			}
		}
		start += end
	}
	uw.held = append(uw.held[:0], uw.held[start:]...) // one shift per write
	uw.scanned = len(uw.held)                         // searched: no event end in it
	if len(uw.held) > maxHeldEvent && !last {
		// Not an event stream we understand: let it through as it is.
		uw.strip = false
		return len(p), uw.flushHeld(false)
	}
	if last {
		return len(p), uw.flushHeld(true)
	}
	return len(p), nil
}

// flushHeld writes out what is held back (the end of a stream that did not
// end with a blank line); at the answer's end it settles first.
func (uw *usageWriter) flushHeld(end bool) error {
	if len(uw.held) == 0 {
		return nil
	}
	uw.scanLines(uw.held)
	if end {
		uw.settle()
	}
	_, err := uw.ResponseWriter.Write(uw.held)
	uw.held, uw.scanned = uw.held[:0], 0
	return err
}

// eventEnd is the index just past the blank line that ends the first event
// in b, or -1. b[:from] is known to hold no event end, so a long event
// arriving in many small writes is searched once, not once per write.
func eventEnd(b []byte, from int) int {
	for i := max(from-2, 0); i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		k := i + j + 1 // start of the next line
		if k < len(b) && b[k] == '\n' {
			return k + 1
		}
		if k+1 < len(b) && b[k] == '\r' && b[k+1] == '\n' {
			return k + 2
		}
		i = k
	}
	return -1
}

// tailPool holds the tails' buffers: a tail never grows past usageTailSize.
var tailPool = sync.Pool{New: func() any { return new([usageTailSize]byte) }}

// release gives the writer's buffers back; it is not used afterwards.
func (uw *usageWriter) release() {
	if cap(uw.tail) == usageTailSize {
		tailPool.Put((*[usageTailSize]byte)(uw.tail[:usageTailSize]))
	}
	uw.tail = nil
}

// Unwrap lets http.ResponseController reach Flush and friends.
func (uw *usageWriter) Unwrap() http.ResponseWriter { return uw.ResponseWriter }

// usage is what the response said it cost, once it has passed, within
// believable bounds.
func (uw *usageWriter) usage() (u usage, ok bool) {
	switch uw.mode {
	case readJSON:
		u, ok = jsonUsage(uw.d, uw.tail)
	case readStream:
		u, ok = streamUsage(uw.d, &uw.acc)
	}
	return u.clamped(), ok
}

// lastObjectAfterKey finds the last occurrence of key followed by ':' and a
// JSON object, and returns that object's bytes (strings inside it are
// skipped correctly), or nil.
func lastObjectAfterKey(b, key []byte) []byte {
	for end := len(b); end > 0; {
		i := bytes.LastIndex(b[:end], key)
		if i < 0 {
			return nil
		}
		end = i
		j := jsonscan.SkipSpace(b, i+len(key))
		if j >= len(b) || b[j] != ':' {
			continue
		}
		j = jsonscan.SkipSpace(b, j+1)
		if j >= len(b) || b[j] != '{' {
			continue
		}
		if k := matchBrace(b, j); k > 0 {
			return b[j : k+1]
		}
	}
	return nil
}

// matchBrace returns the index of the '}' closing the '{' at b[i], or -1.
func matchBrace(b []byte, i int) int {
	depth, inString := 0, false
	for ; i < len(b); i++ {
		c := b[i]
		switch {
		case inString:
			if c == '\\' {
				i++
			} else if c == '"' {
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{':
			depth++
		case c == '}':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}
