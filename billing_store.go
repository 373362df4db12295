package llmratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The usage record in Caddy's storage. Each gateway process that serves a
// zone is a writer with a random name of its own, and keeps its totals of
// a day in a file of its own:
//
//	llm_ratelimit/<zone>/usage/<YYYY-MM-DD>/<writer>.json
//
// A day's rows are the sum over its files: several instances sharing one
// storage backend, and the processes before a restart, add up, and none
// ever counts twice, as no two write the same file. The flusher rewrites
// this writer's files of the days that changed; the totals of past days
// leave memory once written. Days before the retention are deleted.
//
// Bounds: a writer's day file holds at most usageMaxRows keys (about 70
// bytes each in JSON); the keys past it that day are added up in the row
// usageOther. Storage therefore holds at most retention days × writers of
// a day × (usageMaxRows + 1) rows, and memory one day's rows per writer.

const (
	// defaultUsageRetention is usage_retention's default, in days.
	defaultUsageRetention = 400
	// maxUsageRetention bounds usage_retention (10 years).
	maxUsageRetention = 3660
	// usageMaxRows bounds the keys of one day in one writer's file (with
	// store redis: in the day's hash).
	usageMaxRows = 100_000
	// usageOther is the row where the keys past usageMaxRows of a day add
	// up: it never looks like a key_id (12 hex digits).
	usageOther = "other"
)

// usageRow is a key's usage on one day, as saved: cost in nano-dollars.
type usageRow struct {
	Tier     string `json:"t"`
	Requests int64  `json:"n"`
	Input    int64  `json:"i"`
	Cached   int64  `json:"c"`
	Output   int64  `json:"o"`
	Cost     int64  `json:"nusd"`
}

func (r *usageRow) add(o *usageRow) {
	if o.Tier != "" {
		r.Tier = o.Tier
	}
	r.Requests = satAdd(r.Requests, o.Requests)
	r.Input = satAdd(r.Input, o.Input)
	r.Cached = satAdd(r.Cached, o.Cached)
	r.Output = satAdd(r.Output, o.Output)
	r.Cost = satAdd(r.Cost, o.Cost)
}

// usageFile is a writer's day file.
type usageFile struct {
	Version int                 `json:"version"`
	Zone    string              `json:"zone"`
	Day     string              `json:"day"`
	Writer  string              `json:"writer"`
	SavedAt string              `json:"saved_at"`
	Rows    map[string]usageRow `json:"rows"` // by key_id
}

// usageDay is this writer's totals of one day.
type usageDay struct {
	rows   map[string]*usageRow
	dirty  bool // changed since written
	warned bool // the row bound was logged
}

// add counts a key's delta in the day: in its own row, or past
// usageMaxRows in usageOther. It reports a key folded into usageOther.
func (d *usageDay) add(id string, r *usageRow) (folded bool) {
	row := d.rows[id]
	if row == nil {
		if len(d.rows) >= usageMaxRows {
			id, folded = usageOther, true
			o := *r
			o.Tier = ""
			r = &o
			row = d.rows[id]
		}
		if row == nil {
			row = new(usageRow)
			d.rows[id] = row
		}
	}
	row.add(r)
	d.dirty = true
	return folded
}

// usageBook is a zone's usage record on its way to where it is kept.
type usageBook struct {
	mu      sync.Mutex // one flush or read at a time
	zone    string
	storage certmagic.Storage // nil (a zone made outside a running Caddy): kept in memory
	writer  string
	logger  *zap.Logger
	// retention is usage_retention, the latest config's, in days.
	retention atomic.Int32
	// totals are this writer's rows of the days it holds (storage): the
	// days that changed since written, and today.
	totals  map[int32]*usageDay
	swept   int32 // the day the retention was last applied in storage
	scratch []usageDelta
	// With store redis (billing_redis.go): the sequence number of the
	// last batch made, and the batches not yet known to be in Redis.
	seq     int64
	pending []usageBatch
}

func newUsageBook(zone string, storage certmagic.Storage, logger *zap.Logger) *usageBook {
	var w [8]byte
	_, _ = rand.Read(w[:])
	return &usageBook{zone: zone, storage: storage, writer: hex.EncodeToString(w[:]), logger: logger,
		totals: map[int32]*usageDay{}, swept: -1}
}

func usageDir(zone string) string { return "llm_ratelimit/" + zone + "/usage" }

func usageDayDir(zone string, day int32) string { return usageDir(zone) + "/" + dayString(day) }

