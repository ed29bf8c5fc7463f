package upstream

import (
	"context"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/internal/contain"
	"github.com/rs/zerolog"
)

// Pool keeps connections to one upstream server open ahead of need:
// TCP connected, TLS done, greeting and capabilities read, not yet
// authenticated. A login takes one and goes straight to AUTHENTICATE,
// saving the connect, the handshake and the greeting (three or four round
// trips to a distant provider).
//
// Servers drop connections that stay unauthenticated (Exchange Online
// after 60 s), so each one is closed and replaced once it is maxAge old.
// The pool holds only as many as recent demand asks for: it starts at
// one, doubles its target each time a login finds it empty (up to max),
// and shrinks by one each time a connection ages out unused. After
// quietAfter without a login it stops replacing connections altogether.
type Pool struct {
	life       Life
	dial       func(context.Context) (*Conn, error)
	learn      func(*Conn) // sees every fresh connection (its greeting and capabilities)
	log        zerolog.Logger
	max        int
	maxAge     time.Duration
	quietAfter time.Duration

	mu        sync.Mutex
	idle      []warmConn // oldest first
	dialing   int
	target    int
	lastTake  time.Time
	reaperOn  bool
	dialFails int // consecutive failed refills: back off
	stats     PoolStats
}

type warmConn struct {
	u    *Conn
	born time.Time
}

// PoolStats count what the pool did, for tests and the debug endpoint.
type PoolStats struct {
	Hits, Misses, Expired, Dialed int
	OldestIdle                    time.Duration // age of the oldest idle connection
}

// NewPool makes a pool of at most max connections from dial, each kept
// at most maxAge; learn sees every connection dialled.
func NewPool(life Life, dial func(context.Context) (*Conn, error), learn func(*Conn), log zerolog.Logger, max int, maxAge time.Duration) *Pool {
	return &Pool{life: life, dial: dial, learn: learn, log: log, max: max, maxAge: maxAge, quietAfter: 5 * time.Minute}
}

// Take returns a warm connection, or nil when there is none (the caller
// dials). Either way the pool refills in the background.
func (p *Pool) Take() *Conn {
	if p == nil || p.max <= 0 {
		return nil
	}
	now := time.Now()
	var stale []*Conn
	defer func() { closeAll(stale) }() // after the lock: closing writes to the network
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastTake = now
	var got *Conn
	for len(p.idle) > 0 && got == nil {
		w := p.idle[0]
		p.idle = p.idle[1:]
		if now.Sub(w.born) < p.maxAge {
			got = w.u
		} else {
			p.stats.Expired++
			stale = append(stale, w.u)
		}
	}
	if got != nil {
		p.stats.Hits++
	} else {
		p.stats.Misses++
		p.target = min(max(p.target*2, 1), p.max)
	}
	p.refillLocked()
	return got
}

// Offer puts a connection dialled for another reason (learning the
// server's greeting at start) into the pool instead of closing it.
func (p *Pool) Offer(u *Conn) {
	if p == nil || p.max <= 0 {
		u.Close()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.life.Ctx.Err() != nil || len(p.idle) >= p.max {
		u.Close()
		return
	}
	p.idle = append(p.idle, warmConn{u: u, born: time.Now()})
	p.target = max(p.target, 1)
	p.lastTake = time.Now() // counts as demand: a client is connecting
	p.refillLocked()
}

// refillLocked starts dials until idle + dialing reaches the target.
func (p *Pool) refillLocked() {
	if !p.reaperOn {
		p.reaperOn = true
		p.life.WG.Add(1)
		go p.reap()
	}
	for len(p.idle)+p.dialing < p.target {
		p.dialing++
		p.life.WG.Add(1)
		go p.dialOne()
	}
}

func (p *Pool) dialOne() {
	defer p.life.WG.Done()
	p.mu.Lock()
	fails := p.dialFails
	p.mu.Unlock()
	if fails > 0 { // the server is failing: do not hammer it
		select {
		case <-time.After(min(time.Duration(fails)*time.Second, 30*time.Second)):
		case <-p.life.Ctx.Done():
		}
	}
	u, err := p.dialContained()
	if err != nil {
		p.mu.Lock()
		p.dialing--
		p.dialFails++
		p.mu.Unlock()
		if p.life.Ctx.Err() == nil {
			p.log.Debug().Err(err).Msg("warm pool: dial failed")
		}
		return
	}
	if !p.keep(u) {
		u.Close() // not needed after all
	}
}

// dialContained is p.dial, where a panic (reading what the server sent)
// fails this dial only.
func (p *Pool) dialContained() (u *Conn, err error) {
	defer func() {
		if v := recover(); v != nil {
			u, err = nil, contain.Recovered(p.log, "dial", v)
		}
	}()
	return p.dial(p.life.Ctx)
}

// keep adds a freshly dialled connection to the pool if it is still
// wanted.
func (p *Pool) keep(u *Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing--
	p.dialFails = 0
	p.stats.Dialed++
	if p.life.Ctx.Err() != nil || len(p.idle) >= p.target {
		return false
	}
	p.learn(u)
	p.idle = append(p.idle, warmConn{u: u, born: time.Now()})
	return true
}

// reap closes connections about to reach maxAge and replaces them while
// the pool is in use; it ends with the server.
func (p *Pool) reap() {
	defer p.life.WG.Done()
	tick := time.NewTicker(max(p.maxAge/8, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-p.life.Ctx.Done():
			p.mu.Lock()
			all := p.idle
			p.idle = nil
			p.mu.Unlock()
			for _, w := range all {
				w.u.Close()
			}
			return
		case now := <-tick.C:
			var stale []*Conn
			p.mu.Lock()
			// Leave a margin of one tick so a connection taken is never
			// one the server is about to drop.
			for len(p.idle) > 0 && now.Sub(p.idle[0].born) >= p.maxAge-p.maxAge/8 {
				stale = append(stale, p.idle[0].u)
				p.idle = p.idle[1:]
				p.stats.Expired++
				p.target = max(p.target-1, 1)
			}
			if now.Sub(p.lastTake) > p.quietAfter {
				p.target = 0
			}
			p.refillLocked()
			p.mu.Unlock()
			closeAll(stale)
		}
	}
}

func closeAll(conns []*Conn) {
	for _, u := range conns {
		u.Close()
	}
}

// Snapshot returns the counters and the number of idle connections.
func (p *Pool) Snapshot() (PoolStats, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.stats
	if len(p.idle) > 0 {
		st.OldestIdle = time.Since(p.idle[0].born)
	}
	return st, len(p.idle)
}
