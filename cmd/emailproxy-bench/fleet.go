package main

// The fleet scenario: the same POP3 pollers through one proxy, through two
// that share nothing, and through two sharing a Redis, reporting what a
// fleet cares about: token requests and the most upstream sessions one
// mailbox had open.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/bench/load"
	"github.com/emailproxy/emailproxy/bench/report"
	"github.com/emailproxy/emailproxy/config"
)

// fleetFlags shape the fleet scenario.
type fleetFlags struct {
	mailboxes int // mailboxes the pollers share
	cap       int // --mailbox-limit of each proxy
}

type fleetSetup struct {
	name      string
	instances int
	shared    bool // --cache-store on a common Redis
}

var fleetSetups = []fleetSetup{
	{"one proxy", 1, false},
	{"two proxies, nothing shared", 2, false},
	{"two proxies, shared Redis", 2, true},
}

// fleet runs every setup in turn, each with fresh proxies (empty token
// caches), so that first logins and token requests are part of it.
func (b *bench) fleet(ctx context.Context, workdir string) (*report.Fleet, error) {
	if b.f.proxyCmd != "" || b.f.proxyAddr != "" {
		return nil, errors.New("the fleet scenario starts its own proxies: drop --proxy-cmd and --proxy-addr")
	}
	redisURL, stopRedis, err := startRedisServer(workdir)
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	n := min(max(b.f.fleet.mailboxes, 1), len(b.target.Accounts))
	res := &report.Fleet{Mailboxes: n, Clients: b.f.load.Concurrency, Cap: b.f.fleet.cap, ProviderLimit: b.f.mock.mailboxLimit}
	for k, setup := range fleetSetups {
		row, err := b.fleetPhase(ctx, workdir, k, setup, redisURL, n)
		if err != nil {
			return nil, err
		}
		res.Rows = append(res.Rows, *row)
	}
	return res, nil
}

// fleetProc is one proxy of a setup.
type fleetProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	target *load.Target
}

func (b *bench) fleetPhase(ctx context.Context, workdir string, k int, setup fleetSetup, redisURL string, mailboxes int) (*report.FleetRow, error) {
	b.up.ResetPeaks()
	tokens0, refusals0 := b.up.Authority.Requests(), b.up.LimitRefusals()
	var procs []*fleetProc
	defer func() {
		for _, p := range procs {
			stopChild(p.cmd, p.exited)
		}
	}()
	for i := range setup.instances {
		p, err := b.startFleetProxy(workdir, fmt.Sprintf("fleet-%d-%d", k, i), mailboxes, setup.shared, redisURL)
		if p != nil {
			procs = append(procs, p)
		}
		if err != nil {
			return nil, err
		}
	}
	// Warm up: one poll per mailbox through every proxy at once (the first
	// logins: token requests, key derivations, the fleet's claims), then
	// wait for the proxies to be quiet. Token requests and the most
	// sessions per mailbox count from the proxies' start; the rest from
	// here.
	var warm sync.WaitGroup
	for _, p := range procs {
		warm.Add(1)
		go func() {
			defer warm.Done()
			if err := p.target.Warm(ctx, load.POP3, load.Proxy, mailboxes); err != nil {
				fmt.Fprintf(b.errw, "fleet     %s: warm-up had errors: %s\n", setup.name, firstLine(err.Error()))
			}
		}()
	}
	warm.Wait()
	settlePids(procs)
	cpu0 := make([]time.Duration, len(procs))
	for i, p := range procs {
		if ps, err := load.ReadProc(p.cmd.Process.Pid); err == nil {
			cpu0[i] = ps.CPU
		}
	}
	label := fmt.Sprintf("fleet     %-28s", setup.name)
	var prog load.Progress
	stop := b.showProgress(label, b.f.load.Duration, &prog)
	phases := make([]*load.Phase, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		l := b.f.load
		l.Accounts = mailboxes
		l.Concurrency = b.f.load.Concurrency / len(procs)
		if i < b.f.load.Concurrency%len(procs) {
			l.Concurrency++
		}
		if l.Concurrency == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			phases[i] = p.target.Run(ctx, load.POP3, load.Proxy, l, &prog)
		}()
	}
	wg.Wait()
	stop()
	all := &load.Phase{Scenario: load.POP3, Mode: load.Proxy}
	for _, ph := range phases {
		if ph == nil {
			continue
		}
		all.Samples = append(all.Samples, ph.Samples...)
		all.Errors += ph.Errors
		all.ErrorMsg = append(all.ErrorMsg, ph.ErrorMsg...)
		all.Elapsed = max(all.Elapsed, ph.Elapsed)
	}
	m := report.Summarize(all)
	row := &report.FleetRow{Setup: setup.name, Instances: setup.instances, SharedRedis: setup.shared,
		Cycles: m.Cycles, Errors: m.Errors, ErrorSamples: m.ErrorSamples, SessionsPerS: m.SessionsPerS, Login: m.Login,
		TokenRequests: b.up.Authority.Requests() - tokens0, ProviderRefusals: b.up.LimitRefusals() - refusals0}
	for _, a := range b.target.Accounts[:mailboxes] {
		_, peak := b.up.Sessions("pop3", a.Address)
		row.MaxSessionsPerMailbox = max(row.MaxSessionsPerMailbox, peak)
	}
	var used time.Duration
	for i, p := range procs {
		if ps, err := load.ReadProc(p.cmd.Process.Pid); err == nil {
			used += ps.CPU - cpu0[i]
		}
	}
	if m.Cycles > 0 {
		row.ProxyCPUPerSessionUs = float64(used.Microseconds()) / float64(m.Cycles)
	}
	return row, nil
}

