package auth

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// RedisStore keeps the cached keys in Redis (--cache-store redis://... or
// rediss://... for TLS), one hash per account, the values encrypted
// exactly as in the file: what Redis holds is no more usable than the
// file would be. Every call is bounded by a short timeout, so a Redis that
// is down or slow costs a login at most that; the provider then goes on
// with what it holds in memory.
type RedisStore struct {
	client  *redis.Client
	prefix  string
	timeout time.Duration
	where   string // the URL without its password, for messages
	// Logger says when Redis goes away and comes back.
	Logger zerolog.Logger
	// down is set while the last call to Redis failed: the proxy then
	// serves from memory (degraded), until a call succeeds again.
	down atomic.Bool
}

// Up reports whether the last call to Redis succeeded (true before any).
func (s *RedisStore) Up() bool { return !s.down.Load() }

// seen records the outcome of a call and logs the changes of state.
func (s *RedisStore) seen(err error) error {
	if err == nil {
		if s.down.CompareAndSwap(true, false) {
			s.Logger.Info().Str("redis", s.where).Msg("Redis is back: the token cache is shared again")
		}
		return nil
	}
	err = s.fail(err)
	if s.down.CompareAndSwap(false, true) {
		s.Logger.Error().Str("error", err.Error()).
			Msg("Redis unavailable: serving from memory and fetching tokens alone until it is back")
	}
	return err
}

// quietRedis drops go-redis's own log lines (unstructured, on stderr):
// the store logs Redis's state changes itself, once each.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once

// NewRedisStore connects lazily to the Redis at rawURL
// (redis://[user:pass@]host:port/db).
func NewRedisStore(rawURL string) (*RedisStore, error) {
	quietOnce.Do(func() { redis.SetLogger(quietRedis{}) })
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("--cache-store: %s", redactURL(rawURL))
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = time.Second, time.Second, time.Second
	opt.MaxRetries = 1
	opt.ContextTimeoutEnabled = true // a login's deadline bounds its calls too
	return &RedisStore{client: redis.NewClient(opt), prefix: "emailproxy:account:", timeout: 2 * time.Second,
		where: redactURL(rawURL)}, nil
}

// RedactStoreURL is a --cache-store value fit to show: a URL's password
// is masked.
func RedactStoreURL(spec string) string {
	if strings.Contains(spec, "://") {
		return redactURL(spec)
	}
	return spec
}

// redactURL is u without a password.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(an unparsable URL)"
	}
	return u.Redacted()
}

// Load reads every account's cached keys.
func (s *RedisStore) Load() (map[string]map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	out := map[string]map[string]string{}
	iter := s.client.Scan(ctx, 0, s.prefix+"*", 100).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		vals, err := s.client.HGetAll(ctx, key).Result()
		if err != nil {
			return nil, s.seen(err)
		}
		kept := map[string]string{}
		for _, k := range CachedKeys {
			if v, ok := vals[k]; ok {
				kept[k] = v
			}
		}
		if len(kept) > 0 {
			out[strings.TrimPrefix(key, s.prefix)] = kept
		}
	}
	if err := s.seen(iter.Err()); err != nil {
		return nil, err
	}
	return out, nil
}

// saveScript writes an account's keys (ARGV: the salt they are encrypted
// under or "", the number of pairs to set, the pairs, the keys to delete)
// unless Redis already holds the account under another salt: another
// proxy accepted a different password first, and its tokens win. Of the
// proxies' last_activity the newest stays.
var saveScript = redis.NewScript(`
local salt = ARGV[1]
if salt ~= '' then
  local cur = redis.call('hget', KEYS[1], 'token_salt')
  if cur and cur ~= salt then return 0 end
end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local k, v = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local older = false
  if k == 'last_activity' then
    local cur = tonumber(redis.call('hget', KEYS[1], k) or '')
    older = cur ~= nil and tonumber(v) ~= nil and tonumber(v) < cur
  end
  if not older then redis.call('hset', KEYS[1], k, v) end
end
for i = 3 + 2 * n, #ARGV do redis.call('hdel', KEYS[1], ARGV[i]) end
if salt ~= '' and redis.call('get', KEYS[2]) == salt then redis.call('del', KEYS[2]) end
return 1
`)

