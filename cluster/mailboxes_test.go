package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/emailproxy/emailproxy/internal/redistest"
)

// proxy is one proxy's view of the shared caps: its own Redis connection,
// as a separate process would have.
func proxy(t *testing.T, url string, lease time.Duration) *Mailboxes {
	t.Helper()
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.MaxRetries = 0
	opt.DialTimeout, opt.ReadTimeout = 300*time.Millisecond, 300*time.Millisecond
	client := redis.NewClient(opt)
	m := NewMailboxes(client)
	m.Lease, m.Poll, m.Timeout = lease, 10*time.Millisecond, 500*time.Millisecond
	m.Start()
	t.Cleanup(func() { m.Close(); client.Close() })
	return m
}

func acquire(t *testing.T, m *Mailboxes, ctx context.Context) func() {
	t.Helper()
	release, err := m.Acquire(ctx, "imap.example\x00box@example", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	return release
}

func held(t *testing.T, m *Mailboxes) (int64, int64) {
	t.Helper()
	h, w, err := m.Held(context.Background(), "imap.example\x00box@example")
	if err != nil {
		t.Fatal(err)
	}
	return h, w
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A cap of 2 holds across two proxies: the third login waits, on either,
// until a session ends on either.
func TestCapAcrossProxies(t *testing.T) {
	url := redistest.Start(t)
	a, b := proxy(t, url, 15*time.Second), proxy(t, url, 15*time.Second)
	ctx := context.Background()
	r1 := acquire(t, a, ctx)
	r2 := acquire(t, b, ctx)
	got := make(chan func())
	go func() { got <- acquire(t, a, ctx) }()
	waitFor(t, "the third login to queue", func() bool { _, w := held(t, b); return w == 1 })
	select {
	case <-got:
		t.Fatal("a third session was granted with a cap of 2")
	case <-time.After(100 * time.Millisecond):
	}
	r2() // ends on the other proxy
	r3 := <-got
	if h, w := held(t, a); h != 2 || w != 0 {
		t.Fatalf("held %d, waiting %d; want 2 and 0", h, w)
	}
	r1()
	r3()
	waitFor(t, "every slot back", func() bool { h, _ := held(t, a); return h == 0 })
}

// Logins queue in arrival order across proxies.
func TestArrivalOrderAcrossProxies(t *testing.T) {
	url := redistest.Start(t)
	a, b := proxy(t, url, 15*time.Second), proxy(t, url, 15*time.Second)
	ctx := context.Background()
	first, second := acquire(t, a, ctx), acquire(t, a, ctx)
	var mu sync.Mutex
	var order []int
	var releases []func()
	var wg sync.WaitGroup
	for i, m := range []*Mailboxes{b, a, b, a} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := acquire(t, m, ctx)
			mu.Lock()
			order = append(order, i)
			releases = append(releases, r)
			mu.Unlock()
		}()
		waitFor(t, fmt.Sprintf("waiter %d in line", i), func() bool { _, w := held(t, a); return w == int64(i+1) })
	}
	first()
	waitFor(t, "the first waiter served", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 1 })
	second()
	waitFor(t, "the second waiter served", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 2 })
	mu.Lock()
	releases[0]()
	mu.Unlock()
	waitFor(t, "the third waiter served", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 3 })
	mu.Lock()
	releases[1]()
	mu.Unlock()
	wg.Wait()
	if fmt.Sprint(order) != "[0 1 2 3]" {
		t.Fatalf("served in order %v, want arrival order [0 1 2 3]", order)
	}
	for _, r := range releases[2:] {
		r()
	}
}

// The slots of a proxy that dies (no release, no renewal) come back after
// the lease; a live proxy's slots do not, however long they are held.
func TestDeadProxyLeasesExpire(t *testing.T) {
	url := redistest.Start(t)
	lease := 600 * time.Millisecond
	dead, live, other := proxy(t, url, lease), proxy(t, url, lease), proxy(t, url, lease)
	ctx := context.Background()
	acquire(t, dead, ctx)
	keep := acquire(t, live, ctx)
	dead.Close() // stops renewing, as a killed process would
	start := time.Now()
	r := acquire(t, other, ctx)
	if waited := time.Since(start); waited < lease/2 {
		t.Fatalf("granted after %v: the dead proxy's slot came back before its lease", waited)
	}
	// The live proxy renews: after three leases its slot is still held.
	time.Sleep(3 * lease)
	if h, _ := held(t, other); h != 2 {
		t.Fatalf("held %d after three leases, want 2 (the live proxy's and ours)", h)
	}
	ctx2, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := other.Acquire(ctx2, "imap.example\x00box@example", 2, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third slot: %v, want the wait to time out", err)
	}
	waitFor(t, "the timed-out waiter to leave the line", func() bool { _, w := held(t, other); return w == 0 })
	r()
	keep()
}

