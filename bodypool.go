package llmratelimit

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Request bodies are read into pooled buffers. A buffer goes back to its
// pool only when the handler is done with the request and every reader of
// it that the handler handed out is closed: the transport may read a
// request body, and close it, after RoundTrip returns. A reader that is
// never closed keeps its buffer out of the pool for good (the garbage
// collector takes it), and a reader read after its Close reads nothing:
// a buffer never reaches another request while anything can still read it.

// bodyClasses are the pooled buffer sizes; a larger body gets a buffer of
// its own.
var bodyClasses = [...]int{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

var bodyPools [len(bodyClasses)]sync.Pool // of *[]byte, of its class's size

// bodyBuf is one request's hold on a pooled buffer: refs counts the
// handler and each open reader (and each Read in progress). It lives in
// the request's exchange and is never reused, so a stale reader can never
// take a reference on a later request's buffer.
type bodyBuf struct {
	p     *[]byte // nil: not pooled
	class int
	refs  atomic.Int32
}

// take gets a buffer of at least n bytes; the caller holds the first
// reference.
func (bb *bodyBuf) take(n int) []byte {
	for c, size := range bodyClasses {
		if n > size {
			continue
		}
		p, _ := bodyPools[c].Get().(*[]byte)
		if p == nil {
			b := make([]byte, size)
			p = &b
		}
		bb.p, bb.class = p, c
		bb.refs.Store(1)
		return (*p)[:n]
	}
	return make([]byte, n)
}

// holds tells whether b lies in the pooled buffer.
func (bb *bodyBuf) holds(b []byte) bool {
	if bb.p == nil || cap(b) == 0 {
		return false
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(*bb.p)))
	at := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return at >= start && at < start+uintptr(cap(*bb.p))
}

// acquire takes one more reference, unless the buffer was given back.
func (bb *bodyBuf) acquire() bool {
	for {
		n := bb.refs.Load()
		if n <= 0 {
			return false
		}
		if bb.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference; the last one gives the buffer back.
func (bb *bodyBuf) release() {
	if bb.refs.Add(-1) == 0 {
		bodyPools[bb.class].Put(bb.p)
	}
}

// replayBody is a buffered request body that can hand out fresh copies.
// With buf, it holds a reference on the pooled buffer body lies in until
// it is closed.
type replayBody struct {
	body   []byte
	off    int
	buf    *bodyBuf
	closed atomic.Bool
}

var errBodyGone = errors.New("the request body was already given back")

// newReplay is a reader of body, referencing buf when it is pooled.
func newReplay(rb *replayBody, body []byte, buf *bodyBuf) error {
	rb.body, rb.off, rb.buf = body, 0, nil
	if buf != nil && buf.p != nil {
		if !buf.acquire() {
			return errBodyGone
		}
		rb.buf = buf
	}
	return nil
}

// hold makes sure the buffer stays while the reader reads it: false for
// a reader that was closed (it reads nothing more).
func (rb *replayBody) hold() bool {
	if rb.buf == nil {
		return !rb.closed.Load()
	}
	if !rb.buf.acquire() {
		return false
	}
	if rb.closed.Load() {
		rb.buf.release()
		return false
	}
	return true
}

func (rb *replayBody) let() {
	if rb.buf != nil {
		rb.buf.release()
	}
}

func (rb *replayBody) Read(p []byte) (int, error) {
	if !rb.hold() {
		return 0, io.EOF
	}
	defer rb.let()
	if rb.off >= len(rb.body) {
		return 0, io.EOF
	}
	n := copy(p, rb.body[rb.off:])
	rb.off += n
	return n, nil
}

// WriteTo writes what is left in one call, as bytes.Reader does, which
// io.Copy prefers.
func (rb *replayBody) WriteTo(w io.Writer) (int64, error) {
	if !rb.hold() {
		return 0, nil
	}
	defer rb.let()
	if rb.off >= len(rb.body) {
		return 0, nil
	}
	n, err := w.Write(rb.body[rb.off:])
	rb.off += n
	return int64(n), err
}

// Close gives the reader's reference back, once.
func (rb *replayBody) Close() error {
	if rb.closed.CompareAndSwap(false, true) && rb.buf != nil {
		rb.buf.release()
	}
	return nil
}

// fresh is GetBody: a new reader from the start.
func (rb *replayBody) fresh() (io.ReadCloser, error) {
	n := new(replayBody)
	if err := newReplay(n, rb.body, rb.buf); err != nil {
		return nil, err
	}
	return n, nil
}
