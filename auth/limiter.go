package auth

import (
	"sync"
	"time"
)

// limiter slows password guessing: after maxFreeFailures wrong passwords
// for one account, or from one client address, further attempts are
// refused at once (nothing sleeps, so no event loop or worker is held) for
// a lock-out that doubles with each failure, up to maxLockout. A success
// clears the account's and the address's record.
type limiter struct {
	base time.Duration
	mu   sync.Mutex
	m    map[string]*failures
}

type failures struct {
	count int
	until time.Time
	last  time.Time
}

const (
	maxFreeFailures = 5
	maxLockout      = 5 * time.Minute
	maxTracked      = 100_000
)

func newLimiter(base time.Duration) *limiter {
	return &limiter{base: base, m: map[string]*failures{}}
}

// blocked reports how long key is still locked out.
func (l *limiter) blocked(key string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.m[key]; f != nil && now.Before(f.until) {
		return f.until.Sub(now)
	}
	return 0
}

func (l *limiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.m[key]
	if f == nil {
		if len(l.m) >= maxTracked {
			l.pruneLocked(now)
		}
		f = &failures{}
		l.m[key] = f
	}
	f.count++
	f.last = now
	if f.count >= maxFreeFailures {
		d := l.base << min(f.count-maxFreeFailures, 20)
		f.until = now.Add(min(d, maxLockout))
	}
}

func (l *limiter) succeed(key string) {
	l.mu.Lock()
	delete(l.m, key)
	l.mu.Unlock()
}

// pruneLocked forgets records idle for longer than the longest lock-out.
func (l *limiter) pruneLocked(now time.Time) {
	for k, f := range l.m {
		if now.Sub(f.last) > maxLockout && now.After(f.until) {
			delete(l.m, k)
		}
	}
}