// claimScript: KEYS account hash, claim key; ARGV salt, ttl ms.
var claimScript = redis.NewScript(`
local cur = redis.call('hget', KEYS[1], 'token_salt')
if cur then return cur end
local held = redis.call('get', KEYS[2])
if held then return held end
redis.call('set', KEYS[2], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
`)

// Claim: see SharedStore.
func (s *RedisStore) Claim(account, salt string, ttl time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	held, err := claimScript.Run(ctx, s.client, []string{s.prefix + account, claimKey(account)}, salt, ttl.Milliseconds()).Text()
	return held, s.seen(err)
}

// Claimed: see SharedStore.
func (s *RedisStore) Claimed(account string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	held, err := s.client.Get(ctx, claimKey(account)).Result()
	if err == redis.Nil {
		return "", s.seen(nil)
	}
	return held, s.seen(err)
}

// Unclaim: see SharedStore.
func (s *RedisStore) Unclaim(account, salt string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return s.seen(unlockScript.Run(ctx, s.client, []string{claimKey(account)}, salt).Err())
}

func claimKey(account string) string { return "emailproxy:key-claim:" + account }

// Save sets and deletes some cached keys of one account, at once. Values
// encrypted under another salt than the one Redis holds are refused with
// ErrSaltConflict.
func (s *RedisStore) Save(account string, set map[string]string, del []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	args := []any{set["token_salt"], len(set)}
	for k, v := range set {
		args = append(args, k, v)
	}
	for _, k := range del {
		args = append(args, k)
	}
	ok, err := saveScript.Run(ctx, s.client, []string{s.prefix + account, claimKey(account)}, args...).Int()
	if err := s.seen(err); err != nil {
		return err
	}
	if ok == 0 {
		return fmt.Errorf("account %s: %w", account, ErrSaltConflict)
	}
	return nil
}

// LoadAccount reads one account's cached keys.
func (s *RedisStore) LoadAccount(account string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	vals, err := s.client.HGetAll(ctx, s.prefix+account).Result()
	if err := s.seen(err); err != nil {
		return nil, err
	}
	return vals, nil
}

// unlockScript deletes the lock only if it still holds this proxy's
// value: a lock that expired and was taken by another proxy stays its.
var unlockScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`)

// LockFetch takes the account's fetch lock (SET NX with an expiry),
// trying again every 50 ms until ctx ends.
func (s *RedisStore) LockFetch(ctx context.Context, account string, ttl time.Duration) (func(), error) {
	key, value := "emailproxy:fetch-lock:"+account, newSalt()
	heldTooLong := fmt.Errorf("another proxy has held the token fetch lock of account %s for too long", account)
	for {
		try, cancel := context.WithTimeout(ctx, s.timeout)
		ok, err := s.client.SetNX(try, key, value, ttl).Result()
		cancel()
		if err != nil && ctx.Err() != nil {
			// The wait ended during the call: not Redis's failure.
			return nil, heldTooLong
		}
		if err := s.seen(err); err != nil {
			return nil, err
		}
		if ok {
			return func() {
				ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
				defer cancel()
				s.seen(unlockScript.Run(ctx, s.client, []string{key}, value).Err())
			}, nil
		}
		select {
		case <-ctx.Done():
			return nil, heldTooLong
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Client is the store's connection to Redis, for what else the proxies of
// a fleet share (cluster.Mailboxes).
func (s *RedisStore) Client() *redis.Client { return s.client }

// Observe records the outcome of a call made through Client: Redis's
// up/down state, its gauge and its logs are the store's.
func (s *RedisStore) Observe(err error) error { return s.seen(err) }

// Close ends the connections.
func (s *RedisStore) Close() error { return s.client.Close() }

func (s *RedisStore) fail(err error) error {
	return fmt.Errorf("Redis at %s: %v", s.where, err)
}
