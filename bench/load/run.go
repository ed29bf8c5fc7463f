package load

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// Scenario names a kind of client.
type Scenario string

const (
	POP3     Scenario = "pop3"      // STAT, UIDL, RETR of a small message
	IMAP     Scenario = "imap"      // SELECT, UID SEARCH, UID FETCH of a small message
	SMTP     Scenario = "smtp"      // one message
	BulkPOP3 Scenario = "bulk-pop3" // RETR of the large message
	BulkIMAP Scenario = "bulk-imap" // UID FETCH of the large message
	Idle     Scenario = "idle"      // connections held open: memory per connection
	Abuse    Scenario = "abuse"     // honest clients while hostile ones run (proxy only)
	Fleet    Scenario = "fleet"     // one proxy against two sharing Redis (proxy only)
)

// Scenarios lists the scenarios "all" runs, in the order a run takes them.
var Scenarios = []Scenario{POP3, IMAP, SMTP, BulkPOP3, BulkIMAP, Idle}

// known are the scenarios that may be named; abuse and fleet run only
// when asked for (abuse takes minutes and measures robustness, not speed;
// fleet needs redis-server).
var known = append(append([]Scenario(nil), Scenarios...), Abuse, Fleet)

// ParseScenarios reads a comma-separated list ("all" for every one).
func ParseScenarios(list string) ([]Scenario, error) {
	if list == "all" || list == "" {
		return Scenarios, nil
	}
	var out []Scenario
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, s := range known {
			if string(s) == name {
				out = append(out, s)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q (have %v)", name, known)
		}
	}
	return out, nil
}

// Protocol is the mail protocol a scenario uses.
func (s Scenario) Protocol() config.Protocol {
	switch s {
	case POP3, BulkPOP3:
		return config.POP
	case SMTP:
		return config.SMTP
	}
	return config.IMAP
}

// Load shapes one phase of cycles.
type Load struct {
	Concurrency int           // clients running cycles at once
	Duration    time.Duration // how long to run them
	Interval    time.Duration // each client's pause between cycles (0: none)
	Timeout     time.Duration // one cycle's limit
	Accounts    int           // use only this many accounts (0: all)
	From        int           // the first account to use
}

// accounts is the first n accounts (all if n is 0 or too large).
func (t *Target) accounts(n int) []Account { return t.accountRange(0, n) }

// accountRange is n accounts from the from'th (all the rest if n is 0 or
// too large).
func (t *Target) accountRange(from, n int) []Account {
	all := t.Accounts[min(max(from, 0), len(t.Accounts)):]
	if n <= 0 || n > len(all) {
		return all
	}
	return all[:n]
}

// Phase is the outcome of one scenario in one mode.
type Phase struct {
	Scenario Scenario
	Mode     Mode
	Elapsed  time.Duration
	Samples  []Sample
	Errors   int
	ErrorMsg []string // the first few distinct errors
}

// Progress is what a running phase reports to a progress display.
type Progress struct {
	Cycles, Errors atomic.Int64
}

// Cycle runs one poll cycle of scenario s in mode for account a.
func (t *Target) Cycle(ctx context.Context, s Scenario, mode Mode, a Account) (Sample, error) {
	switch s {
	case POP3:
		return t.popCycle(ctx, mode, a, false)
	case BulkPOP3:
		return t.popCycle(ctx, mode, a, true)
	case IMAP:
		return t.imapCycle(ctx, mode, a, false)
	case BulkIMAP:
		return t.imapCycle(ctx, mode, a, true)
	case SMTP:
		return t.smtpCycle(ctx, mode, a)
	}
	return Sample{}, fmt.Errorf("scenario %s has no cycle", s)
}

// Warm runs one cycle per account so the first-login costs (token,
// password check) are paid before measuring: the targets are about warm
// operation.
func (t *Target) Warm(ctx context.Context, s Scenario, mode Mode, accounts int) error {
	var wg sync.WaitGroup
	accts := t.accounts(accounts)
	errs := make([]error, len(accts))
	sem := make(chan struct{}, 16)
	for i, a := range accts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			_, errs[i] = t.Cycle(cctx, s, mode, a)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Run runs clients of scenario s in mode for l.Duration; client i polls
// account i mod len(Accounts).
func (t *Target) Run(ctx context.Context, s Scenario, mode Mode, l Load, prog *Progress) *Phase {
	if l.Timeout <= 0 {
		l.Timeout = 60 * time.Second
	}
	ph := &Phase{Scenario: s, Mode: mode}
	var mu sync.Mutex
	seen := map[string]bool{}
	start := time.Now()
	ctx, cancel := context.WithDeadline(ctx, start.Add(l.Duration))
	defer cancel()
	var wg sync.WaitGroup
	accts := t.accountRange(l.From, l.Accounts)
	for i := 0; i < l.Concurrency; i++ {
		a := accts[i%len(accts)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []Sample
			for ctx.Err() == nil {
				at := time.Since(start)
				// A cycle started before the end may finish after it.
				cctx, ccancel := context.WithTimeout(context.Background(), l.Timeout)
				smp, err := t.Cycle(cctx, s, mode, a)
				ccancel()
				if err != nil {
					prog.Errors.Add(1)
					mu.Lock()
					ph.Errors++
					if msg := err.Error(); !seen[msg] && len(ph.ErrorMsg) < 5 {
						seen[msg] = true
						ph.ErrorMsg = append(ph.ErrorMsg, msg)
					}
					mu.Unlock()
				} else {
					smp.At = at
					local = append(local, smp)
					prog.Cycles.Add(1)
				}
				if l.Interval > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(l.Interval):
					}
				}
			}
			mu.Lock()
			ph.Samples = append(ph.Samples, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	ph.Elapsed = time.Since(start)
	sort.Slice(ph.Samples, func(i, j int) bool { return ph.Samples[i].At < ph.Samples[j].At })
	return ph
}