func (b *usageBook) fileKey(day int32) string {
	return usageDayDir(b.zone, day) + "/" + b.writer + ".json"
}

// keepFrom is the first day the record keeps when it is day today: the
// retention counts today.
func (b *usageBook) keepFrom(today int32) int32 { return today - b.retention.Load() + 1 }

// attachUsage gives the zone its usage book the first time a config takes
// it, and sets the retention of the latest config (days < 0: off, nothing
// is counted; the book keeps what it holds). Later configs (reloads) keep
// that book and its writer.
func (z *zone) attachUsage(storage certmagic.Storage, logger *zap.Logger, days int) {
	z.use.mu.Lock()
	defer z.use.mu.Unlock()
	if days < 0 {
		z.use.on.Store(false)
		return
	}
	if days == 0 {
		days = defaultUsageRetention
	}
	if z.use.book == nil {
		z.use.book = newUsageBook(z.name, storage, logger)
	}
	b := z.use.book
	if b.retention.Swap(int32(days)) != int32(days) {
		b.mu.Lock()
		b.swept = -1 // apply the new retention at the next flush
		b.mu.Unlock()
	}
	z.use.on.Store(true)
	z.startFlusher()
}

// flush takes the shards' counts and keeps them: in Redis for a shared
// zone, else in this writer's files.
func (b *usageBook) flush(z *zone) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sh := z.shared.Load(); sh != nil {
		b.flushRedis(z, sh.rs)
		return
	}
	b.absorb(z)
	b.save(z, dayOf(now().UnixNano()))
}

// absorb adds the shards' counts to the totals. The caller holds b.mu.
func (b *usageBook) absorb(z *zone) {
	b.scratch = z.drainUsage(b.scratch[:0])
	for i := range b.scratch {
		x := &b.scratch[i]
		d := b.totalsOf(x.u.day)
		if d.add(x.kp.id(), &usageRow{Tier: x.tier, Requests: int64(x.u.requests), Input: x.u.in, Cached: x.u.cached,
			Output: x.u.out, Cost: x.u.cost}) && !d.warned {
			d.warned = true
			b.logger.Warn("usage: a day's keys past the bound are added up in one row",
				zap.String("zone", b.zone), zap.String("day", dayString(x.u.day)), zap.Int("bound", usageMaxRows), zap.String("row", usageOther))
		}
	}
	clear(b.scratch)
}

// totalsOf is this writer's totals of day, read back from its file when the
// book no longer holds them (a day counted again after it was written).
// The caller holds b.mu.
func (b *usageBook) totalsOf(day int32) *usageDay {
	if d := b.totals[day]; d != nil {
		return d
	}
	d := &usageDay{rows: map[string]*usageRow{}}
	b.totals[day] = d
	if b.storage == nil {
		return d
	}
	f, raw, err := loadUsageFile(b.storage, b.fileKey(day))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		// Never overwrite what cannot be read: move it aside.
		aside := b.fileKey(day) + ".corrupt-" + strconv.FormatInt(now().Unix(), 10)
		b.logger.Error("usage: a day file cannot be read: moved aside", zap.String("zone", b.zone),
			zap.String("file", b.fileKey(day)), zap.String("moved_to", aside), zap.Error(err))
		metricLedgerErrors.WithLabelValues(b.zone).Inc()
		if raw != nil && b.storage.Store(context.Background(), aside, raw) == nil {
			_ = b.storage.Delete(context.Background(), b.fileKey(day))
		}
	default:
		for id, r := range f.Rows {
			row := r
			d.rows[id] = &row
		}
	}
	return d
}

// save writes the days that changed, lets go of the past days written,
// and applies the retention. The caller holds b.mu.
func (b *usageBook) save(z *zone, today int32) {
	keep := b.keepFrom(today)
	for day, d := range b.totals {
		switch {
		case day < keep:
			delete(b.totals, day) // past the retention: never written
		case b.storage == nil || !d.dirty:
		default:
			if err := b.write(day, d); err != nil {
				b.logger.Error("usage: saving a day file", zap.String("zone", b.zone), zap.String("file", b.fileKey(day)), zap.Error(err))
				metricLedgerErrors.WithLabelValues(b.zone).Inc()
				continue // dirty still: the next flush tries again
			}
			d.dirty = false
		}
		if b.storage != nil && day != today && !d.dirty {
			delete(b.totals, day)
		}
	}
	if b.storage != nil && b.swept != today {
		b.swept = today
		b.sweep(keep)
	}
}

