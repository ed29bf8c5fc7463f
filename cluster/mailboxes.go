// Package cluster is what several proxies share through Redis besides the
// token cache: the per-mailbox caps on upstream sessions, so that two
// proxies in front of one fleet open no more sessions per mailbox than one
// would.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/telemetry"
)

// Mailboxes is a counting semaphore per mailbox held in Redis. A slot is a
// lease: the proxy holding it renews it every Lease/3, so the slots of a
// proxy that dies come back after Lease at most. Logins that find every
// slot taken queue in arrival order across all proxies (a ticket each),
// and a waiter that stops asking (its proxy died) leaves the line after
// two seconds.
//
// When Redis cannot be reached the proxy goes on with its own caps alone
// (the caller's local gate) and counts it; the slots it hands out
// meanwhile are registered in Redis by the next renewal that succeeds, so
// the shared count is right again soon after Redis is back.
type Mailboxes struct {
	client redis.UniversalClient
	// Lease is how long a slot outlives its proxy.
	Lease time.Duration
	// Poll is how often a waiting login asks again.
	Poll time.Duration
	// Timeout bounds each call to Redis.
	Timeout time.Duration
	// Report, if set, is told the outcome of every call (the token
	// store's up/down bookkeeping and logs).
	Report func(error) error
	Logger zerolog.Logger

	mu   sync.Mutex
	held map[string]map[string]struct{} // mailbox → this proxy's lease ids
	// skipUntil (unix nanoseconds): after a failed call Redis is left
	// alone for a second, so that logins during an outage do not each
	// wait for a timeout.
	skipUntil atomic.Int64
	wg        sync.WaitGroup
	stop      chan struct{}
	stopOnce  sync.Once
	closed    bool // under mu: no more background calls

	// A freed slot is published on freedChannel, so that waiting logins
	// (on every proxy) try again at once rather than at their next poll.
	wakeMu sync.Mutex
	wake   map[string]chan struct{} // mailbox → closed when one of its slots is freed
}

// freedChannel carries the mailbox of every slot given back.
const freedChannel = "emailproxy:mailbox-freed"

// NewMailboxes uses client (shared with the token store).
func NewMailboxes(client redis.UniversalClient) *Mailboxes {
	return &Mailboxes{client: client, Lease: 15 * time.Second, Poll: 50 * time.Millisecond,
		Timeout: time.Second, held: map[string]map[string]struct{}{}, stop: make(chan struct{}),
		wake: map[string]chan struct{}{}}
}

// waiterTTL: a queued login that has not asked again for this long is
// dropped from the line (its proxy is gone).
const waiterTTL = 2 * time.Second

// acquireScript takes a slot for ARGV[1] or queues it. KEYS: holders (a
// sorted set of lease id → expiry), queue (id → ticket), alive (id →
// expiry of the waiter), tickets (a counter). ARGV: id, limit, lease ms,
// waiter ttl ms. Redis's own clock is used, so proxies on hosts whose
// clocks differ agree. Returns 1 when the slot is granted.
var acquireScript = redis.NewScript(`
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, limit = ARGV[1], tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local gone = redis.call('zrangebyscore', KEYS[3], '-inf', now)
for _, w in ipairs(gone) do redis.call('zrem', KEYS[2], w) end
redis.call('zremrangebyscore', KEYS[3], '-inf', now)
local keep = tonumber(ARGV[3]) * 2
for i = 1, 4 do redis.call('pexpire', KEYS[i], keep) end
if redis.call('zscore', KEYS[1], id) then return 1 end
local free = limit - redis.call('zcard', KEYS[1])
local rank = redis.call('zrank', KEYS[2], id)
if not rank then
  if free > 0 and redis.call('zcard', KEYS[2]) == 0 then
    redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), id)
    return 1
  end
  redis.call('zadd', KEYS[2], redis.call('incr', KEYS[4]), id)
  redis.call('pexpire', KEYS[4], keep)
  rank = redis.call('zrank', KEYS[2], id)
end
if rank < free then
  redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), id)
  redis.call('zrem', KEYS[2], id)
  redis.call('zrem', KEYS[3], id)
  return 1
end
redis.call('zadd', KEYS[3], now + tonumber(ARGV[4]), id)
return 0
`)

// renewScript pushes out the expiry of this proxy's leases (ARGV[2:]) by
// ARGV[1] ms, adding any the set lost: they are sessions that exist.
var renewScript = redis.NewScript(`
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('zadd', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('pexpire', KEYS[1], tonumber(ARGV[1]) * 2)
return 0
`)

// keys are the Redis keys of mailbox (host and user, see
// upstream.MailboxKey).
func keys(mailbox string) []string {
	base := "emailproxy:mailbox:" + strings.ReplaceAll(mailbox, "\x00", "/") + ":"
	return []string{base + "holders", base + "queue", base + "alive", base + "tickets"}
}