// settlePids waits (up to a minute) until the proxies use under a tenth
// of a core together: the key derivations of first logins are done.
func settlePids(procs []*fleetProc) {
	cpu := func() time.Duration {
		var sum time.Duration
		for _, p := range procs {
			if ps, err := load.ReadProc(p.cmd.Process.Pid); err == nil {
				sum += ps.CPU
			}
		}
		return sum
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		c0 := cpu()
		time.Sleep(250 * time.Millisecond)
		if cpu()-c0 < 25*time.Millisecond {
			return
		}
	}
}

// startFleetProxy starts one of our proxies with its own configuration
// (its own ports) and, if shared, the token cache and mailbox caps in the
// Redis at redisURL.
func (b *bench) startFleetProxy(workdir, name string, mailboxes int, shared bool, redisURL string) (*fleetProc, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(workdir, name+".config")
	// Only the fleet's mailboxes: a proxy without a shared store fetches
	// a token for each account it knows at start.
	if err := os.WriteFile(cfgPath, benchConfig(b.up, mailboxes, [3]int(ports)), 0o600); err != nil {
		return nil, err
	}
	caPath := filepath.Join(workdir, "bench-ca.pem")
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"proxy", "--no-gui", "--config-file", cfgPath, "--mailbox-limit", strconv.Itoa(b.f.fleet.cap)}
	if shared {
		args = append(args, "--cache-store", redisURL)
	}
	args = append(args, strings.Fields(b.f.proxyArg)...)
	cmd := exec.Command(self, args...)
	exited, err := launch(cmd, caPath, filepath.Join(workdir, name+".log"), ports)
	if exited == nil {
		return nil, err
	}
	p := &fleetProc{cmd: cmd, exited: exited}
	if err != nil {
		return p, err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return p, err
	}
	p.target, err = load.NewTarget(cfg, b.up.CA.Pool, "127.0.0.1", "bench-password")
	return p, err
}

// startRedisServer runs redis-server (Debian's package redis-server) on a
// free 127.0.0.1 port, saving nothing, for the fleet scenario.
func startRedisServer(workdir string) (url string, stop func(), err error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, errors.New("the fleet scenario needs redis-server on the PATH (Debian/Ubuntu: apt-get install redis-server)")
	}
	ports, err := freePorts(1)
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(ports[0]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() { cmd.Process.Kill(); <-exited }
	if err := waitPorts("127.0.0.1", ports, 10*time.Second, exited); err != nil {
		stop()
		return "", nil, fmt.Errorf("redis-server: %w", err)
	}
	return fmt.Sprintf("redis://127.0.0.1:%d/0", ports[0]), stop, nil
}