func (b *usageBook) write(day int32, d *usageDay) error {
	f := usageFile{Version: 1, Zone: b.zone, Day: dayString(day), Writer: b.writer,
		SavedAt: now().UTC().Format(time.RFC3339), Rows: make(map[string]usageRow, len(d.rows))}
	for id, r := range d.rows {
		f.Rows[id] = *r
	}
	raw, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return b.storage.Store(context.Background(), b.fileKey(day), raw)
}

// sweep deletes the zone's day directories before keep.
func (b *usageBook) sweep(keep int32) {
	ctx := context.Background()
	dirs, err := b.storage.List(ctx, usageDir(b.zone), false)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			b.logger.Error("usage: listing the days to apply the retention", zap.String("zone", b.zone), zap.Error(err))
		}
		return
	}
	for _, dir := range dirs {
		day, ok := parseDay(path.Base(dir))
		if !ok || day >= keep {
			continue
		}
		files, _ := b.storage.List(ctx, dir, true)
		for _, f := range files {
			_ = b.storage.Delete(ctx, f)
		}
		if err := b.storage.Delete(ctx, dir); err != nil && b.storage.Exists(ctx, dir) {
			b.logger.Error("usage: deleting a day past the retention", zap.String("zone", b.zone), zap.String("day", path.Base(dir)), zap.Error(err))
		}
	}
}

func loadUsageFile(s certmagic.Storage, key string) (f usageFile, raw []byte, err error) {
	raw, err = s.Load(context.Background(), key)
	if err != nil {
		return f, nil, err
	}
	if err := json.Unmarshal(raw, &f); err != nil || f.Version != 1 || f.Rows == nil {
		if err == nil {
			err = fmt.Errorf("version %d, rows %v: not a usage file of this plugin", f.Version, f.Rows != nil)
		}
		return f, raw, err
	}
	return f, raw, nil
}

// readStored is the rows of days from..to in storage (or in memory), one
// day at a time to emit, key_ids sorted; keyID, when not empty, keeps only
// that key's row.
func (b *usageBook) readStored(z *zone, from, to int32, keyID string, emit func(day int32, rows []UsageRow) error) error {
	// This writer's totals are the freshest, counts not yet flushed
	// included: they stand in for its files of the days it holds.
	b.mu.Lock()
	b.absorb(z)
	mine := map[int32]map[string]usageRow{}
	for day, d := range b.totals {
		if day < from || day > to {
			continue
		}
		rows := make(map[string]usageRow, len(d.rows))
		for id, r := range d.rows {
			if keyID == "" || id == keyID {
				rows[id] = *r
			}
		}
		mine[day] = rows
	}
	b.mu.Unlock()

	ctx := context.Background()
	for day := from; day <= to; day++ {
		sum := map[string]*usageRow{}
		add := func(id string, r usageRow) {
			if keyID != "" && id != keyID {
				return
			}
			if s := sum[id]; s != nil {
				s.add(&r)
			} else {
				sum[id] = &r
			}
		}
		held, isHeld := mine[day]
		for id, r := range held {
			add(id, r)
		}
		if b.storage != nil {
			files, err := b.storage.List(ctx, usageDayDir(b.zone, day), false)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("listing the usage of %s: %v", dayString(day), err)
			}
			for _, key := range files {
				name := path.Base(key)
				if !strings.HasSuffix(name, ".json") || (isHeld && name == b.writer+".json") {
					continue
				}
				f, _, err := loadUsageFile(b.storage, key)
				if errors.Is(err, fs.ErrNotExist) {
					continue // deleted since it was listed
				}
				if err != nil {
					b.logger.Error("usage: a day file cannot be read: its rows are left out", zap.String("zone", b.zone), zap.String("file", key), zap.Error(err))
					metricLedgerErrors.WithLabelValues(b.zone).Inc()
					continue
				}
				for id, r := range f.Rows {
					add(id, r)
				}
			}
		}
		if err := emit(day, sortedRows(day, sum)); err != nil {
			return err
		}
	}
	return nil
}

// sortedRows are a day's rows for the API, sorted by key_id.
func sortedRows(day int32, sum map[string]*usageRow) []UsageRow {
	if len(sum) == 0 {
		return nil
	}
	ds := dayString(day)
	rows := make([]UsageRow, 0, len(sum))
	for id, r := range sum {
		rows = append(rows, UsageRow{Day: ds, KeyID: id, Tier: r.Tier, Requests: r.Requests, InputTokens: r.Input,
			CachedInputTokens: r.Cached, OutputTokens: r.Output, CostUSD: usd(r.Cost)})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].KeyID < rows[j].KeyID })
	return rows
}