// full is called once when the slots are taken (the engine closes an
// idle session of its own there); a release from it serves the waiter.
func TestFullCallback(t *testing.T) {
	url := redistest.Start(t)
	a := proxy(t, url, 15*time.Second)
	ctx := context.Background()
	r1, r2 := acquire(t, a, ctx), acquire(t, a, ctx)
	calls := 0
	r3, err := a.Acquire(ctx, "imap.example\x00box@example", 2, func() { calls++; r1() })
	if err != nil || calls != 1 {
		t.Fatalf("err %v, full called %d times", err, calls)
	}
	r2()
	r3()
}

// Redis down: a login gets its slot at once (the local cap still holds),
// and once Redis is back the slot is registered by the next renewal.
func TestRedisDownGrantsLocallyThenRegisters(t *testing.T) {
	port := redistest.FreePort(t)
	url, kill := redistest.StartOn(t, port)
	a := proxy(t, url, 300*time.Millisecond)
	var failures int
	var mu sync.Mutex
	a.Report = func(err error) error {
		if err != nil {
			mu.Lock()
			failures++
			mu.Unlock()
		}
		return err
	}
	kill()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := acquire(t, a, ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a login waited %v on a Redis that is down", d)
	}
	mu.Lock()
	if failures == 0 {
		t.Fatal("the failure was not reported")
	}
	mu.Unlock()
	start = time.Now()
	acquire(t, a, ctx)() // within the skip second: no call at all
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("a second login during the outage waited %v", d)
	}
	redistest.StartOn(t, port)
	waitFor(t, "the held slot to be registered", func() bool {
		h, _, err := a.Held(context.Background(), "imap.example\x00box@example")
		return err == nil && h == 1
	})
	r()
	waitFor(t, "the slot released", func() bool {
		h, _, err := a.Held(context.Background(), "imap.example\x00box@example")
		return err == nil && h == 0
	})
}

// A slot freed on one proxy wakes the logins waiting on another at once
// (published by Redis), not at their next poll: here polls are an hour
// apart.
func TestReleaseWakesWaitersOnOtherProxies(t *testing.T) {
	url := redistest.Start(t)
	a, b := proxy(t, url, 15*time.Second), proxy(t, url, 15*time.Second)
	b.Poll = time.Hour
	ctx := context.Background()
	r1, r2 := acquire(t, a, ctx), acquire(t, a, ctx)
	// The subscription of b is asynchronous: wait until Redis counts it.
	waitFor(t, "the subscription", func() bool {
		n, err := b.client.PubSubNumSub(ctx, freedChannel).Result()
		return err == nil && n[freedChannel] >= 2
	})
	got := make(chan func())
	go func() { got <- acquire(t, b, ctx) }()
	waitFor(t, "the waiter in line", func() bool { _, w := held(t, a); return w == 1 })
	r1()
	select {
	case r3 := <-got:
		r3()
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter on the other proxy was not woken by the release")
	}
	r2()
}

// Slots given back while the proxy closes (sessions ending during a
// shutdown) neither block Close nor touch it after: their leases expire.
func TestReleaseDuringClose(t *testing.T) {
	url := redistest.Start(t)
	a := proxy(t, url, 15*time.Second)
	var releases []func()
	for range 50 {
		r, err := a.Acquire(context.Background(), "imap.example\x00box@example", 100, nil)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	var wg sync.WaitGroup
	for _, r := range releases {
		wg.Add(1)
		go func() { defer wg.Done(); r() }()
	}
	a.Close()
	wg.Wait()
	a.release("imap.example\x00box@example", "late") // after Close: nothing happens
}
