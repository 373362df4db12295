package llmratelimit

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// The metrics are created once per process and registered into the
// registry of every config that provisions a handler, so that their values
// survive config reloads. No label ever holds a key.
var (
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "requests_total",
		Help: "Requests decided by llm_ratelimit, by outcome: allowed, queued (admitted after waiting), rejected, budget_exceeded, dry_run_rejected, unauthorized, invalid.",
	}, []string{"zone", "outcome"})
	metricTokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "tokens_total",
		Help: "Tokens of admitted requests: estimated_input and reserved_output at admission, actual_input and actual_output from the upstream's usage.",
	}, []string{"zone", "kind"})
	metricRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "upstream_retries_total",
		Help: "Upstream answers that were retried, by the status that was retried.",
	}, []string{"zone", "status"})
	metricQueueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "queue_wait_seconds",
		Help:    "Time admitted requests waited in the queue (max_wait).",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120},
	}, []string{"zone"})
	metricEstimateRatio = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "estimate_ratio",
		Help:    "Actual input tokens (upstream usage) divided by the estimated input tokens, per settled request.",
		Buckets: []float64{0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 1, 1.05, 1.1, 1.2, 1.3, 1.5, 2, 4},
	}, []string{"zone"})
	metricStoreErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "store_errors_total",
		Help: "Calls to the shared store (Redis) that failed; with fail open the request was decided on this instance's own buckets.",
	}, []string{"zone"})
	metricUpstreamCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "upstream_calls_total",
		Help: "Attempts sent to each provider account (upstream: the account's name, default for the unnamed block), by the status it answered.",
	}, []string{"zone", "upstream", "status"})
	metricUpstreamCooldown = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "upstream_cooldown_seconds_total",
		Help: "Seconds each provider account was put in cooldown by its 429 and 529 answers.",
	}, []string{"zone", "upstream"})
	metricCost = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "cost_usd_total",
		Help: "What settled requests cost, in USD, at the configured prices (model: a configured block name, or * for requests no block matches).",
	}, []string{"zone", "model"})
	metricUnpriced = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "unpriced_requests_total",
		Help: "Requests for a model that no price configured prices, which went up at cost 0 (keys without a budget; a key with a budget is refused them).",
	}, []string{"zone"})
	metricLedgerErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "ledger_errors_total",
		Help: "Spend ledgers that could not be read (moved aside; the zone started with no spend) or saved, and usage records (billing) that could not be read, saved or added to Redis in time.",
	}, []string{"zone"})
	metricFileReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "file_reloads_total",
		Help: "prices_file and keys_file changes read on their own: ok (in force), error (the table in force kept).",
	}, []string{"zone", "file", "result"})
	metricRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "llm_ratelimit", Name: "rejections_total",
		Help: "Requests the handler answered 429 itself, by the limit that decided: requests, tokens, input_tokens, output_tokens, concurrency, keys, cooldown, queue_full or budget.",
	}, []string{"zone", "limit"})
	metricQueueLengthDesc = prometheus.NewDesc("caddy_llm_ratelimit_queue_length",
		"Requests of a zone waiting in its queue (max_wait).", []string{"zone"}, nil)
	metricKeysDesc = prometheus.NewDesc("caddy_llm_ratelimit_keys",
		"Keys a zone holds state for (idle keys whose buckets are full are dropped).", []string{"zone"}, nil)
	metricCalibrationDesc = prometheus.NewDesc("caddy_llm_ratelimit_calibration_factor",
		"The input estimate's calibration factor per model block (model: a configured block name, or * for requests no block matches).", []string{"zone", "model"}, nil)
	metricInFlightDesc = prometheus.NewDesc("caddy_llm_ratelimit_in_flight",
		"Requests of a zone admitted and not yet finished.", []string{"zone"}, nil)
)

// Outcomes of requests_total.
const (
	outcomeAllowed        = "allowed"
	outcomeQueued         = "queued"
	outcomeRejected       = "rejected"
	outcomeDryRunRejected = "dry_run_rejected"
	outcomeUnauthorized   = "unauthorized"
	outcomeInvalid        = "invalid"
	outcomeBudget         = "budget_exceeded"
)

// zoneCollector reports the keys and in-flight gauges of every live zone
// when scraped, so the hot path never touches them.
type zoneCollector struct{}

func (zoneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- metricKeysDesc
	ch <- metricInFlightDesc
	ch <- metricCalibrationDesc
	ch <- metricQueueLengthDesc
}

