package llmratelimit

import (
	"bytes"
	"io"
	"net/http"
)

// exchange is everything one request needs from its admission to its
// settle, in one allocation: what was read of it, its usage writer, the
// writer of each attempt, the request headers that accounts change, its
// replayable body, and a few header values. It is never reused: whatever
// still points into it after the request (a header map in an access log,
// a transport closing the body late) keeps it alive.
type exchange struct {
	req   llmRequest
	q     ask      // what the request asks of the admitter
	dec   decision // and what it decided
	spend spendAsk
	uw    usageWriter
	rec   attemptWriter
	saved savedHeaders
	body  replayBody
	// bodyUsed: body was handed out; a later replay gets its own, for the
	// transport may still be reading (or closing) an earlier one.
	bodyUsed bool
	// bb is the pooled buffer the body was read into; the handler holds
	// a reference until done.
	bb bodyBuf
	// forwarded: the next handler got the body (and closes its reader).
	forwarded bool
	vals      [4]string // backing for one-value header slices
	nvals     int
}

// one is a one-value header slice, from the exchange's own backing while
// it lasts. Each is capped at one element, so that an append elsewhere
// copies instead of writing over the next.
func (x *exchange) one(v string) []string {
	if x.nvals < len(x.vals) {
		s := x.vals[x.nvals : x.nvals+1 : x.nvals+1]
		s[0] = v
		x.nvals++
		return s
	}
	return []string{v}
}

// replay gives the buffered body to the next handler: the exchange's own
// reader the first time, a new one after that.
func (x *exchange) replay(r *http.Request, body []byte) {
	rb := &x.body
	if x.bodyUsed {
		rb = new(replayBody)
	}
	x.bodyUsed = true
	var buf *bodyBuf
	if x.bb.holds(body) {
		buf = &x.bb
	}
	// The handler holds its reference until done: this cannot fail.
	_ = newReplay(rb, body, buf)
	restoreBody(r, rb, body)
}

// done ends the handler's hold on the body buffer: a reader the next
// handler never got is closed here.
func (x *exchange) done() {
	if x.bodyUsed && !x.forwarded {
		_ = x.body.Close()
	}
	if x.bb.p != nil {
		x.bb.release()
	}
}

// restoreBody gives the buffered body back for the next handler and for
// every re-send, through rb: Body, ContentLength and GetBody. Expect and
// chunked transfer encoding no longer apply.
func restoreBody(r *http.Request, rb *replayBody, body []byte) {
	r.Body = rb
	r.ContentLength = int64(len(body))
	r.GetBody = rb.fresh
	r.TransferEncoding = nil
	delete(r.Header, "Expect") // the canonical forms: no canonicalizing per request
	delete(r.Header, "Transfer-Encoding")
}

// attemptWriter is what one attempt writes to: it passes the answer
// through to the usage writer, except a retryable status of an attempt
// that is not the last, whose body it keeps in buf instead. As with
// caddyhttp's recorder, the header map is the client's own, and 1xx
// answers always pass.
type attemptWriter struct {
	http.ResponseWriter
	buf      *bytes.Buffer
	p        *retryPolicy
	last     bool // the last attempt: nothing is kept back
	status   int
	wrote    bool // a final status was written
	buffered bool // the answer is kept back, nothing was sent
}

// reset readies the writer for an attempt.
func (a *attemptWriter) reset(w http.ResponseWriter, buf *bytes.Buffer, p *retryPolicy, last bool) {
	*a = attemptWriter{ResponseWriter: w, buf: buf, p: p, last: last}
}

func (a *attemptWriter) WriteHeader(code int) {
	if a.wrote {
		return
	}
	a.status = code
	if code >= 100 && code <= 199 {
		a.ResponseWriter.WriteHeader(code)
		return
	}
	a.wrote = true
	if a.buffered = !a.last && a.p.retryable(code); !a.buffered {
		a.ResponseWriter.WriteHeader(code)
	}
}

func (a *attemptWriter) Write(p []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	if a.buffered {
		return a.buf.Write(p)
	}
	return a.ResponseWriter.Write(p)
}

// FlushError flushes an answer that passes through; a kept-back one, or
// one whose status is not written yet, is not flushed.
func (a *attemptWriter) FlushError() error {
	if !a.wrote || a.buffered {
		return nil
	}
	return http.NewResponseController(a.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the rest (deadlines,
// hijacking).
func (a *attemptWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// Status is the status written, 0 for none.
func (a *attemptWriter) Status() int { return a.status }

// writeKept sends a kept-back answer to the client: its status, then
// its body.
func (a *attemptWriter) writeKept() error {
	if !a.buffered {
		return nil
	}
	a.ResponseWriter.WriteHeader(a.status)
	_, err := io.Copy(a.ResponseWriter, a.buf)
	return err
}
