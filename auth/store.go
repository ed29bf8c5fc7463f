package auth

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// CachedKeys are the keys the proxy owns in account sections; nothing else
// is ever written.
var CachedKeys = []string{"access_token", "access_token_expiry", "refresh_token", "token_salt",
	"token_iterations", "client_secret_encrypted", "last_activity"}

// Store keeps the cached keys of each account. Other backends (a secrets
// manager, Redis) implement the same two calls; the flows never see how.
type Store interface {
	// Load returns every account's cached keys.
	Load() (map[string]map[string]string, error)
	// Save sets and deletes some cached keys of one account.
	Save(account string, set map[string]string, del []string) error
}

// FileStore keeps the cached keys in an INI file: the configuration file
// itself (the default, as emailproxy.py does) or a separate --cache-store
// file. Writes edit only the cached keys, atomically.
type FileStore struct {
	Path string
	mu   sync.Mutex
}

// Load reads the cached keys of every account section; a missing file is
// an empty cache.
func (s *FileStore) Load() (map[string]map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fh, err := os.Open(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	f, err := config.Parse(fh)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for _, sec := range f.Sections {
		if !strings.Contains(sec.Name, "@") {
			continue
		}
		vals := map[string]string{}
		for _, k := range CachedKeys {
			if v, ok := sec.Get(k); ok {
				vals[k] = v
			}
		}
		if len(vals) > 0 {
			out[sec.Name] = vals
		}
	}
	return out, nil
}

// Save writes the changes in place.
func (s *FileStore) Save(account string, set map[string]string, del []string) error {
	changes := make([]config.Change, 0, len(set)+len(del))
	for _, k := range CachedKeys { // a stable order
		if v, ok := set[k]; ok {
			changes = append(changes, config.Change{Section: account, Key: k, Value: v})
		}
	}
	for _, k := range del {
		changes = append(changes, config.Change{Section: account, Key: k, Delete: true})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return config.Update(s.Path, changes)
}

// memoryStore keeps nothing across restarts (tests, and a provider with no
// store configured).
type memoryStore struct{}

func (memoryStore) Load() (map[string]map[string]string, error)    { return nil, nil }
func (memoryStore) Save(string, map[string]string, []string) error { return nil }

// ErrSaltConflict is a shared store refusing values encrypted under
// another salt than the one it holds for the account: another proxy
// accepted a different password first.
var ErrSaltConflict = errors.New("the shared token cache holds this account under another password")

// SharedStore is a Store that several proxies share (Redis). Before a
// proxy asks the identity provider for an account's token it takes the
// account's fetch lock and reads the account's keys again: when another
// proxy has just fetched (or rotated the refresh token), that result is
// used instead, so one request serves every instance.
type SharedStore interface {
	Store
	// LoadAccount reads one account's cached keys.
	LoadAccount(account string) (map[string]string, error)
	// Claim records, for ttl, that this proxy is making the account's key
	// from its first accepted password (salt names the key), so that the
	// other proxies wait for that key's values instead of accepting a
	// password of their own. It returns the salt of the claim that holds,
	// or of the key already stored: this one's if the account was free.
	Claim(account, salt string, ttl time.Duration) (string, error)
	// Claimed returns the salt of a claim in progress, "" if none.
	Claimed(account string) (string, error)
	// Unclaim drops the claim made with salt, if it still holds.
	Unclaim(account, salt string) error
	// LockFetch waits, until ctx ends, for the account's fetch lock. The
	// lock expires by itself after ttl, so a proxy that dies holding it
	// delays the others by ttl at most. unlock releases it if still held.
	LockFetch(ctx context.Context, account string, ttl time.Duration) (unlock func(), err error)
}
