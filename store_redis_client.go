package llmratelimit

// The shared store's connection: its config, the go-redis universal client
// (one node, a Cluster or a Sentinel-guarded primary), and the pool that
// shares one client per config across reloads. The scripts and the
// admission are in store_redis.go.

import (
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// StoreConfig moves a zone's buckets and concurrency slots to a shared
// store, so that several gateway instances enforce one limit.
type StoreConfig struct {
	// Redis is the only store so far.
	Redis *RedisConfig `json:"redis,omitempty"`
}

// RedisConfig configures the Redis store.
type RedisConfig struct {
	// Address is host:port of the Redis server.
	Address string `json:"address,omitempty"`
	// Addresses are more host:port: a cluster's seed nodes, or the
	// Sentinels (with Sentinel), with Address or instead of it.
	Addresses []string `json:"addresses,omitempty"`
	// URL is a redis:// or rediss:// (TLS) URL, instead of addresses.
	URL string `json:"url,omitempty"`
	// Cluster talks to a Redis Cluster (or Valkey cluster mode): the
	// addresses are seed nodes, and commands follow MOVED and ASK.
	Cluster bool `json:"cluster,omitempty"`
	// Sentinel is the name of the master that the Sentinels at the
	// addresses watch: the client follows its failovers.
	Sentinel string `json:"sentinel,omitempty"`
	// Username and Password authenticate (ACL); placeholders such as
	// {env.REDIS_PASSWORD} are replaced at provision time.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// TLS connects with TLS (rediss:// URLs do anyway).
	TLS bool `json:"tls,omitempty"`
	// Prefix starts every Redis key. Default "llm_ratelimit:".
	Prefix string `json:"prefix,omitempty"`
	// Fail is what happens when Redis cannot be reached: "open" (default)
	// admits on this instance's own buckets and counts
	// caddy_llm_ratelimit_store_errors_total; "closed" answers 503.
	Fail string `json:"fail,omitempty"`
	// Timeout bounds each call to Redis. Default 100ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// redisStore is a handler's connection to the shared store.
type redisStore struct {
	client   redis.UniversalClient
	prefix   string
	failOpen bool
	timeout  time.Duration
	logger   *zap.Logger
	lastWarn atomic.Int64
	leaseSeq atomic.Uint64
	instance string
	poolKey  string
	batch    *batcher // the hot scripts' calls, pipelined together
}

func newRedisStore(c *RedisConfig, logger *zap.Logger) (*redisStore, error) {
	repl := caddy.NewReplacer() // {env.*} and other global placeholders
	uo := &redis.UniversalOptions{
		Addrs:         c.addrs(),
		MasterName:    c.Sentinel,
		IsClusterMode: c.Cluster,
		Username:      repl.ReplaceKnown(c.Username, ""),
		Password:      repl.ReplaceKnown(c.Password, ""),
	}
	if c.URL != "" {
		o, err := redis.ParseURL(repl.ReplaceKnown(c.URL, ""))
		if err != nil {
			return nil, fmt.Errorf("store redis url: %v", err)
		}
		uo.Addrs, uo.DB, uo.TLSConfig = []string{o.Addr}, o.DB, o.TLSConfig
		if uo.Username == "" && uo.Password == "" {
			uo.Username, uo.Password = o.Username, o.Password
		}
	}
	if len(uo.Addrs) == 0 {
		return nil, errors.New("store redis: address or url is required")
	}
	if c.TLS && uo.TLSConfig == nil {
		uo.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	timeout := time.Duration(c.Timeout)
	if timeout <= 0 {
		timeout = 100 * time.Millisecond
	}
	uo.DialTimeout, uo.ReadTimeout, uo.WriteTimeout = timeout, timeout, timeout
	// One try per call: fail open or closed decides what a failure means.
	// A cluster still follows MOVED and ASK redirections.
	uo.MaxRetries = -1
	prefix := c.Prefix
	if prefix == "" {
		prefix = "llm_ratelimit:"
	}
	var id [6]byte // names this instance's leases
	_, _ = crand.Read(id[:])
	client := redis.NewUniversalClient(uo)
	return &redisStore{client: client, prefix: prefix, failOpen: c.Fail != "closed",
		timeout: timeout, logger: logger, instance: hex.EncodeToString(id[:]), batch: newBatcher(client, timeout)}, nil
}

// addrs is Address and Addresses.
func (c *RedisConfig) addrs() []string {
	var a []string
	if c.Address != "" {
		a = append(a, c.Address)
	}
	return append(a, c.Addresses...)
}

// zoneBase starts every key of a zone: the prefix and the zone in a hash
// tag, so that a Redis Cluster keeps all of them in one slot and one
// script can touch the key's, the key × model and the account's buckets
// atomically. A zone is served by one shard; more zones spread.
func (rs *redisStore) zoneBase(zone string) string { return "{" + rs.prefix + zone + "}:" }

// warn logs a store failure at most once every 10 seconds.
func (rs *redisStore) warn(msg string, err error) {
	nowNs := now().UnixNano()
	last := rs.lastWarn.Load()
	if nowNs-last < int64(10*time.Second) || !rs.lastWarn.CompareAndSwap(last, nowNs) {
		return
	}
	rs.logger.Warn(msg, zap.Error(err))
}

// stores shares one client per store config across config reloads: the
// old config's requests still finish on it while the new config uses it.
var stores = caddy.NewUsagePool()

func loadRedisStore(c *RedisConfig, logger *zap.Logger) (*redisStore, error) {
	key := fmt.Sprintf("%s|%v|%s|%t|%s|%s|%s|%t|%s|%s|%d", c.Address, c.Addresses, c.URL, c.Cluster, c.Sentinel,
		c.Username, c.Password, c.TLS, c.Prefix, c.Fail, c.Timeout)
	v, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		rs, err := newRedisStore(c, logger)
		if err != nil {
			return nil, err
		}
		rs.poolKey = key
		return rs, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*redisStore), nil
}

// Destruct closes the client when no config uses it any more.
func (rs *redisStore) Destruct() error {
	if rs.batch != nil {
		rs.batch.close()
	}
	return rs.client.Close()
}
