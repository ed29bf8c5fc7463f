package auth

import (
	"sync"
	"time"
)

// limiter slows password guessing down per client address, never for a
// whole account: a password spray from other addresses must not lock the
// real app out of its mailbox.
//
//   - Each (account, address) pair has maxFreeFailures free wrong
//     passwords, then a lock-out that doubles with each further failure,
//     up to maxLockout. Unknown accounts are counted the same way.
//   - Each address may try maxFreeAccounts different accounts without
//     success; past that, its attempts at accounts it has not logged in to
//     are locked out the same way (a spray across accounts).
//   - A pair that presented the right password within trustFor is never
//     held back by the address-wide count, and nothing another address
//     does touches it. Its success clears its own failures only, so an
//     attacker gets no fresh guesses when the victim logs in.
//
// Refusals are immediate (nothing sleeps, so no worker is held). Records
// are kept in memory, at most maxTracked of them.
type limiter struct {
	base time.Duration
	mu   sync.Mutex
	m    map[string]*failures
}

type failures struct {
	count   int       // wrong passwords (pairs) or accounts tried (addresses)
	until   time.Time // locked out until then
	last    time.Time // last failure or success
	trusted time.Time // pairs: the right password was presented then
}

const (
	maxFreeFailures = 5
	maxFreeAccounts = 10
	maxLockout      = 5 * time.Minute
	trustFor        = 24 * time.Hour
	failureMemory   = time.Hour // failures older than this are forgotten
	maxTracked      = 100_000
)

func newLimiter(base time.Duration) *limiter {
	return &limiter{base: base, m: map[string]*failures{}}
}

func pairKey(account, addr string) string { return "pair\x00" + addr + "\x00" + account }
func addrKey(addr string) string          { return "addr\x00" + addr }

// blocked reports how long a login of account from addr must wait, and
// whether the address-wide count (rather than the pair's) holds it.
func (l *limiter) blocked(account, addr string, now time.Time) (wait time.Duration, addressWide bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.m[pairKey(account, addr)]
	if p != nil && now.Before(p.until) {
		return p.until.Sub(now), false
	}
	if p != nil && now.Sub(p.trusted) < trustFor {
		return 0, false
	}
	if a := l.m[addrKey(addr)]; a != nil && now.Before(a.until) {
		return a.until.Sub(now), true
	}
	return 0, false
}

// fail records a wrong password (or unknown account) for the pair.
func (l *limiter) fail(account, addr string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.recordLocked(pairKey(account, addr), now)
	if now.Sub(p.last) > failureMemory && now.After(p.until) {
		p.count = 0 // old failures are forgiven
	}
	p.count++
	p.last = now
	l.lockLocked(p, maxFreeFailures, now)
	if p.count == 1 && now.Sub(p.trusted) >= trustFor {
		// A new account tried from this address without success.
		a := l.recordLocked(addrKey(addr), now)
		if now.Sub(a.last) > failureMemory && now.After(a.until) {
			a.count = 0
		}
		a.count++
		a.last = now
		l.lockLocked(a, maxFreeAccounts, now)
	}
}

// succeed records that the pair presented the right password.
func (l *limiter) succeed(account, addr string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.recordLocked(pairKey(account, addr), now)
	p.count, p.until, p.last, p.trusted = 0, time.Time{}, now, now
}

func (l *limiter) lockLocked(f *failures, free int, now time.Time) {
	if f.count >= free {
		d := l.base << min(f.count-free, 20)
		f.until = now.Add(min(d, maxLockout))
	}
}

// recordLocked returns key's record, making room for it if needed.
func (l *limiter) recordLocked(key string, now time.Time) *failures {
	f := l.m[key]
	if f != nil {
		return f
	}
	if len(l.m) >= maxTracked {
		l.pruneLocked(now)
	}
	for k := range l.m { // still full: forget any one record
		if len(l.m) < maxTracked {
			break
		}
		delete(l.m, k)
	}
	f = &failures{}
	l.m[key] = f
	return f
}

// pruneLocked forgets records that hold nothing any more: no lock-out,
// no recent failure, no trust.
func (l *limiter) pruneLocked(now time.Time) {
	for k, f := range l.m {
		if now.Sub(f.last) > failureMemory && now.After(f.until) && now.Sub(f.trusted) >= trustFor {
			delete(l.m, k)
		}
	}
}
