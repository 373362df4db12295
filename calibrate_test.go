package llmratelimit

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// longProse is English prose of a few KB.
var longProse = strings.Repeat(proseText.text+" ", 30)

// koreanText is Korean prose, which the byte-class estimator under-counts.
var koreanText = strings.Repeat("대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다. ", 20)

// rawEstimate is the gateway's raw input estimate of a body (no factor).
func rawEstimate(t *testing.T, d dialect, path, body string) float64 {
	t.Helper()
	var info requestInfo
	if err := parseRequest(d, path, []byte(body), &info); err != nil {
		t.Fatal(err)
	}
	h := &Handler{DefaultMaxOutput: defaultMaxOutput}
	return h.demandFor(&info, nil, d).raw
}

// usageUpstream answers every request with prompt_tokens = ratio × the
// raw estimate of its body, as a provider whose tokenizer counts that.
func usageUpstream(t *testing.T, ratio float64, stream bool, calls *atomic.Int32) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		actual := int64(math.Round(ratio * rawEstimate(t, dOpenAI, r.URL.Path, string(b))))
		if stream {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n", actual)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":2}}`, actual)
	}
}

// estimateMeter reads what the gateway estimated for its last request:
// next is the growth of tokens_total{kind="estimated_input"}.
type estimateMeter struct {
	zone string
	last float64
}

func (m *estimateMeter) next() float64 {
	v := testutil.ToFloat64(metricTokens.WithLabelValues(m.zone, "estimated_input"))
	d := v - m.last
	m.last = v
	return d
}

func TestKoreanKeyCalibratesWithin10PercentIn20Requests(t *testing.T) {
	mustLoad(t, "zone calib_korean\ntpm 100000000")
	var calls atomic.Int32
	// The Korean text counts 1.56 × the raw estimate (0.64 estimated).
	const ratio = 1 / 0.64
	setUpstream(t, usageUpstream(t, ratio, false, &calls))
	body := `{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":` + q(koreanText) + `}]}`
	raw := rawEstimate(t, dOpenAI, "/v1/chat/completions", body)
	actual := math.Round(ratio * raw)
	m := &estimateMeter{zone: "calib_korean"}
	m.next()
	var last float64
	for i := 1; i <= 20; i++ {
		if r := send(t, "/v1/chat/completions", "sk-korean-writer", body); r.status != 200 {
			t.Fatalf("request %d: %d", i, r.status)
		}
		last = m.next()
		t.Logf("request %2d: estimate %5.0f, actual %5.0f (%.3f)", i, last, actual, last/actual)
	}
	if err := math.Abs(last-actual) / actual; err > 0.10 {
		t.Fatalf("after 20 requests the estimate is %.0f for an actual %.0f: %.1f%% off, want ≤ 10%%", last, actual, 100*err)
	}
	st := zoneOf(t, "calib_korean").stats(clk.Now().UnixNano())
	if st.Calibration["*"].Samples != 20 {
		t.Fatalf("calibration stats %+v, want 20 samples for *", st.Calibration)
	}
}

func TestModelFactorConvergesToItsProvidersRatio(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprint("stream=", stream), func(t *testing.T) {
			zoneName := fmt.Sprint("calib_model_", stream)
			mustLoad(t, "zone "+zoneName+"\ntpm 100000000\nmodel claude-next {\n\tmax_output 10\n}")
			var calls atomic.Int32
			setUpstream(t, usageUpstream(t, 1.3, stream, &calls))
			for i := 0; i < 30; i++ {
				body := `{"model":"claude-next","stream":` + fmt.Sprint(stream) + `,"messages":[{"role":"user","content":` + q(longProse[:2000+50*i]) + `}]}`
				// Every request from another key: the model's factor learns.
				if r := send(t, "/v1/chat/completions", fmt.Sprint("sk-model-", i), body); r.status != 200 {
					t.Fatalf("request %d: %d", i, r.status)
				}
			}
			c := zoneOf(t, zoneName).stats(clk.Now().UnixNano()).Calibration["claude-next"]
			if c.Samples != 30 || math.Abs(c.Factor-1.3) > 0.05 {
				t.Fatalf("claude-next: %+v, want 1.3 ± 0.05 after 30 answers", c)
			}
			if g := metricCalibrationGauge(t, zoneName, "claude-next"); math.Abs(g-c.Factor) > 0.001 {
				t.Fatalf("gauge %v, stats %v", g, c.Factor)
			}
		})
	}
}