func (zoneCollector) Collect(ch chan<- prometheus.Metric) {
	zones.Range(func(k, v any) bool {
		z := v.(*zone)
		ch <- prometheus.MustNewConstMetric(metricKeysDesc, prometheus.GaugeValue, float64(z.keyCount()), z.name)
		ch <- prometheus.MustNewConstMetric(metricInFlightDesc, prometheus.GaugeValue, float64(z.inFlight()), z.name)
		ch <- prometheus.MustNewConstMetric(metricQueueLengthDesc, prometheus.GaugeValue, float64(z.queue.length()), z.name)
		z.calib.Range(func(k, v any) bool {
			ch <- prometheus.MustNewConstMetric(metricCalibrationDesc, prometheus.GaugeValue, v.(*modelCalib).factor(), z.name, k.(string))
			return true
		})
		return true
	})
}

var collectors = []prometheus.Collector{
	metricRequests, metricTokens, metricRetries, metricQueueWait, metricEstimateRatio, metricStoreErrors,
	metricUpstreamCalls, metricUpstreamCooldown, metricCost, metricUnpriced, metricLedgerErrors, metricRejections, metricFileReloads, zoneCollector{},
}

// registerMetrics puts the package's collectors into a config's registry.
// A collector already there (another handler of the same config) is fine.
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// rejectionLimits names each limit in rejections_total.
var rejectionLimits = [...]string{
	dimRequests:    "requests",
	dimTokens:      "tokens",
	dimInput:       "input_tokens",
	dimOutput:      "output_tokens",
	dimConcurrency: "concurrency",
	dimKeys:        "keys",
	dimCooldown:    "cooldown",
}

// rejected counts a 429 of the handler's own by the limit that decided.
func (m *zoneMetrics) rejected(limit string) {
	metricRejections.WithLabelValues(m.zone, limit).Inc()
}

// zoneMetrics are a zone's metric children, resolved once so that the hot
// path does no label lookups.
type zoneMetrics struct {
	outcomes                     map[string]prometheus.Counter
	estIn, resOut, actIn, actOut prometheus.Counter
	queueWait, estimateRatio     prometheus.Observer
	storeErrors                  prometheus.Counter
	unpriced                     prometheus.Counter
	retriesMu                    sync.Mutex
	retries                      map[int]prometheus.Counter
	zone                         string
}

// callCounters are one account's upstream_calls_total children, by status,
// each resolved on first use and then read without a lock or an
// allocation.
type callCounters struct {
	zone, account string
	byStatus      [600]atomic.Pointer[prometheus.Counter]
}

func (c *callCounters) inc(status int) {
	if c == nil {
		return
	}
	if status < 0 || status >= len(c.byStatus) {
		status = 0
	}
	p := c.byStatus[status].Load()
	if p == nil {
		counter := metricUpstreamCalls.WithLabelValues(c.zone, c.account, strconv.Itoa(status))
		p = &counter
		c.byStatus[status].Store(p)
	}
	(*p).Inc()
}

// cooldown counts seconds an account was put in cooldown.
func (m *zoneMetrics) cooldown(account string, seconds float64) {
	metricUpstreamCooldown.WithLabelValues(m.zone, account).Add(seconds)
}

func newZoneMetrics(zone string) *zoneMetrics {
	m := &zoneMetrics{
		outcomes:      make(map[string]prometheus.Counter),
		estIn:         metricTokens.WithLabelValues(zone, "estimated_input"),
		resOut:        metricTokens.WithLabelValues(zone, "reserved_output"),
		actIn:         metricTokens.WithLabelValues(zone, "actual_input"),
		actOut:        metricTokens.WithLabelValues(zone, "actual_output"),
		queueWait:     metricQueueWait.WithLabelValues(zone),
		estimateRatio: metricEstimateRatio.WithLabelValues(zone),
		storeErrors:   metricStoreErrors.WithLabelValues(zone),
		unpriced:      metricUnpriced.WithLabelValues(zone),
		retries:       make(map[int]prometheus.Counter),
		zone:          zone,
	}
	for _, o := range []string{outcomeAllowed, outcomeQueued, outcomeRejected, outcomeDryRunRejected, outcomeUnauthorized, outcomeInvalid, outcomeBudget} {
		m.outcomes[o] = metricRequests.WithLabelValues(zone, o)
	}
	return m
}

// retry counts one retried upstream status.
func (m *zoneMetrics) retry(zone string, status int) {
	m.retriesMu.Lock()
	c := m.retries[status]
	if c == nil {
		c = metricRetries.WithLabelValues(zone, strconv.Itoa(status))
		m.retries[status] = c
	}
	m.retriesMu.Unlock()
	c.Inc()
}

// settled records what an admitted request really used.
func (m *zoneMetrics) settled(estimatedIn float64, u usage) {
	m.actIn.Add(float64(u.Input))
	m.actOut.Add(float64(u.Output))
	if estimatedIn > 0 {
		m.estimateRatio.Observe(float64(u.Input) / estimatedIn)
	}
}
