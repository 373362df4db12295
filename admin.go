package llmratelimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the limiter's state on Caddy's admin endpoint:
//
//	GET /llm_ratelimit/stats                   every zone
//	GET /llm_ratelimit/stats/<zone>/<key_id>   one key
//	POST /llm_ratelimit/spend/<zone>/<key_id>/reset   zero the key's spend in its current period
//	GET /llm_ratelimit/usage/<zone>?from=&to=  usage per key and UTC day (billing_admin.go)
//
// It reads the package's zone pool, the same the handlers use: the admin
// module is provisioned before the apps and holds no handler. Keys appear
// only as key_id.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.llm_ratelimit",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/llm_ratelimit/stats", Handler: caddy.AdminHandlerFunc(a.serveStats)},
		{Pattern: "/llm_ratelimit/stats/", Handler: caddy.AdminHandlerFunc(a.serveStats)},
		{Pattern: "/llm_ratelimit/spend/", Handler: caddy.AdminHandlerFunc(a.serveSpendReset)},
		{Pattern: "/llm_ratelimit/usage/", Handler: caddy.AdminHandlerFunc(a.serveUsage)},
	}
}

// Stats is the stats endpoint's answer.
type Stats struct {
	Zones map[string]ZoneStats `json:"zones"`
}

func (adminAPI) serveStats(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	nowNs := now().UnixNano()
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/llm_ratelimit/stats"), "/")
	if rest == "" {
		out := Stats{Zones: map[string]ZoneStats{}}
		zones.Range(func(k, v any) bool {
			z := v.(*zone)
			out.Zones[z.name] = z.stats(nowNs)
			return true
		})
		return writeStats(w, out)
	}
	zoneName, keyID, ok := strings.Cut(rest, "/")
	if !ok || zoneName == "" || keyID == "" || strings.Contains(keyID, "/") {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("want /llm_ratelimit/stats/<zone>/<key_id>")}
	}
	z := zoneNamed(zoneName)
	if z == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("unknown zone %q", zoneName)}
	}
	st, found := z.keyStats(keyID, nowNs)
	if !found {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("zone %q holds no state for key_id %q", zoneName, keyID)}
	}
	return writeStats(w, st)
}

func writeStats(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// zoneNamed is the live zone of that name, or nil.
func zoneNamed(name string) *zone {
	var z *zone
	zones.Range(func(k, v any) bool {
		if k == name {
			z = v.(*zone)
			return false
		}
		return true
	})
	return z
}

// serveSpendReset zeroes a key's spend in its budget's current period
// (what is in flight stays reserved) and answers the key's stats.
func (adminAPI) serveSpendReset(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, "/llm_ratelimit/spend/")
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] != "reset" {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("want POST /llm_ratelimit/spend/<zone>/<key_id>/reset")}
	}
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	z := zoneNamed(parts[0])
	if z == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("unknown zone %q", parts[0])}
	}
	if !z.resetSpend(parts[1]) {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("zone %q holds no spend for key_id %q", parts[0], parts[1])}
	}
	st, _ := z.keyStats(parts[1], now().UnixNano())
	return writeStats(w, st)
}