// Acquire takes one of mailbox's limit slots across every proxy, waiting
// in line until ctx ends. full, if set, is called once when the slots are
// all taken (the caller may then close an idle session of its own). With
// Redis unreachable the slot is granted at once (the caller's local cap
// still holds). release gives the slot back; call it once.
func (m *Mailboxes) Acquire(ctx context.Context, mailbox string, limit int, full func()) (release func(), err error) {
	id := newID()
	release = func() { m.release(mailbox, id) }
	if time.Now().UnixNano() < m.skipUntil.Load() {
		m.degraded(mailbox, id, nil)
		return release, nil
	}
	ks := keys(mailbox)
	asked := false
	for {
		freed := m.freed(mailbox) // before asking, so that no release is missed
		call, cancel := context.WithTimeout(ctx, m.Timeout)
		got, err := acquireScript.Run(call, m.client, ks, id, limit, m.Lease.Milliseconds(), waiterTTL.Milliseconds()).Int()
		cancel()
		if err != nil && ctx.Err() != nil {
			m.leave(mailbox, id)
			return nil, ctx.Err()
		}
		if err != nil {
			m.degraded(mailbox, id, err)
			return release, nil
		}
		m.report(nil)
		if got == 1 {
			m.track(mailbox, id)
			return release, nil
		}
		if !asked && full != nil {
			asked = true
			full()
			continue
		}
		select {
		case <-ctx.Done():
			m.leave(mailbox, id)
			return nil, ctx.Err()
		case <-freed:
		case <-time.After(m.Poll):
		}
	}
}

// freed returns a channel closed when a slot of mailbox is next given back.
func (m *Mailboxes) freed(mailbox string) <-chan struct{} {
	m.wakeMu.Lock()
	defer m.wakeMu.Unlock()
	ch := m.wake[mailbox]
	if ch == nil {
		ch = make(chan struct{})
		m.wake[mailbox] = ch
	}
	return ch
}

// wakeWaiters wakes the logins of this proxy waiting for mailbox.
func (m *Mailboxes) wakeWaiters(mailbox string) {
	m.wakeMu.Lock()
	defer m.wakeMu.Unlock()
	if ch := m.wake[mailbox]; ch != nil {
		close(ch)
		delete(m.wake, mailbox)
	}
}

// degraded grants a slot without Redis: counted, logged by Report, and
// tracked so that the next successful renewal registers it.
func (m *Mailboxes) degraded(mailbox, id string, err error) {
	if err != nil {
		m.skipUntil.Store(time.Now().Add(time.Second).UnixNano())
		m.report(err)
	}
	telemetry.SharedStoreDegraded("mailbox_slot")
	m.track(mailbox, id)
}

func (m *Mailboxes) report(err error) {
	if m.Report != nil {
		m.Report(err)
	}
}

func (m *Mailboxes) track(mailbox, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := m.held[mailbox]
	if ids == nil {
		ids = map[string]struct{}{}
		m.held[mailbox] = ids
	}
	ids[id] = struct{}{}
}

// release gives a slot back, in the background: a session's end never
// waits for Redis. A release that fails leaves the lease to expire.
func (m *Mailboxes) release(mailbox, id string) {
	m.mu.Lock()
	if ids := m.held[mailbox]; ids != nil {
		delete(ids, id)
		if len(ids) == 0 {
			delete(m.held, mailbox)
		}
	}
	m.mu.Unlock()
	m.leave(mailbox, id)
}

// leave removes id from mailbox's holders and line, in the background.
func (m *Mailboxes) leave(mailbox, id string) {
	if time.Now().UnixNano() < m.skipUntil.Load() {
		return // the lease and the place in line expire by themselves
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return // shutting down: the lease expires by itself
	}
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), m.Timeout)
		defer cancel()
		ks := keys(mailbox)
		_, err := m.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.ZRem(ctx, ks[0], id)
			p.ZRem(ctx, ks[1], id)
			p.ZRem(ctx, ks[2], id)
			p.Publish(ctx, freedChannel, mailbox)
			return nil
		})
		m.report(err)
		m.wakeWaiters(mailbox)
	}()
}

// Start renews this proxy's leases every Lease/3 and listens for slots
// freed by any proxy, until Close.
func (m *Mailboxes) Start() {
	sub := m.client.Subscribe(context.Background(), freedChannel)
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		go func() { <-m.stop; sub.Close() }()
		// The channel is closed by sub.Close; go-redis subscribes again
		// by itself after Redis comes back.
		for msg := range sub.Channel() {
			m.wakeWaiters(msg.Payload)
		}
	}()
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(m.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.renew()
			}
		}
	}()
}

func (m *Mailboxes) renew() {
	m.mu.Lock()
	work := make(map[string][]any, len(m.held))
	for mailbox, ids := range m.held {
		args := []any{m.Lease.Milliseconds()}
		for id := range ids {
			args = append(args, id)
		}
		work[mailbox] = args
	}
	m.mu.Unlock()
	if len(work) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.Timeout)
	defer cancel()
	_, err := m.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for mailbox, args := range work {
			renewScript.Eval(ctx, p, keys(mailbox)[:1], args...)
		}
		return nil
	})
	if err == nil {
		m.skipUntil.Store(0)
	}
	m.report(err)
}

// Held is how many slots of mailbox every proxy holds together, and how
// many logins wait for one (tests and diagnostics).
func (m *Mailboxes) Held(ctx context.Context, mailbox string) (held, waiting int64, err error) {
	ks := keys(mailbox)
	cmds, err := m.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZCard(ctx, ks[0])
		p.ZCard(ctx, ks[1])
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return cmds[0].(*redis.IntCmd).Val(), cmds[1].(*redis.IntCmd).Val(), nil
}

// Close stops the renewals and waits for the releases under way. The
// leases still held expire after Lease.
func (m *Mailboxes) Close() {
	m.stopOnce.Do(func() { close(m.stop) })
	m.mu.Lock()
	m.closed = true // a release from now on starts no call (and no Add during Wait)
	m.mu.Unlock()
	m.wg.Wait()
}

func newID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}
