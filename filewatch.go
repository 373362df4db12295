package llmratelimit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
)

// Files that reload themselves: prices_file and keys_file are read again
// when they change on disk, without a config reload (Caddy sees the same
// config, so `caddy reload` would not read them). A relay adds customer
// keys all day, and LiteLLM's prices change upstream every day. A file is
// checked every fileCheckEvery: its size and modification time first,
// then, when those changed or are too recent to trust (a rewrite within
// the file system's time granularity keeps them), its content's hash. A
// new file that cannot be used keeps the table in force, and the log says
// why; caddy_llm_ratelimit_file_reloads_total{zone,file,result} counts
// both outcomes.

// fileCheckEvery is how often a watched file is checked.
const fileCheckEvery = 5 * time.Second

// fileTicks gives the watcher its checks: a ticker in production; tests
// replace it to check on demand, without waiting.
var fileTicks = func() (<-chan time.Time, func()) {
	t := time.NewTicker(fileCheckEvery)
	return t.C, t.Stop
}

// watchedFile is one file a handler reads again when it changes.
type watchedFile struct {
	kind string // the directive: keys_file or prices_file
	path string
	// apply reads the file's new content and puts it in force; an error
	// keeps what is in force.
	apply func(content []byte) error
	size  int64
	mod   time.Time
	sum   [sha256.Size]byte
}

// newWatchedFile stamps a file as it was read at provision.
func newWatchedFile(kind, path string, apply func([]byte) error) *watchedFile {
	f := &watchedFile{kind: kind, path: path, apply: apply}
	if fi, err := os.Stat(path); err == nil {
		f.size, f.mod = fi.Size(), fi.ModTime()
	}
	if b, err := os.ReadFile(path); err == nil {
		f.sum = sha256.Sum256(b)
	}
	return f
}

// check reads the file again if it changed, and applies it. It returns
// "" when nothing changed, else the result: "ok" or "error".
func (f *watchedFile) check(logger *zap.Logger) string {
	fi, err := os.Stat(f.path)
	if err != nil {
		if f.size < 0 {
			return "" // already reported missing
		}
		f.size = -1
		logger.Error(f.kind+" cannot be read; keeping the table in force", zap.String("file", f.path), zap.Error(err))
		return "error"
	}
	// A size and time that match, older than the file system's time
	// granularity could hide, mean the same file.
	if fi.Size() == f.size && fi.ModTime().Equal(f.mod) && time.Since(fi.ModTime()) > 2*time.Second {
		return ""
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		logger.Error(f.kind+" cannot be read; keeping the table in force", zap.String("file", f.path), zap.Error(err))
		return "error"
	}
	f.size, f.mod = fi.Size(), fi.ModTime()
	sum := sha256.Sum256(b)
	if bytes.Equal(sum[:], f.sum[:]) {
		return ""
	}
	f.sum = sum
	if err := f.apply(b); err != nil {
		logger.Error(f.kind+" changed but cannot be used; keeping the table in force", zap.String("file", f.path), zap.Error(err))
		return "error"
	}
	logger.Info(f.kind+" changed: reloaded", zap.String("file", f.path))
	return "ok"
}

// watchFiles checks the handler's files until its config is unloaded.
func (h *Handler) watchFiles(ctx context.Context, files []*watchedFile) {
	ticks, stop := fileTicks()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
		}
		for _, f := range files {
			if res := f.check(h.logger); res != "" {
				metricFileReloads.WithLabelValues(h.Zone, f.kind, res).Inc()
			}
		}
	}
}

// watchedFiles is the handler's files that reload themselves.
func (h *Handler) watchedFiles() []*watchedFile {
	var files []*watchedFile
	if h.KeysFile != "" {
		files = append(files, newWatchedFile("keys_file", h.KeysFile, func(b []byte) error {
			keys, err := h.buildKeys(b)
			if err != nil {
				return err
			}
			h.keys.Store(&keys)
			return nil
		}))
	}
	if h.PricesFile != "" && h.spend.prices != nil {
		files = append(files, newWatchedFile("prices_file", h.PricesFile, func(b []byte) error {
			t, skipped, err := parsePricesFile(h.PricesFile, b)
			if err != nil {
				return err
			}
			h.logSkipped(skipped)
			h.spend.prices.Store(t)
			return nil
		}))
	}
	return files
}

// keyTable is the keys in force: key → tier name.
type keyTable map[keyHash]string

// buildKeys is the api_key lines with the keys file's (content, when not
// nil) on top, every tier checked.
func (h *Handler) buildKeys(content []byte) (keyTable, error) {
	keys := make(keyTable, len(h.APIKeys))
	for i, k := range h.APIKeys {
		kh, err := parseKeySpec(k.Key)
		if err != nil {
			return nil, fmt.Errorf("api_keys[%d]: %v", i, err)
		}
		keys[kh] = k.Tier
	}
	if content != nil {
		entries, err := parseKeysBytes(h.KeysFile, content)
		if err != nil {
			return nil, fmt.Errorf("keys_file: %v", err)
		}
		for _, e := range entries {
			keys[e.hash] = e.tier
		}
	}
	for _, t := range keys {
		if _, ok := h.tiers[t]; !ok {
			return nil, fmt.Errorf("keys_file: unknown tier %q", t)
		}
	}
	return keys, nil
}
