package engine

import (
	"strconv"
	"sync"
	"testing"
	"time"
)

// savedKeys is a token cache that remembers what was saved.
type savedKeys struct {
	mu   sync.Mutex
	vals map[string]map[string]string
}

func (s *savedKeys) Load() (map[string]map[string]string, error) {
	return map[string]map[string]string{}, nil
}

func (s *savedKeys) Save(account string, set map[string]string, del []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vals[account] == nil {
		s.vals[account] = map[string]string{}
	}
	for k, v := range set {
		s.vals[account][k] = v
	}
	for _, k := range del {
		delete(s.vals[account], k)
	}
	return nil
}

func (s *savedKeys) get(account, key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vals[account][key]
}

// A session that stays open passes on its server's writes to the account
// (its last_activity) every ActivityEvery, not only when it ends.
func TestActivityOfOpenSession(t *testing.T) {
	store := &savedKeys{vals: map[string]map[string]string{}}
	env := startEnv(t, envOptions{store: store, engine: Options{ActivityEvery: 50 * time.Millisecond}})
	before := time.Now().Unix()
	p := popLogin(t, env.popAddr, testAccount, testPassword)
	defer p.ok("QUIT")
	p.ok("STAT")
	after := time.Now().Unix()
	// Any write passed on will do: a write less than ActivityEvery after
	// the last one passed on waits for the next (or the session's end),
	// so waiting for the very last write to be passed on could wait for
	// ever when the sweep runs between the login's answer and STAT's.
	waitFor(t, "the sweep to pass on the session's activity", func() bool {
		env.srv.relayMu.Lock()
		defer env.srv.relayMu.Unlock()
		for r := range env.srv.relays {
			if r.noted.Load() != 0 {
				return true
			}
		}
		return false
	})
	env.provider.Close() // saves what it was told; the session is still open
	v := store.get(testAccount, "last_activity")
	if at, err := strconv.ParseInt(v, 10, 64); err != nil || at < before || at > after {
		t.Fatalf("last_activity = %q, want a time in [%d, %d]", v, before, after)
	}
}
