package llmratelimit

import (
	"context"
	"sync/atomic"
	"time"
)

// The one clock of the package. Every time-based decision (bucket refill,
// resets, retry waits, the cooldown gate, the sweeper) reads now() and waits
// with sleep(); tests replace both with setClock so that time passes without
// sleeping.
type clock interface {
	Now() time.Time
	// SleepUntil waits until t or until ctx is done, whichever comes
	// first, and returns ctx.Err() in the second case.
	SleepUntil(ctx context.Context, t time.Time) error
}

var clockHook atomic.Pointer[clock]

// now returns the current time of the package clock.
func now() time.Time {
	if c := clockHook.Load(); c != nil {
		return (*c).Now()
	}
	return time.Now()
}

// sleep waits on the package clock for d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	return sleepUntil(ctx, now().Add(d))
}

// sleepUntil waits on the package clock until t, or until ctx is done.
func sleepUntil(ctx context.Context, t time.Time) error {
	if c := clockHook.Load(); c != nil {
		return (*c).SleepUntil(ctx, t)
	}
	return wallSleepUntil(ctx, t)
}

// wallSleepUntil waits on the wall clock until t, or until ctx is done.
func wallSleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// setClock replaces the package clock; nil restores the real one. For tests.
func setClock(c clock) {
	if c == nil {
		clockHook.Store(nil)
		return
	}
	clockHook.Store(&c)
}
