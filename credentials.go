package llmratelimit

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
)

// This file reads and removes a client's credentials. It knows no
// provider: each dialect declares where its clients put their key
// (dialect.credentials), and the union of those declarations is the one
// list that drives the default key lookup, the removal of every client
// credential before an account's own goes upstream, and the 401 message.

// clientCredentials is every dialect's credential places, once each, in
// the order of the default key lookup (rank).
var clientCredentials []credential

// missingKeyMessage is the 401 message for a request without a key: it
// names every place of clientCredentials.
var missingKeyMessage string

// addCredentials merges a dialect's credential places into
// clientCredentials, at registration (init). Two dialects that name the
// same place must declare it alike, and two places cannot share a rank: a
// conflict is a programming error.
func addCredentials(dialect string, places []credential) {
	for _, c := range places {
		if (c.header == "") == (c.query == "") || (c.bearer && c.header == "") {
			panic(fmt.Sprintf("dialect %s: a credential is a header or a query parameter: %+v", dialect, c))
		}
		if c.header != "" && c.header != http.CanonicalHeaderKey(c.header) {
			panic(fmt.Sprintf("dialect %s: credential header %q is not in canonical form", dialect, c.header))
		}
		dup := false
		for _, o := range clientCredentials {
			same := o.header == c.header && o.query == c.query
			if same && o != c || !same && o.rank == c.rank {
				panic(fmt.Sprintf("dialect %s: credential %+v conflicts with %+v", dialect, c, o))
			}
			dup = dup || same
		}
		if !dup {
			clientCredentials = append(clientCredentials, c)
		}
	}
	sort.Slice(clientCredentials, func(i, j int) bool { return clientCredentials[i].rank < clientCredentials[j].rank })
	missingKeyMessage = "Missing API key: send it as " + describeCredentials(clientCredentials) + "."
}

// describeCredentials names the places for a client, in lookup order:
// "'Authorization: Bearer <key>', x-api-key, the key query parameter or
// api-key".
func describeCredentials(places []credential) string {
	var b strings.Builder
	for i, c := range places {
		switch {
		case i == 0:
		case i == len(places)-1:
			b.WriteString(" or ")
		default:
			b.WriteString(", ")
		}
		switch {
		case c.bearer:
			b.WriteString("'" + c.header + ": Bearer <key>'")
		case c.header != "":
			b.WriteString(strings.ToLower(c.header))
		default:
			b.WriteString("the " + c.query + " query parameter")
		}
	}
	return b.String()
}

// defaultKey is the caller's key when no key template is configured: the
// first place of clientCredentials that holds one.
func defaultKey(r *http.Request) string {
	for i := range clientCredentials {
		if k := clientCredentials[i].from(r); k != "" {
			return k
		}
	}
	return ""
}

// from is the key this place of the request holds, "" for none. A bearer
// header with another scheme, or an empty token, holds none.
func (c *credential) from(r *http.Request) string {
	if c.query != "" {
		if r.URL == nil {
			return ""
		}
		return strings.TrimSpace(queryValue(r.URL.RawQuery, c.query))
	}
	v := r.Header.Get(c.header)
	if !c.bearer {
		return strings.TrimSpace(v)
	}
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

// isCredentialHeader tells a header (canonical name) that is a credential
// of some dialect: an account that sets one with header_up brings its own
// credentials.
func isCredentialHeader(field string) bool {
	for _, c := range clientCredentials {
		if c.header != "" && c.header == field {
			return true
		}
	}
	return false
}

// credentialHeaders are the header names of clientCredentials.
func credentialHeaders() []string {
	var out []string
	for _, c := range clientCredentials {
		if c.header != "" && !containsString(out, c.header) {
			out = append(out, c.header)
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// removeClientCredentials takes every client credential of every dialect
// out of the request: the headers, and the query parameters (every
// occurrence; the rest of the query is kept as it was).
func removeClientCredentials(r *http.Request) {
	for i := range clientCredentials {
		c := &clientCredentials[i]
		if c.header != "" {
			delete(r.Header, c.header)
		} else if r.URL != nil {
			r.URL.RawQuery = withoutQueryParam(r.URL.RawQuery, c.query)
		}
	}
}

// queryValue is the first value of the query parameter name in a raw
// query, as url.Values.Get reads it, without parsing the whole query.
func queryValue(raw, name string) string {
	for raw != "" {
		var seg string
		seg, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(seg, "=")
		if queryName(k) != name {
			continue
		}
		if uv, err := url.QueryUnescape(v); err == nil {
			return uv
		}
	}
	return ""
}

// withoutQueryParam is the raw query without every pair whose name is
// name; it is raw itself, not a copy, when there is none.
func withoutQueryParam(raw, name string) string {
	if raw == "" {
		return raw
	}
	var b []byte
	kept := 0 // raw[:kept] is kept as it is, until the first removal
	for from := 0; from <= len(raw); {
		end := strings.IndexByte(raw[from:], '&')
		if end < 0 {
			end = len(raw)
		} else {
			end += from
		}
		seg := raw[from:end]
		k, _, _ := strings.Cut(seg, "=")
		switch {
		case queryName(k) == name:
			if b == nil {
				b = append(make([]byte, 0, len(raw)), strings.TrimRight(raw[:kept], "&")...)
			}
		case b == nil:
			kept = end
		case seg != "":
			if len(b) > 0 {
				b = append(b, '&')
			}
			b = append(b, seg...)
		}
		from = end + 1
	}
	if b == nil {
		return raw
	}
	return string(b)
}

// queryName is a query parameter's name unescaped, as url.ParseQuery
// reads it ("" when it cannot be unescaped).
func queryName(k string) string {
	if !strings.ContainsAny(k, "%+") {
		return k
	}
	u, err := url.QueryUnescape(k)
	if err != nil {
		return ""
	}
	return u
}
