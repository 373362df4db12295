package llmratelimit

import (
	"testing"
	"time"
)

const sec = int64(time.Second)

func TestBucketStartsFullAndRefillsContinuously(t *testing.T) {
	var b bucket
	t0 := int64(1000 * sec)
	if got := b.advance(t0, 60); got != 60 {
		t.Fatalf("new bucket level %v, want 60 (full)", got)
	}
	b.level = 0
	if got := b.advance(t0+10*sec, 60); got != 10 {
		t.Fatalf("after 10s at 60/min: %v, want 10", got)
	}
	if got := b.advance(t0+5*60*sec, 60); got != 60 {
		t.Fatalf("refill passes capacity: %v", got)
	}
	if d := durationFromTokens(60, 30); d != 30*time.Second {
		t.Fatalf("durationFromTokens(60, 30) = %v", d)
	}
}

func TestBucketDebtIsPaidBeforeRefillShows(t *testing.T) {
	b := bucket{level: 0, at: 1}
	b.add(1, 600, -300) // a late charge: 300 more tokens than reserved
	if b.level != -300 {
		t.Fatalf("debt %v, want -300", b.level)
	}
	// 600/min = 10/s: 30s pay the debt, 10s more give 100.
	if got := b.advance(1+40*sec, 600); got != 100 {
		t.Fatalf("after 40s: %v, want 100", got)
	}
	b.add(1+40*sec, 600, 10000) // a refund never passes the capacity
	if b.level != 600 {
		t.Fatalf("refund level %v, want 600", b.level)
	}
}

func TestLoweredLimitClampsTheLiveLevel(t *testing.T) {
	var b bucket
	b.advance(sec, 1000)
	if got := b.advance(2*sec, 100); got != 100 {
		t.Fatalf("level after the limit fell to 100: %v", got)
	}
}

func TestAdmissionIsAllOrNothing(t *testing.T) {
	var rpm, tpm, otpm bucket
	now := 10 * sec
	tpm.advance(now, 1000)
	tpm.level = 100 // tokens are short; requests are not
	var a admission
	a.add(&rpm, 10, 1, dimRequests, scopeKey)
	a.add(&tpm, 1000, 150, dimTokens, scopeKey)
	a.add(&otpm, 0, 150, dimOutput, scopeKey) // no limit: not a bucket
	if a.n != 2 {
		t.Fatalf("uses = %d, want 2", a.n)
	}
	v := a.try(now)
	if v.ok || v.never || v.blocking.dim != dimTokens || v.available != 100 {
		t.Fatalf("verdict %+v", v)
	}
	if want := durationFromTokens(1000, 50); v.wait != want {
		t.Fatalf("wait %v, want %v", v.wait, want)
	}
	if rpm.level != 10 {
		t.Fatalf("rpm debited by a rejected admission: %v", rpm.level)
	}
	v = a.try(now + int64(v.wait))
	if !v.ok || rpm.level != 9 || tpm.level > 0.001 {
		t.Fatalf("after the wait: %+v rpm %v tpm %v", v, rpm.level, tpm.level)
	}
}

func TestNeedAboveCapacityNeverFits(t *testing.T) {
	var tpm bucket
	var a admission
	a.add(&tpm, 1000, 1001, dimTokens, scopeKey)
	v := a.try(sec)
	if v.ok || !v.never || v.wait != 0 {
		t.Fatalf("verdict %+v", v)
	}
}

func TestQuotasReportTheMostConstrainingBucket(t *testing.T) {
	var keyTPM, modelTPM, keyRPM bucket
	var a admission
	a.add(&keyRPM, 100, 1, dimRequests, scopeKey)
	a.add(&keyTPM, 10000, 1000, dimTokens, scopeKey)
	a.add(&modelTPM, 2000, 1000, dimTokens, scopeModel)
	if v := a.try(sec); !v.ok {
		t.Fatal("rejected")
	}
	req, tok := a.quotas()
	if req.limit != 100 || req.remaining() != 99 || req.reset() != durationFromTokens(100, 1) {
		t.Errorf("requests quota %+v", req)
	}
	if tok.limit != 2000 || tok.remaining() != 1000 || tok.reset() != 30*time.Second {
		t.Errorf("tokens quota %+v, want the model bucket (1000 of 2000 left, 30s to full)", tok)
	}
}

func TestSweepDropsOnlyIdleFullKeys(t *testing.T) {
	z := newZone("sweep-test")
	defer z.Destruct()
	lim := Limits{RPM: 60}
	t0 := int64(100 * sec)
	busy, dec := z.admit(ask{kh: hashKey("busy"), lim: lim}, t0, false, false)
	if !dec.ok {
		t.Fatalf("busy key rejected: %+v", dec.verdict)
	}
	idle, dec := z.admit(ask{kh: hashKey("idle"), lim: lim}, t0, false, false)
	if !dec.ok {
		t.Fatalf("idle key rejected: %+v", dec.verdict)
	}
	idle.finish(t0, nil, false)
	if n := z.sweep(t0 + sec/2); n != 0 {
		t.Fatalf("swept %d keys whose buckets are not full", n)
	}
	if n := z.sweep(t0 + 2*sec); n != 1 || z.keyCount() != 1 {
		t.Fatalf("swept %d, left %d; want the idle key gone, the busy one kept", n, z.keyCount())
	}
	busy.finish(t0, nil, false)
	if n := z.sweep(t0 + 2*sec); n != 1 || z.keyCount() != 0 {
		t.Fatalf("after finishing: swept %d, left %d", n, z.keyCount())
	}
}

func TestResetStringMatchesGoDurations(t *testing.T) {
	for _, d := range []time.Duration{0, time.Nanosecond, 12 * time.Millisecond, 999*time.Millisecond + 1, time.Second,
		1200 * time.Millisecond, 18642 * time.Millisecond, 59956 * time.Millisecond, 59999*time.Millisecond + 1, time.Minute, 6 * time.Minute, 90 * time.Minute} {
		want := "0s"
		if d > 0 {
			want = (((d + time.Millisecond - 1) / time.Millisecond) * time.Millisecond).String()
		}
		if got := resetString(d); got != want {
			t.Errorf("resetString(%v) = %q, want %q", d, got, want)
		}
	}
}
