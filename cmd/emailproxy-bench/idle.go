package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/emailproxy/emailproxy/bench/load"
	"github.com/emailproxy/emailproxy/bench/report"
)

// idle holds pre-login clients, then authenticated IDLE sessions, and
// measures what each costs the proxy.
func (b *bench) idle(ctx context.Context) *report.Idle {
	res := &report.Idle{PreLoginGoKB: -1, SessionGoKB: -1, StalledGoKB: -1}
	// cost is what each held connection adds to the proxy: RSS, and Go
	// heap + stacks after a collection (goKB -1: unknown).
	type cost struct{ rssKB, goKB, stackKB float64 }
	// measure holds n connections and reads their cost half a second
	// later; with waitParked, again once the proxy has parked their
	// relays (or given up waiting). It returns the last reading first.
	measure := func(what string, n int, hold func(*load.Progress) (*load.Held, error), waitParked bool) (last, first cost, held, parked int) {
		b.mark("idle " + what)
		// The Go baseline first, with memory returned to the system, then
		// the RSS baseline: so the RSS growth is the connections'.
		baseGo, goErr := b.quietGoMem()
		base, _ := load.ReadProc(b.pid)
		var prog load.Progress
		stop := b.showCount("idle      "+what, n, &prog)
		h, err := hold(&prog)
		stop()
		defer h.Close()
		if err != nil {
			res.Errors += int(prog.Errors.Load())
			res.ErrorSamples = append(res.ErrorSamples, err.Error())
		}
		held = h.Len()
		if held == 0 {
			return cost{goKB: -1}, cost{goKB: -1}, 0, 0
		}
		read := func() cost {
			c := cost{goKB: -1}
			if now, err := load.ReadProc(b.pid); err == nil {
				c.rssKB = float64(now.RSS-base.RSS) / 1024 / float64(held)
			}
			if goErr != nil {
				return c
			}
			g, err := load.ReadGoMem(b.statsAddr)
			if err != nil {
				goErr = err
				return c
			}
			parked = g.Parked / 2
			c.goKB = float64((g.HeapInuse+g.StackInuse)-(baseGo.HeapInuse+baseGo.StackInuse)) / 1024 / float64(held)
			c.stackKB = float64(g.StackInuse-baseGo.StackInuse) / 1024 / float64(held)
			return c
		}
		time.Sleep(500 * time.Millisecond) // let the proxy settle (handshakes, buffers)
		first = read()
		last = first
		if waitParked && goErr == nil {
			b.waitParked(what, held, func() int { last = read(); return parked })
		}
		if b.f.profile && b.statsAddr != "" {
			file := filepath.Join(b.workdir, "heap-idle-"+what+".pprof")
			if err := load.SaveHeapProfile(b.statsAddr, file); err != nil {
				res.ErrorSamples = append(res.ErrorSamples, "heap profile: "+err.Error())
			} else {
				fmt.Fprintf(b.errw, "idle      %s: heap profile in %s\n", what, file)
			}
		}
		if goErr != nil && b.statsAddr != "" {
			res.ErrorSamples = append(res.ErrorSamples, "reading the proxy's Go memory: "+goErr.Error())
		}
		return last, first, held, parked
	}
	if b.f.idleClients > 0 {
		c, _, held, _ := measure("pre-login", b.f.idleClients, func(p *load.Progress) (*load.Held, error) {
			return b.target.HoldPreLogin(ctx, b.f.idleClients, p)
		}, false)
		res.PreLoginRSSKB, res.PreLoginGoKB, res.PreLogin = c.rssKB, c.goKB, held
		time.Sleep(time.Second) // closed connections leave the proxy
	}
	if b.f.idleSessions > 0 {
		// One login per account first: the proxy's first login of an
		// account checks its password (PBKDF2) and fetches a token.
		b.target.Warm(ctx, load.IMAP, load.Proxy, 0)
		c, active, held, parked := measure("sessions", b.f.idleSessions, func(p *load.Progress) (*load.Held, error) {
			return b.target.HoldIdling(ctx, load.Proxy, b.f.idleSessions, p)
		}, true)
		res.SessionRSSKB, res.SessionGoKB, res.SessionStackKB, res.Sessions, res.SessionsParked = c.rssKB, c.goKB, c.stackKB, held, parked
		if parked > 0 {
			res.SessionActiveRSSKB, res.SessionActiveGoKB, res.SessionActiveStackKB = active.rssKB, active.goKB, active.stackKB
		}
	}
	if b.f.idleSessions > 0 && b.f.idleClients > 0 {
		time.Sleep(time.Second)
		res.Together = b.holdTogether(ctx)
	}
	if b.f.stalled > 0 && b.f.mock.bigSize > 0 {
		// Each large mailbox takes at most --mailbox-limit sessions.
		if lim := b.f.mock.mailboxLimit; lim > 0 && b.f.stalled > lim*b.f.mock.bigBoxes {
			fmt.Fprintf(b.errw, "stalled sessions: %d, not %d: %d mailboxes hold the large message, %d sessions each at most (raise --big-mailboxes)\n",
				lim*b.f.mock.bigBoxes, b.f.stalled, b.f.mock.bigBoxes, lim)
			b.f.stalled = lim * b.f.mock.bigBoxes
		}
		time.Sleep(time.Second)
		b.target.Warm(ctx, load.POP3, load.Proxy, b.f.mock.bigBoxes)
		c, _, held, _ := measure("stalled", b.f.stalled, func(p *load.Progress) (*load.Held, error) {
			return b.target.HoldStalled(ctx, load.Proxy, b.f.stalled, b.f.mock.bigBoxes, p)
		}, false)
		res.StalledRSSKB, res.StalledGoKB, res.Stalled = c.rssKB, c.goKB, held
	}
	round := func(v float64) float64 { return float64(int(v*100)) / 100 }
	res.PreLoginRSSKB, res.SessionRSSKB = round(res.PreLoginRSSKB), round(res.SessionRSSKB)
	res.SessionActiveRSSKB, res.SessionActiveGoKB = round(res.SessionActiveRSSKB), round(res.SessionActiveGoKB)
	if res.PreLoginGoKB >= 0 {
		res.PreLoginGoKB = round(res.PreLoginGoKB)
	}
	if res.SessionGoKB >= 0 {
		res.SessionGoKB = round(res.SessionGoKB)
	}
	res.StalledRSSKB = round(res.StalledRSSKB)
	if res.StalledGoKB >= 0 {
		res.StalledGoKB = round(res.StalledGoKB)
	}
	return res
}

