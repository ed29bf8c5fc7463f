package upstream

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// Gates caps the authenticated upstream sessions one mailbox may
// hold on one upstream host. Exchange Online refuses a mailbox's 17th
// concurrent IMAP or POP3 session; a fleet of pollers sharing one mailbox
// would see random failures. Instead, logins over the cap wait in line
// (first come, first served, within their login timeout) for a session
// of that mailbox to end.
type Gates struct {
	limit int // 0: no cap
	// Evict, if set, closes one idle (lingering) session of key to make
	// room; it reports whether it did.
	Evict func(key string) bool
	// Shared, if set, holds the same cap across every proxy of a fleet
	// (Redis): a login takes its slot here first, then there.
	Shared SharedGates

	mu    sync.Mutex
	gates map[string]*gate
	// throttled holds the mailboxes the server throttles, until when
	// (throttle.go); an entry goes once its time has passed.
	throttled map[string]*Throttled
}

type gate struct {
	held    int
	waiting []chan struct{} // closed when handed a slot
}

func NewGates(limit int) *Gates {
	return &Gates{limit: limit, gates: map[string]*gate{}}
}

// MailboxKey names a mailbox on an upstream host for one protocol:
// servers count each protocol's sessions apart (Exchange: 16 IMAP and 16
// POP3 sessions per mailbox, each its own limit).
func MailboxKey(srv *config.Server, user string) string {
	return string(srv.Protocol) + "\x00" + strings.ToLower(srv.ServerAddress) + "\x00" + strings.ToLower(user)
}

// SharedGates is a cap per mailbox held across proxies (cluster.Mailboxes).
type SharedGates interface {
	// Acquire takes one of mailbox's limit slots, waiting in line until
	// ctx ends; full is called once if every slot is taken.
	Acquire(ctx context.Context, mailbox string, limit int, full func()) (release func(), err error)
}

// Acquire takes one of key's slots, waiting in line while all are held;
// the returned release gives it back (call it once).
func (m *Gates) Acquire(ctx context.Context, key string) (release func(), err error) {
	if m == nil || m.limit <= 0 {
		return func() {}, nil
	}
	local, err := m.acquireLocal(ctx, key)
	if err != nil || m.Shared == nil {
		return local, err
	}
	shared, err := m.Shared.Acquire(ctx, key, m.limit, func() {
		if m.Evict != nil {
			m.Evict(key) // an idle session of ours holds a shared slot too
		}
	})
	if err != nil {
		local()
		return nil, err
	}
	return func() { shared(); local() }, nil
}

// acquireLocal is Acquire within this proxy.
func (m *Gates) acquireLocal(ctx context.Context, key string) (release func(), err error) {
	release = func() { m.release(key) }
	if m.tryTake(key) {
		return release, nil
	}
	// Full: a lingering session of this mailbox is the cheapest to give up.
	if m.Evict != nil && m.Evict(key) && m.tryTake(key) {
		return release, nil
	}
	m.mu.Lock()
	g := m.gateLocked(key)
	if g.held < m.limit && len(g.waiting) == 0 {
		g.held++
		m.mu.Unlock()
		return release, nil
	}
	ch := make(chan struct{})
	g.waiting = append(g.waiting, ch)
	m.mu.Unlock()
	select {
	case <-ch:
		return release, nil
	case <-ctx.Done():
		m.mu.Lock()
		g := m.gateLocked(key)
		for i, w := range g.waiting {
			if w == ch {
				g.waiting = append(g.waiting[:i], g.waiting[i+1:]...)
				m.mu.Unlock()
				return nil, ctx.Err()
			}
		}
		m.mu.Unlock()
		// Handed a slot just as the wait ended: give it back.
		m.release(key)
		return nil, ctx.Err()
	}
}

// tryTake takes a slot of key if one is free and nobody waits for it.
func (m *Gates) tryTake(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.gateLocked(key)
	if g.held < m.limit && len(g.waiting) == 0 {
		g.held++
		return true
	}
	return false
}

func (m *Gates) gateLocked(key string) *gate {
	g := m.gates[key]
	if g == nil {
		g = &gate{}
		m.gates[key] = g
	}
	return g
}

// release hands key's slot to the first in line, or frees it.
func (m *Gates) release(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.gates[key]
	if g == nil {
		return
	}
	if len(g.waiting) > 0 {
		close(g.waiting[0])
		g.waiting = g.waiting[1:]
		return // the slot passes on: held stays the same
	}
	g.held--
	if g.held <= 0 {
		delete(m.gates, key)
	}
}

// HoldOff records that the server throttles mailbox key as t says: its
// logins are answered by Throttled until t.Until.
func (m *Gates) HoldOff(key string, t *Throttled) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.throttled == nil {
		m.throttled = map[string]*Throttled{}
	}
	if len(m.throttled) >= 64 { // forget the holds that are over
		now := time.Now()
		for k, h := range m.throttled {
			if !now.Before(h.Until) {
				delete(m.throttled, k)
			}
		}
	}
	if old := m.throttled[key]; old == nil || t.Until.After(old.Until) {
		m.throttled[key] = t
	}
}

// HeldOff returns why mailbox key's logins are not to go to the server
// now (it throttles the mailbox), or nil.
func (m *Gates) HeldOff(key string) *Throttled {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.throttled[key]
	if t == nil {
		return nil
	}
	if !time.Now().Before(t.Until) {
		delete(m.throttled, key)
		return nil
	}
	return &Throttled{Since: t.Since, Until: t.Until}
}

// Held reports how many slots of key are taken and how many logins wait.
func (m *Gates) Held(key string) (held, waiting int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.gates[key]; g != nil {
		return g.held, len(g.waiting)
	}
	return 0, 0
}

// Limit is the cap (0: none).
func (m *Gates) Limit() int { return m.limit }

// Waiting counts the logins waiting for a slot, over every mailbox.
func (m *Gates) Waiting() int {
	if m == nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, g := range m.gates {
		n += len(g.waiting)
	}
	return n
}
