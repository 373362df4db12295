package llmratelimit

import (
	"sync/atomic"
	"time"
)

// The one clock of the package. Every time-based decision (bucket refill,
// resets, the sweeper) reads now(); tests replace it with setClock so that
// time passes without sleeping.
var clockFn atomic.Pointer[func() time.Time]

// now returns the current time of the package clock.
func now() time.Time {
	if f := clockFn.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}

// setClock replaces the package clock; nil restores time.Now. For tests.
func setClock(f func() time.Time) {
	if f == nil {
		clockFn.Store(nil)
		return
	}
	clockFn.Store(&f)
}
