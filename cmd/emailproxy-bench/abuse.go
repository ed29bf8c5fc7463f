package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/bench/load"
	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/bench/report"
)

// abuseFlags shape the abuse scenario.
type abuseFlags struct {
	kinds       string
	slowloris   int
	stalled     int
	settleLimit time.Duration
}

// abuseAccounts splits the mailboxes: the first (with the large message)
// for stalled downloads, two with upstream faults at the end, two more for
// hostile logins before them, the rest for the honest clients.
type abuseAccounts struct {
	big, hostile, honest []load.Account
	reset, tokenless     load.Account
	honestFrom           int
}

func (b *bench) splitAccounts() (abuseAccounts, error) {
	all := b.target.Accounts
	nBig := b.f.mock.bigBoxes
	if nBig < 1 || b.f.mock.bigSize <= 0 || len(all) < nBig+5 {
		return abuseAccounts{}, fmt.Errorf("the abuse scenario needs --big-mailboxes ≥ 1, --big-size > 0 and --mailboxes ≥ --big-mailboxes + 5 (have %d, %d, %d)",
			nBig, b.f.mock.bigSize, len(all))
	}
	n := len(all)
	return abuseAccounts{big: all[:nBig], honest: all[nBig : n-4], honestFrom: nBig,
		hostile: all[n-4 : n-2], reset: all[n-2], tokenless: all[n-1]}, nil
}

// abuse runs the honest POP3 clients alone, then alongside each hostile
// kind in turn, and reports for each whether the proxy stayed up, how much
// it grew, what the honest clients saw, and whether its goroutines and
// the upstream sessions went back to where they were once the hostile
// clients left.
func (b *bench) abuse(ctx context.Context) (*report.Abuse, error) {
	acc, err := b.splitAccounts()
	if err != nil {
		return nil, err
	}
	kinds := load.HostileKinds
	if b.f.abuse.kinds != "" && b.f.abuse.kinds != "all" {
		if kinds, err = load.ParseHostile(b.f.abuse.kinds); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(b.errw, "abuse     warming up (one login per mailbox, then the honest clients for a while)\n")
	b.target.Warm(ctx, load.POP3, load.Proxy, 0)
	// The warm pool sizes itself to the load in the first seconds: the
	// clean run must not pay for that.
	warm := b.f.load
	warm.From, warm.Accounts, warm.Duration = acc.honestFrom, len(acc.honest), min(warm.Duration, 3*time.Second)
	b.target.Run(ctx, load.POP3, load.Proxy, warm, &load.Progress{})
	res := &report.Abuse{}
	res.Clean = b.abusePhase(ctx, acc, "")
	for _, k := range kinds {
		row := b.abusePhase(ctx, acc, k)
		res.Kinds = append(res.Kinds, *row)
		if !row.Alive {
			break // nothing more to learn
		}
	}
	return res, nil
}

// abusePhase runs the honest clients for the phase's duration with kind's
// hostile clients beside them ("" for none).
func (b *bench) abusePhase(ctx context.Context, acc abuseAccounts, kind load.Hostile) *report.AbuseRow {
	name := string(kind)
	if kind == "" {
		name = "none (clean run)"
	}
	row := &report.AbuseRow{Kind: name, GoroutinesBefore: -1, GoroutinesAfter: -1}
	b.mark("abuse " + name)
	goBefore, sessBefore := b.settledState()
	row.GoroutinesBefore, row.SessionsBefore = goBefore, sessBefore
	base, _ := load.ReadProc(b.pid)

	attack := load.Attack{Kind: kind, Connections: b.f.abuse.slowloris}
	switch kind {
	case load.StalledReads:
		attack.Accounts = acc.big
		attack.Connections = min(b.f.abuse.stalled, len(acc.big)*max(b.f.mock.mailboxLimit, 1))
	case load.PasswordSpray:
		attack.Accounts = acc.honest
	case load.UpstreamReset:
		attack.Accounts = []load.Account{acc.reset}
		b.up.SetUserFault(acc.reset.Address, mock.ResetLogin)
		defer b.up.SetUserFault(acc.reset.Address, mock.NoFault)
	case load.TokenHang:
		// The server refuses this mailbox's token, so the proxy needs a
		// new one, and the token endpoint hangs.
		attack.Accounts = []load.Account{acc.tokenless}
		b.up.SetUserFault(acc.tokenless.Address, mock.RefuseToken)
		b.up.Authority.SetHang(true)
		defer func() {
			b.up.Authority.SetHang(false)
			b.up.Authority.Release()
			b.up.SetUserFault(acc.tokenless.Address, mock.NoFault)
		}()
	default:
		attack.Accounts = acc.hostile
	}

	l := b.f.load
	l.From, l.Accounts = acc.honestFrom, len(acc.honest)
	phaseCtx, cancel := context.WithTimeout(ctx, l.Duration)
	defer cancel()
	var peak int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the proxy's RSS, more often than the run's sampler
		defer wg.Done()
		for phaseCtx.Err() == nil {
			if ps, err := load.ReadProc(b.pid); err == nil {
				peak = max(peak, ps.RSS)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	var held *load.Held
	if kind != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			row.HostileConnections, held = b.target.Attack(phaseCtx, attack)
		}()
	}
	var prog load.Progress
	stop := b.showProgress(fmt.Sprintf("abuse     %-19s", kind), l.Duration, &prog)
	ph := b.target.Run(ctx, load.POP3, load.Proxy, l, &prog)
	stop()
	cancel()
	wg.Wait()
	m := report.Summarize(ph)
	row.Login, row.Cycles, row.Errors, row.ErrorSamples = m.Login, m.Cycles, m.Errors, m.ErrorSamples
	if base.RSS > 0 && peak > 0 {
		row.PeakRSSGrowthMB = float64(int(float64(peak-base.RSS)/(1<<20)*10)) / 10
	}
	// Stalled downloads stay connected: the proxy must end them itself
	// (--send-timeout). The others have gone.
	row.SettledS = -1
	start := time.Now()
	for time.Since(start) < b.f.abuse.settleLimit {
		g, s := b.settledState()
		row.GoroutinesAfter, row.SessionsAfter = g, s
		if s <= sessBefore && (g < 0 || g <= goBefore+5) {
			row.SettledS = float64(int(time.Since(start).Seconds()*10)) / 10
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if held != nil {
		held.Close()
	}
	select {
	case <-b.exited:
	default:
		_, err := load.ReadProc(b.pid)
		row.Alive = err == nil
	}
	if b.exited == nil && b.pid == 0 {
		row.Alive = true // an external proxy we cannot watch
	}
	return row
}

// settledState reads the proxy's goroutines (-1 if it has no stats
// endpoint) and the upstream's open authenticated sessions.
func (b *bench) settledState() (goroutines, sessions int) {
	goroutines = -1
	if b.statsAddr != "" {
		if g, err := load.ReadGoMem(b.statsAddr); err == nil {
			goroutines = g.Goroutines
		}
	}
	return goroutines, b.up.OpenSessions()
}
