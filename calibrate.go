package llmratelimit

import (
	"math"
	"sync/atomic"
)

// This file is estimate calibration (SPEC "Estimate calibration"): every
// settled answer that reports its usage tells the ratio of the input the
// model really read to the raw estimate. A factor per model (a model
// block's name, or "*" for requests no block matches) follows that ratio
// as an exponentially weighted average, starting at the block's
// token_ratio; a factor per key, relative to its model's, does the same,
// so that a key whose traffic is, say, mostly Korean gets its own
// correction. The admission estimate is raw × model factor × key factor.

const (
	// calibWeight is the weight of one observation: about 20 answers move
	// a factor most of the way, and one outlier moves it only this much.
	calibWeight = 0.15
	calibMin    = 0.25
	calibMax    = 4.0
	// calibMinRaw: estimates below it are too small to say anything about
	// the ratio (a 3-token request is mostly rounding).
	calibMinRaw = 16
)

// calibStar names the factor of requests that no model block matches.
const calibStar = "*"

// clampFactor keeps a factor or an observed ratio within [0.25, 4];
// NaN and infinities never get in.
func clampFactor(f float64) float64 {
	switch {
	case math.IsNaN(f):
		return 1
	case f < calibMin:
		return calibMin
	case f > calibMax:
		return calibMax
	}
	return f
}

// modelCalib is one model's factor in a zone, shared by every request of
// the model without a lock.
type modelCalib struct {
	bits    atomic.Uint64 // the factor, as float64 bits
	samples atomic.Int64
}

func newModelCalib(start float64) *modelCalib {
	c := new(modelCalib)
	c.bits.Store(math.Float64bits(clampFactor(start)))
	return c
}

func (c *modelCalib) factor() float64 { return math.Float64frombits(c.bits.Load()) }

// observe moves the factor toward one observed ratio by its weight.
func (c *modelCalib) observe(ratio float64) {
	ratio = clampFactor(ratio)
	for {
		old := c.bits.Load()
		f := math.Float64frombits(old)
		next := clampFactor(f + calibWeight*(ratio-f))
		if c.bits.CompareAndSwap(old, math.Float64bits(next)) {
			c.samples.Add(1)
			return
		}
	}
}

// calibFor is the zone's factor of a model block (or "*"), created at the
// block's token_ratio the first time a config names it; it then outlives
// reloads with the zone.
func (z *zone) calibFor(name string, start float64) *modelCalib {
	v, _ := z.calib.LoadOrStore(name, newModelCalib(start))
	return v.(*modelCalib)
}

// keyCalib is a key's factor relative to its model's, stored in 4 bytes
// of its state (0 means 1: no correction yet). The key's shard lock
// guards it.
type keyCalib float32

func (k keyCalib) factor() float64 {
	if k == 0 {
		return 1
	}
	return float64(k)
}

func (k *keyCalib) observe(ratio float64) {
	f := k.factor()
	*k = keyCalib(clampFactor(f + calibWeight*(clampFactor(ratio)-f)))
}

// calibrates tells whether an answer's usage may teach the factors: a
// missing usage never gets here; usage 0 or a tiny estimate says nothing.
// An absurd figure cannot push a factor out of its bounds, and one answer
// moves a factor by its weight at most.
func (d *demand) calibrates(u *usage) bool {
	return d.calib != nil && u != nil && u.Read > 0 && d.raw >= calibMinRaw
}

// calibrateModel takes one settled answer's actual input into the
// model's factor.
func (d *demand) calibrateModel(u *usage) {
	if d.calibrates(u) {
		d.calib.observe(float64(u.Read) / d.raw)
	}
}

// calibrateKey takes it into the key's factor, relative to the model
// factor the request was admitted with. The caller holds the key's shard
// lock.
func (d *demand) calibrateKey(u *usage, k *keyCalib) {
	if d.calibrates(u) {
		k.observe(float64(u.Read) / (d.raw * d.modelFactor))
	}
}

// CalibrationStats is one model's factor in the stats.
type CalibrationStats struct {
	Factor  float64 `json:"factor"`
	Samples int64   `json:"samples"`
}

// calibrationStats is the zone's factors by model block name (or "*").
func (z *zone) calibrationStats() map[string]CalibrationStats {
	out := map[string]CalibrationStats{}
	z.calib.Range(func(k, v any) bool {
		c := v.(*modelCalib)
		out[k.(string)] = CalibrationStats{Factor: math.Round(c.factor()*1000) / 1000, Samples: c.samples.Load()}
		return true
	})
	return out
}