// holdTogether holds the authenticated sessions and the pre-login clients
// at the same time, the most connections the run asks of one process,
// then checks that a fresh poll still works.
func (b *bench) holdTogether(ctx context.Context) *report.Together {
	b.mark("idle together")
	base, _ := load.ReadProc(b.pid)
	n := b.f.idleSessions + b.f.idleClients
	var prog load.Progress
	stop := b.showCount("idle      together", n, &prog)
	sessions, err1 := b.target.HoldIdling(ctx, load.Proxy, b.f.idleSessions, &prog)
	defer sessions.Close()
	clients, err2 := b.target.HoldPreLogin(ctx, b.f.idleClients, &prog)
	defer clients.Close()
	stop()
	time.Sleep(500 * time.Millisecond)
	t := &report.Together{Sessions: sessions.Len(), PreLogin: clients.Len(), Errors: int(prog.Errors.Load())}
	if b.statsAddr != "" {
		t.Parked = b.waitParked("together", t.Sessions, func() int {
			g, err := load.ReadGoMem(b.statsAddr)
			if err != nil {
				return -1
			}
			return g.Parked / 2
		})
	}
	for _, err := range []error{err1, err2} {
		if err != nil {
			t.ErrorSamples = append(t.ErrorSamples, firstLine(err.Error()))
		}
	}
	if now, err := load.ReadProc(b.pid); err == nil {
		t.RSSMB = float64(now.RSS) / (1 << 20)
		t.GrowthMB = float64(now.RSS-base.RSS) / (1 << 20)
	}
	// One more poll while all of them are held, on the last mailbox (the
	// sessions go round the mailboxes; the last has a slot left).
	if _, err := b.target.Cycle(ctx, load.POP3, load.Proxy, b.target.Accounts[len(b.target.Accounts)-1]); err != nil {
		t.Errors++
		t.ErrorSamples = append(t.ErrorSamples, "a poll while they were held: "+firstLine(err.Error()))
	} else {
		t.PollOK = true
	}
	// And one of the held (parked) sessions still answers.
	if err := sessions.EndIdle(0); err != nil {
		t.Errors++
		t.ErrorSamples = append(t.ErrorSamples, "a held session: "+firstLine(err.Error()))
	} else {
		t.HeldAnswers = true
	}
	return t
}

// waitParked waits until parkedNow reports held sessions parked (the
// proxy parks those quiet for --park-after, default 5 s, checking every
// half of it), or gives up after 20 s or on an error (-1), and returns
// the last count.
func (b *bench) waitParked(what string, held int, parkedNow func() int) int {
	parked := 0
	for end := time.Now().Add(20 * time.Second); parked >= 0 && parked < held && time.Now().Before(end); {
		time.Sleep(time.Second)
		parked = parkedNow()
	}
	fmt.Fprintf(b.errw, "idle      %s: %d of %d sessions parked\n", what, parked, held)
	return parked
}

// quietGoMem is the proxy's Go memory, returned to the system, once its
// goroutine count has stopped changing (at most 10 s): a proxy just
// started is still fetching tokens and filling its warm pool, which
// would inflate a baseline.
func (b *bench) quietGoMem() (load.GoMem, error) {
	g, err := load.SettleGoMem(b.statsAddr)
	for end := time.Now().Add(10 * time.Second); err == nil && time.Now().Before(end); {
		time.Sleep(500 * time.Millisecond)
		prev := g.Goroutines
		if g, err = load.SettleGoMem(b.statsAddr); err == nil && g.Goroutines == prev {
			break
		}
	}
	return g, err
}
