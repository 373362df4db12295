package llmratelimit

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The spend ledger: without a shared store, a zone's spend is saved through
// Caddy's configured storage (the file system by default) under
// llm_ratelimit/<zone>/spend.json, at most ledgerFlush after a change and
// when the zone is let go, and loaded when the zone is made. A crash loses
// at most ledgerFlush of spend. A ledger that cannot be read is moved aside
// (spend.json.corrupt-<unix time>), logged and counted in
// caddy_llm_ratelimit_ledger_errors_total; the zone starts with no spend
// rather than not at all.

const ledgerFlush = 5 * time.Second

type ledger struct {
	mu      sync.Mutex // one save at a time
	storage certmagic.Storage
	key     string
	logger  *zap.Logger
}

// ledgerFile is the saved form. Keys are the first 16 bytes of sha256 of
// the API key, in hex: never the key itself.
type ledgerFile struct {
	Version int                    `json:"version"`
	Zone    string                 `json:"zone"`
	SavedAt string                 `json:"saved_at"`
	Keys    map[string]ledgerEntry `json:"keys"`
}

type ledgerEntry struct {
	PeriodStart int64 `json:"period_start"` // unix seconds
	SpentNano   int64 `json:"spent_nusd"`   // nano-dollars
}

func ledgerKey(zone string) string { return "llm_ratelimit/" + zone + "/spend.json" }

// load reads the ledger into the zone's shards.
func (l *ledger) load(z *zone) {
	ctx := context.Background()
	raw, err := l.storage.Load(ctx, l.key)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		l.logger.Error("reading the spend ledger", zap.String("zone", z.name), zap.String("ledger", l.key), zap.Error(err))
		metricLedgerErrors.WithLabelValues(z.name).Inc()
		return
	}
	var f ledgerFile
	if err := json.Unmarshal(raw, &f); err != nil || f.Version != 1 || f.Keys == nil {
		if err == nil {
			err = fmt.Errorf("version %d, keys %v: not a ledger of this plugin", f.Version, f.Keys != nil)
		}
		aside := l.key + ".corrupt-" + strconv.FormatInt(now().Unix(), 10)
		l.logger.Error("the spend ledger is corrupt: moved aside, starting with no spend",
			zap.String("zone", z.name), zap.String("ledger", l.key), zap.String("moved_to", aside), zap.Error(err))
		metricLedgerErrors.WithLabelValues(z.name).Inc()
		if err := l.storage.Store(ctx, aside, raw); err == nil {
			_ = l.storage.Delete(ctx, l.key)
		}
		return
	}
	for k, e := range f.Keys {
		b, err := hex.DecodeString(k)
		if err != nil || len(b) != len(keyPrefix{}) || e.SpentNano < 0 {
			continue
		}
		var kp keyPrefix
		copy(kp[:], b)
		s := &z.shards[kp[0]%shardCount]
		s.mu.Lock()
		if s.spend == nil {
			s.spend = make(map[keyPrefix]*keySpend)
		}
		s.spend[kp] = &keySpend{start: e.PeriodStart, spent: e.SpentNano}
		s.mu.Unlock()
	}
}

// save writes the zone's spend if it changed since the last save (or
// always, with force).
func (l *ledger) save(z *zone, force bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !z.ledgerDirty.Swap(false) && !force {
		return
	}
	f := ledgerFile{Version: 1, Zone: z.name, SavedAt: now().UTC().Format(time.RFC3339), Keys: map[string]ledgerEntry{}}
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for kp, sp := range s.spend {
			if sp.spent > 0 {
				f.Keys[hex.EncodeToString(kp[:])] = ledgerEntry{PeriodStart: sp.start, SpentNano: sp.spent}
			}
		}
		s.mu.Unlock()
	}
	raw, err := json.Marshal(f)
	if err == nil {
		err = l.storage.Store(context.Background(), l.key, raw)
	}
	if err != nil {
		z.ledgerDirty.Store(true) // try again at the next flush
		l.logger.Error("saving the spend ledger", zap.String("zone", z.name), zap.String("ledger", l.key), zap.Error(err))
		metricLedgerErrors.WithLabelValues(z.name).Inc()
	}
}

// storageOf is the config's storage, or nil for a context made outside a
// running Caddy (whose Storage panics: it has no config).
func storageOf(ctx caddy.Context) (s certmagic.Storage) {
	defer func() {
		if recover() != nil {
			s = nil
		}
	}()
	return ctx.Storage()
}

// attachLedger gives the zone its ledger the first time a config with a
// budget takes it: the spend saved is loaded, and the flusher starts.
// Later configs (reloads) keep that ledger.
func (z *zone) attachLedger(storage certmagic.Storage, logger *zap.Logger) {
	z.ledgerMu.Lock()
	defer z.ledgerMu.Unlock()
	if z.ledger != nil || storage == nil {
		return
	}
	l := &ledger{storage: storage, key: ledgerKey(z.name), logger: logger}
	l.load(z)
	z.ledger = l
	z.startFlusher()
}

func (z *zone) ledgerOf() *ledger {
	z.ledgerMu.Lock()
	defer z.ledgerMu.Unlock()
	return z.ledger
}

// startFlusher starts the zone's flusher, once: the first time a ledger
// or a usage record is attached.
func (z *zone) startFlusher() { z.flushOnce.Do(func() { go z.flusher() }) }

// flusher saves the ledger and the usage record every ledgerFlush while
// they change, and a last time when the zone is let go.
func (z *zone) flusher() {
	t := time.NewTicker(ledgerFlush)
	defer t.Stop()
	for {
		select {
		case <-z.done:
			z.flush()
			return
		case <-t.C:
			z.flush()
		}
	}
}

// flush saves what changed: the spend ledger and the usage record.
func (z *zone) flush() {
	if l := z.ledgerOf(); l != nil {
		l.save(z, false)
	}
	if b := z.bookOf(); b != nil {
		b.flush(z)
	}
}
