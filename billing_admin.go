package llmratelimit

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// The usage endpoint of the admin API:
//
//	GET /llm_ratelimit/usage/<zone>?from=YYYY-MM-DD&to=YYYY-MM-DD[&format=json|csv]
//
// answers one row per key_id per UTC day that has usage, days in order and
// key_ids sorted within a day, as JSON ({"zone","from","to","rows":[…]})
// or, with format=csv or Accept: text/csv, as CSV with a header line. to
// defaults to today, from to to; days before the retention have no rows.
// The rows are streamed one day at a time.

// maxUsageRange bounds the days one request asks for.
const maxUsageRange = maxUsageRetention

// usageCSVHeader is the CSV's header line, the columns of its rows.
var usageCSVHeader = []string{"day", "key_id", "tier", "requests", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd"}

// UsageRow is one key's usage on one UTC day.
type UsageRow struct {
	// Day is the UTC day, YYYY-MM-DD.
	Day   string `json:"day"`
	KeyID string `json:"key_id"`
	// Tier is the key's tier (its last request's that day); "" for none.
	Tier string `json:"tier"`
	// Requests counts the requests that finished that day, failed ones
	// included.
	Requests int64 `json:"requests"`
	// InputTokens counts all the input the model read, cached input
	// included; CachedInputTokens is the part read from the provider's
	// prompt cache.
	InputTokens       int64 `json:"input_tokens"`
	CachedInputTokens int64 `json:"cached_input_tokens"`
	OutputTokens      int64 `json:"output_tokens"`
	// CostUSD is what the requests cost at the zone's prices.
	CostUSD float64 `json:"cost_usd"`
}

// readUsage hands the usage of days from..to (those the retention keeps)
// to emit, one day at a time (rows sorted by key_id; none for a day
// without usage); keyID, when not empty, keeps only that key's rows. This
// instance's counts not yet flushed are included.
func (z *zone) readUsage(from, to int32, keyID string, emit func(day int32, rows []UsageRow) error) error {
	b := z.bookOf()
	if b == nil {
		return nil
	}
	from = max(from, b.keepFrom(dayOf(now().UnixNano())))
	if sh := z.shared.Load(); sh != nil {
		return b.readRedis(z, sh.rs, from, to, keyID, emit)
	}
	return b.readStored(z, from, to, keyID, emit)
}

func (adminAPI) serveUsage(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	zoneName := strings.TrimPrefix(r.URL.Path, "/llm_ratelimit/usage/")
	if zoneName == "" || strings.Contains(zoneName, "/") {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("want GET /llm_ratelimit/usage/<zone>?from=YYYY-MM-DD&to=YYYY-MM-DD")}
	}
	z := zoneNamed(zoneName)
	if z == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("unknown zone %q", zoneName)}
	}
	q := r.URL.Query()
	to := dayOf(now().UnixNano())
	if v := q.Get("to"); v != "" {
		d, ok := parseDay(v)
		if !ok {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("to: want a date YYYY-MM-DD, got %q", v)}
		}
		to = d
	}
	from := to
	if v := q.Get("from"); v != "" {
		d, ok := parseDay(v)
		if !ok {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("from: want a date YYYY-MM-DD, got %q", v)}
		}
		from = d
	}
	if from > to {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("from %s is after to %s", dayString(from), dayString(to))}
	}
	if to-from >= maxUsageRange {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("from %s to %s is more than %d days", dayString(from), dayString(to), maxUsageRange)}
	}
	asCSV, err := wantsCSV(q.Get("format"), r.Header.Get("Accept"))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}

	out := &usageOut{w: w, csv: asCSV, zone: zoneName, from: dayString(from), to: dayString(to)}
	err = z.readUsage(from, to, "", func(_ int32, rows []UsageRow) error { return out.write(rows) })
	switch {
	case err == nil:
		return out.end()
	case !out.started:
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("reading the usage of zone %q: %v", zoneName, err)}
	}
	// Rows went out already: cut the answer short rather than let it
	// pass for whole.
	caddy.Log().Named("admin.api").Error("reading the usage failed after the answer began", zap.String("zone", zoneName), zap.Error(err))
	panic(http.ErrAbortHandler)
}

// wantsCSV tells the format asked: format=json|csv, else the first of
// text/csv or application/json that Accept names.
func wantsCSV(format, accept string) (bool, error) {
	switch format {
	case "csv":
		return true, nil
	case "json":
		return false, nil
	case "":
	default:
		return false, fmt.Errorf("format: want json or csv, got %q", format)
	}
	for _, part := range strings.Split(accept, ",") {
		switch mt, _, _ := mime.ParseMediaType(strings.TrimSpace(part)); mt {
		case "text/csv":
			return true, nil
		case "application/json":
			return false, nil
		}
	}
	return false, nil
}

// usageOut writes the rows as they come: the header (or JSON's opening)
// with the first, the end after the last.
type usageOut struct {
	w              http.ResponseWriter
	csv            bool
	zone, from, to string
	started        bool
	rows           int
	cw             *csv.Writer
}

func (o *usageOut) start() error {
	o.started = true
	if o.csv {
		o.w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		o.cw = csv.NewWriter(o.w)
		return o.cw.Write(usageCSVHeader)
	}
	o.w.Header().Set("Content-Type", "application/json")
	head, _ := json.Marshal(struct {
		Zone string `json:"zone"`
		From string `json:"from"`
		To   string `json:"to"`
	}{o.zone, o.from, o.to})
	_, err := io.WriteString(o.w, string(head[:len(head)-1])+`,"rows":[`)
	return err
}

func (o *usageOut) write(rows []UsageRow) error {
	if len(rows) == 0 {
		return nil
	}
	if !o.started {
		if err := o.start(); err != nil {
			return err
		}
	}
	for i := range rows {
		r := &rows[i]
		if o.csv {
			if err := o.cw.Write([]string{r.Day, r.KeyID, r.Tier, strconv.FormatInt(r.Requests, 10), strconv.FormatInt(r.InputTokens, 10),
				strconv.FormatInt(r.CachedInputTokens, 10), strconv.FormatInt(r.OutputTokens, 10), strconv.FormatFloat(r.CostUSD, 'f', -1, 64)}); err != nil {
				return err
			}
			continue
		}
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if o.rows > 0 {
			b = append([]byte{','}, b...)
		}
		if _, err := o.w.Write(b); err != nil {
			return err
		}
		o.rows++
	}
	if o.csv {
		o.cw.Flush()
		return o.cw.Error()
	}
	return nil
}

func (o *usageOut) end() error {
	if !o.started {
		if err := o.start(); err != nil {
			return err
		}
	}
	if o.csv {
		o.cw.Flush()
		return o.cw.Error()
	}
	_, err := io.WriteString(o.w, "]}\n")
	return err
}
