package auth

import (
	"net/netip"
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
//   - An IPv6 client is also counted by its /64 network, which is one
//     host's or subscriber's and costs nothing to move around in: the
//     network's wrong passwords per account, and the accounts it tried,
//     have the same limits as one address's, so rotating addresses
//     buys no guesses. A pair trusted as above is held back by neither.
//     An IPv4 address written as IPv6 (::ffff:a.b.c.d) is the IPv4
//     address.
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

// source is where a login comes from, as the limiter counts it.
type source struct {
	addr    string // the address, IPv4 unmapped
	network string // IPv6: the address's /64 ("2001:db8:1:2::/64"); else ""
}

func sourceOf(addr string) source {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return source{addr: addr} // not an address (a test's name): as it is
	}
	if ip.Is4() {
		return source{addr: addr} // IPv4 has one text form: no need to print it again
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return source{addr: ip.String()}
	}
	prefix, _ := ip.Prefix(64)
	return source{addr: ip.String(), network: prefix.String()}
}

// wide is what the address-wide count is kept for.
func (s source) wide() string {
	if s.network != "" {
		return s.network
	}
	return s.addr
}

// blocked reports how long a login of account from addr must wait, and
// whether the address-wide count (rather than the pair's) holds it.
func (l *limiter) blocked(account, addr string, now time.Time) (wait time.Duration, addressWide bool) {
	src := sourceOf(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.m[pairKey(account, src.addr)]
	if p != nil && now.Before(p.until) {
		return p.until.Sub(now), false
	}
	if p != nil && now.Sub(p.trusted) < trustFor {
		return 0, false
	}
	if src.network != "" {
		if n := l.m[pairKey(account, src.network)]; n != nil && now.Before(n.until) {
			return n.until.Sub(now), false
		}
	}
	if a := l.m[addrKey(src.wide())]; a != nil && now.Before(a.until) {
		return a.until.Sub(now), true
	}
	return 0, false
}

// fail records a wrong password (or unknown account) for the pair.
func (l *limiter) fail(account, addr string, now time.Time) {
	src := sourceOf(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.countLocked(pairKey(account, src.addr), maxFreeFailures, now)
	first := p.count == 1 // the first failure of this account from here
	if src.network != "" {
		first = l.countLocked(pairKey(account, src.network), maxFreeFailures, now).count == 1
	}
	if first && now.Sub(p.trusted) >= trustFor {
		// A new account tried from this address without success.
		l.countLocked(addrKey(src.wide()), maxFreeAccounts, now)
	}
}

// succeed records that the pair presented the right password.
func (l *limiter) succeed(account, addr string, now time.Time) {
	src := sourceOf(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.recordLocked(pairKey(account, src.addr), now)
	p.count, p.until, p.last, p.trusted = 0, time.Time{}, now, now
}

// countLocked counts one more failure in key's record (after forgiving
// old ones) and locks it out once free are used up.
func (l *limiter) countLocked(key string, free int, now time.Time) *failures {
	f := l.recordLocked(key, now)
	if now.Sub(f.last) > failureMemory && now.After(f.until) {
		f.count = 0 // old failures are forgiven
	}
	f.count++
	f.last = now
	l.lockLocked(f, free, now)
	return f
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
