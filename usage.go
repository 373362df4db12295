package llmratelimit

import (
	"bytes"
	"mime"
	"net/http"
)

// usageTailSize bounds what the handler keeps of a response to find its
// usage: providers put the usage object at the end of a JSON response, so
// the last few KiB are enough, and the response itself streams through.
const usageTailSize = 8 << 10

// usageWriter passes the response through untouched, except that it sets
// the x-ratelimit-* headers when the status is written (replacing the
// upstream's), records the status, and keeps the tail of a successful JSON
// response to read its usage.
type usageWriter struct {
	http.ResponseWriter
	h       *Handler
	f       format
	req     quota // x-ratelimit-* as of the admission
	tok     quota
	status  int
	capture bool
	tail    []byte
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
	if uw.h.headersOn {
		setQuotaHeaders(uw.Header(), uw.req, uw.tok)
	}
	if code >= 200 && code <= 299 && uw.f != formatNone {
		mt, _, _ := mime.ParseMediaType(uw.Header().Get("Content-Type"))
		uw.capture = mt == "application/json"
	}
	uw.ResponseWriter.WriteHeader(code)
}

func (uw *usageWriter) Write(p []byte) (int, error) {
	if uw.status == 0 {
		uw.WriteHeader(http.StatusOK)
	}
	if uw.capture {
		uw.keep(p)
	}
	return uw.ResponseWriter.Write(p)
}

// keep appends p to the tail, dropping the oldest bytes past usageTailSize.
func (uw *usageWriter) keep(p []byte) {
	if len(p) >= usageTailSize {
		uw.tail = append(uw.tail[:0], p[len(p)-usageTailSize:]...)
		return
	}
	if over := len(uw.tail) + len(p) - usageTailSize; over > 0 {
		uw.tail = append(uw.tail[:0], uw.tail[over:]...)
	}
	uw.tail = append(uw.tail, p...)
}

// Unwrap lets http.ResponseController reach Flush and friends.
func (uw *usageWriter) Unwrap() http.ResponseWriter { return uw.ResponseWriter }

// usage reads the usage object from the kept tail of a JSON response.
func (uw *usageWriter) usage() (usage, bool) {
	if !uw.capture || len(uw.tail) == 0 {
		return usage{}, false
	}
	obj := lastObjectAfterKey(uw.tail, []byte(`"usage"`))
	if obj == nil {
		return usage{}, false
	}
	doc := make([]byte, 0, len(obj)+10)
	doc = append(doc, `{"usage":`...)
	doc = append(doc, obj...)
	doc = append(doc, '}')
	return parseUsageJSON(uw.f, doc)
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
		j := skipSpace(b, i+len(key))
		if j >= len(b) || b[j] != ':' {
			continue
		}
		j = skipSpace(b, j+1)
		if j >= len(b) || b[j] != '{' {
			continue
		}
		if k := matchBrace(b, j); k > 0 {
			return b[j : k+1]
		}
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
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