func TestCalibrateOffPinsTheFactors(t *testing.T) {
	mustLoad(t, "zone calib_off\ncalibrate off\ntpm 100000000\nmodel gpt-4o {\n\ttoken_ratio 1.2\n}")
	var calls atomic.Int32
	setUpstream(t, usageUpstream(t, 2.0, false, &calls))
	body := `{"model":"gpt-4o","max_tokens":10,"messages":[{"role":"user","content":` + q(longProse[:3000]) + `}]}`
	raw := rawEstimate(t, dOpenAI, "/v1/chat/completions", body)
	m := &estimateMeter{zone: "calib_off"}
	m.next()
	for i := 0; i < 10; i++ {
		send(t, "/v1/chat/completions", "sk-off", body)
		if got, want := m.next(), math.Ceil(raw*1.2); got != want {
			t.Fatalf("request %d estimated %v, want raw × token_ratio = %v", i, got, want)
		}
	}
	st := zoneOf(t, "calib_off").stats(clk.Now().UnixNano())
	if c := st.Calibration["gpt-4o"]; c.Factor != 1.2 || c.Samples != 0 {
		t.Fatalf("calibration with calibrate off: %+v", st.Calibration)
	}
	if ks, _ := zoneOf(t, "calib_off").keyStats(hashKey("sk-off").id(), clk.Now().UnixNano()); ks.CalibrationFactor != 1 {
		t.Fatalf("key factor %v, want 1", ks.CalibrationFactor)
	}
}

// Hostile usage values never drive a factor out of [0.25, 4] or to 0, and
// one outlier moves it by its weight only.
func TestCalibrationHoldsItsBoundsAgainstHostileUsage(t *testing.T) {
	d := demand{raw: 1000, modelFactor: 1, calib: newModelCalib(1)}
	var k keyCalib
	feed := func(u *usage) {
		d.calibrateModel(u)
		d.calibrateKey(u, &k)
	}
	feed(&usage{Read: 0}) // usage 0: ignored
	feed(nil)             // no usage: ignored
	if f := d.calib.factor(); f != 1 || k.factor() != 1 || d.calib.samples.Load() != 0 {
		t.Fatalf("usage 0 or none moved the factors: %v %v", f, k.factor())
	}
	feed(&usage{Read: maxSettledTokens}) // one absurd figure: moves by its weight
	if f := d.calib.factor(); math.Abs(f-(1+calibWeight*(calibMax-1))) > 1e-9 {
		t.Fatalf("one outlier moved the factor to %v, want %v", f, 1+calibWeight*(calibMax-1))
	}
	for i := 0; i < 200; i++ {
		feed(&usage{Read: maxSettledTokens})
	}
	if f := d.calib.factor(); f > calibMax || k.factor() > calibMax {
		t.Fatalf("factors %v %v above %v", f, k.factor(), calibMax)
	}
	for i := 0; i < 200; i++ {
		feed(&usage{Read: 1})
	}
	if f := d.calib.factor(); f < calibMin || k.factor() < calibMin || f == 0 {
		t.Fatalf("factors %v %v below %v", f, k.factor(), calibMin)
	}
	// A tiny estimate teaches nothing.
	small := demand{raw: 3, modelFactor: 1, calib: newModelCalib(1)}
	small.calibrateModel(&usage{Read: 400})
	if small.calib.factor() != 1 {
		t.Fatalf("a 3-token estimate moved the factor to %v", small.calib.factor())
	}
	for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), -3, 0} {
		if f := clampFactor(bad); !(f >= calibMin && f <= calibMax) {
			t.Fatalf("clampFactor(%v) = %v", bad, f)
		}
	}
}

// metricCalibrationGauge reads the calibration gauge of a zone's model as
// a scrape collects it.
func metricCalibrationGauge(t *testing.T, zoneName, model string) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1000)
	zoneCollector{}.Collect(ch)
	close(ch)
	for m := range ch {
		if !strings.Contains(m.Desc().String(), "calibration_factor") {
			continue
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{}
		for _, l := range pb.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["zone"] == zoneName && labels["model"] == model {
			return pb.GetGauge().GetValue()
		}
	}
	t.Fatalf("no calibration gauge for zone %s model %s", zoneName, model)
	return 0
}
