package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/emailproxy/emailproxy/bench/load"
	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/bench/report"
	"github.com/emailproxy/emailproxy/config"
)

type runFlags struct {
	mock                          mockFlags
	scenarios, modes              string
	load                          load.Load
	idleClients, idleSessions     int
	stalled                       int
	proxyCmd, proxyAddr, proxyArg string
	proxyPid                      int
	jsonOut, htmlOut              string
	keep                          bool
	profile                       bool
	abuse                         abuseFlags
	fleet                         fleetFlags
}

func runBench(args []string, stdout, stderr io.Writer) int {
	var f runFlags
	fs := flag.NewFlagSet("emailproxy-bench run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f.mock.register(fs, 20)
	fs.StringVar(&f.scenarios, "scenarios", "all", "comma-separated: pop3, imap, smtp, bulk-pop3, bulk-imap, idle (all: these), abuse, fleet")
	fs.IntVar(&f.fleet.mailboxes, "fleet-mailboxes", 4, "fleet scenario: mailboxes the --concurrency clients share")
	fs.IntVar(&f.fleet.cap, "fleet-mailbox-limit", 2, "fleet scenario: --mailbox-limit of each proxy")
	fs.StringVar(&f.abuse.kinds, "abuse-kinds", "all", "abuse scenario: hostile kinds to run, comma-separated: "+hostileNames())
	fs.IntVar(&f.abuse.slowloris, "abuse-slowloris", 2000, "abuse scenario: slowloris connections to hold")
	fs.IntVar(&f.abuse.stalled, "abuse-stalled", 16, "abuse scenario: downloads to stall (at most --mailbox-limit per large mailbox)")
	fs.DurationVar(&f.abuse.settleLimit, "abuse-settle", 30*time.Second, "abuse scenario: how long to wait after each phase for the proxy's goroutines and upstream sessions to return to where they were")
	fs.StringVar(&f.modes, "modes", "direct,proxy", "direct, proxy or both: direct clients do TLS and XOAUTH2 themselves")
	fs.IntVar(&f.load.Concurrency, "concurrency", 20, "clients polling at once, per scenario")
	fs.DurationVar(&f.load.Duration, "duration", 10*time.Second, "how long each scenario runs, per mode")
	fs.DurationVar(&f.load.Interval, "interval", 0, "each client's pause between poll cycles (0: back to back)")
	fs.DurationVar(&f.load.Timeout, "cycle-timeout", 60*time.Second, "longest one poll cycle may take before it counts as an error")
	fs.IntVar(&f.idleClients, "idle-clients", 1000, "idle scenario: pre-login client connections to hold")
	fs.IntVar(&f.idleSessions, "idle-sessions", 500, "idle scenario: authenticated IMAP sessions in IDLE to hold")
	fs.IntVar(&f.stalled, "stalled-sessions", 48, "idle scenario: sessions downloading the large message to a client that stopped reading (spread over --big-mailboxes, under --mailbox-limit each)")
	fs.StringVar(&f.proxyCmd, "proxy-cmd", "", "run this proxy instead of ours, through sh -c; {config} and {ca} are replaced by the generated files' paths (SSL_CERT_FILE is set too), e.g. 'python3 emailproxy.py --no-gui --config-file {config}'")
	fs.StringVar(&f.proxyArg, "proxy-args", "", "extra flags for our proxy, e.g. '--imap-session-reuse 5m'")
	fs.StringVar(&f.proxyAddr, "proxy-addr", "", "use a proxy that is already running on this host, with the configuration written to --workdir; start none")
	fs.IntVar(&f.proxyPid, "proxy-pid", 0, "with --proxy-addr: the proxy's process ID, to measure its CPU and memory")
	fs.BoolVar(&f.profile, "profile", false, "take a CPU profile of our proxy during each scenario: top functions and cost areas in the report, the profiles in --workdir")
	fs.StringVar(&f.jsonOut, "json", "", "write the results as JSON to this file (- for standard output)")
	fs.StringVar(&f.htmlOut, "html", "", "write an HTML report with plots to this file")
	workdir := fs.String("workdir", "", "directory for the generated configuration, CA and proxy log (default: a temporary one, removed after)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	scenarios, err := load.ParseScenarios(f.scenarios)
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 2
	}
	var modes []load.Mode
	for _, m := range strings.Split(f.modes, ",") {
		switch load.Mode(strings.TrimSpace(m)) {
		case load.Direct:
			modes = append(modes, load.Direct)
		case load.Proxy:
			modes = append(modes, load.Proxy)
		default:
			fmt.Fprintf(stderr, "emailproxy-bench: unknown mode %q (direct, proxy)\n", m)
			return 2
		}
	}
	if f.load.Concurrency < 1 || f.mock.mailboxes < 1 {
		fmt.Fprintln(stderr, "emailproxy-bench: --concurrency and --mailboxes must be at least 1")
		return 2
	}
	b := &bench{f: f, out: stdout, errw: stderr, progress: isTTY(stderr)}
	if err := b.run(scenarios, modes, *workdir); err != nil {
		fmt.Fprintln(stderr, "emailproxy-bench:", err)
		return 1
	}
	return 0
}

// bench is one run of the harness.
type bench struct {
	f         runFlags
	out, errw io.Writer
	progress  bool

	up        *mock.Upstream
	target    *load.Target
	proxy     *exec.Cmd
	exited    chan struct{} // closed when the proxy process has ended
	pid       int
	statsAddr string
	sampler   *load.Sampler
	rep       report.Report
	abuseRuns bool   // the abuse scenario is in this run
	workdir   string // where the run's files go
}

func (b *bench) run(scenarios []load.Scenario, modes []load.Mode, workdir string) error {
	if workdir == "" {
		dir, err := os.MkdirTemp("", "emailproxy-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		workdir = dir
	} else if err := os.MkdirAll(workdir, 0o755); err != nil {
		return err
	}
	b.workdir = workdir
	// Enough mailboxes that the idle sessions stay under the per-mailbox
	// cap, and one more, so that a poll still finds a free slot while they
	// are all held.
	if b.f.mock.mailboxLimit > 0 && hasScenario(scenarios, load.Idle) {
		need := (b.f.idleSessions+b.f.mock.mailboxLimit-1)/b.f.mock.mailboxLimit + 1
		b.f.mock.mailboxes = max(b.f.mock.mailboxes, need)
	}
	fmt.Fprintf(b.errw, "starting the mock provider (%d mailboxes, RTT %v, token delay %v)\n", b.f.mock.mailboxes, b.f.mock.rtt, b.f.mock.tokenDelay)
	up, err := b.f.mock.start()
	if err != nil {
		return err
	}
	defer up.Close()
	b.up = up
	cfgPath, caPath := filepath.Join(workdir, "bench.config"), filepath.Join(workdir, "bench-ca.pem")
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	if err := os.WriteFile(caPath, up.CA.PEM, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(cfgPath, benchConfig(up, b.f.mock.mailboxes, [3]int(ports)), 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	proxyHost := "127.0.0.1"
	if b.f.proxyAddr != "" {
		proxyHost = b.f.proxyAddr
	}
	if b.target, err = load.NewTarget(cfg, up.CA.Pool, proxyHost, "bench-password"); err != nil {
		return err
	}
	b.abuseRuns = hasScenario(scenarios, load.Abuse)
	fleetOnly := len(scenarios) == 1 && scenarios[0] == load.Fleet // it starts proxies of its own
	if hasMode(modes, load.Proxy) && !fleetOnly {
		if err := b.startProxy(cfgPath, caPath, workdir, ports); err != nil {
			return err
		}
		defer b.stopProxy()
	}
	b.rep = report.Report{Started: time.Now(), Machine: machine(), Settings: b.settings()}
	if b.pid > 0 {
		b.sampler = load.StartSampler(b.pid, 250*time.Millisecond)
	}
	ctx := context.Background()
	for _, sc := range scenarios {
		if sc == load.Abuse {
			if hasMode(modes, load.Proxy) {
				if b.rep.Abuse, err = b.abuse(ctx); err != nil {
					return err
				}
			}
			continue
		}
		if sc == load.Fleet {
			if hasMode(modes, load.Proxy) {
				if b.rep.Fleet, err = b.fleet(ctx, workdir); err != nil {
					return err
				}
			}
			continue
		}
		if sc == load.Idle {
			if hasMode(modes, load.Proxy) {
				b.rep.Idle = b.idle(ctx)
			}
			continue
		}
		res := report.Result{Scenario: string(sc)}
		for _, mode := range modes {
			m, err := b.phase(ctx, sc, mode)
			if err != nil {
				return err
			}
			if mode == load.Direct {
				res.Direct = m
			} else {
				res.Proxy = m
			}
		}
		res.Compare()
		b.rep.Results = append(b.rep.Results, res)
	}
	if b.sampler != nil {
		for _, s := range b.sampler.Stop() {
			b.rep.ProxyMemory = append(b.rep.ProxyMemory, report.Point{X: s.At.Seconds(), Y: float64(s.RSS) / (1 << 20)})
		}
	}
	fmt.Fprintln(b.out)
	b.rep.WriteTable(b.out)
	return b.write()
}

func (b *bench) write() error {
	if b.f.jsonOut != "" {
		data, err := json.MarshalIndent(&b.rep, "", "  ")
		if err != nil {
			return err
		}
		data = append(data, '\n')
		if b.f.jsonOut == "-" {
			b.out.Write(data)
		} else if err := os.WriteFile(b.f.jsonOut, data, 0o644); err != nil {
			return err
		}
	}
	if b.f.htmlOut != "" {
		f, err := os.Create(b.f.htmlOut)
		if err != nil {
			return err
		}
		if err := b.rep.WriteHTML(f); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintln(b.errw, "HTML report:", b.f.htmlOut)
	}
	return nil
}

// phase warms up and then runs one scenario in one mode, measuring the
// proxy process and the provider around it.
func (b *bench) phase(ctx context.Context, sc load.Scenario, mode load.Mode) (*report.Mode, error) {
	l := b.f.load
	if sc == load.BulkPOP3 || sc == load.BulkIMAP {
		if b.f.mock.bigSize <= 0 {
			return nil, fmt.Errorf("scenario %s needs the large message: --big-size must be above 0", sc)
		}
		l.Accounts = b.f.mock.bigBoxes
	}
	b.mark(fmt.Sprintf("%s %s", sc, mode))
	fmt.Fprintf(b.errw, "%-9s %-6s warming up (one cycle per mailbox)\n", sc, mode)
	if err := b.target.Warm(ctx, sc, mode, l.Accounts); err != nil {
		// With injected faults some warm-up cycles fail; the measured
		// phase counts its own errors.
		fmt.Fprintf(b.errw, "%-9s %-6s warm-up had errors: %s\n", sc, mode, firstLine(err.Error()))
	}
	if mode == load.Proxy {
		b.settle()
	}
	logins0, tokens0 := b.up.Logins(), b.up.Authority.Requests()
	var cpu0 load.ProcStat
	if b.pid > 0 && mode == load.Proxy {
		cpu0, _ = load.ReadProc(b.pid)
	}
	ours := mode == load.Proxy && b.statsAddr != ""
	var hs0, resumed0 int64
	if ours {
		hs0, resumed0, _ = load.ReadHandshakes(b.statsAddr)
	}
	var prof chan profResult
	if ours && b.f.profile {
		prof = make(chan profResult, 1)
		go func() {
			p, err := load.ProfileCPU(ctx, b.statsAddr, l.Duration, filepath.Join(b.workdir, fmt.Sprintf("cpu-%s.pprof", sc)))
			prof <- profResult{p, err}
		}()
	}
	var prog load.Progress
	stop := b.showProgress(fmt.Sprintf("%-9s %-6s", sc, mode), l.Duration, &prog)
	ph := b.target.Run(ctx, sc, mode, l, &prog)
	stop()
	m := report.Summarize(ph)
	if ours {
		if hs, resumed, err := load.ReadHandshakes(b.statsAddr); err == nil {
			m.UpstreamHandshakes, m.UpstreamResumed = hs-hs0, resumed-resumed0
		}
	}
	if prof != nil {
		if r := <-prof; r.err != nil {
			fmt.Fprintf(b.errw, "%-9s %-6s profile: %v\n", sc, mode, r.err)
		} else {
			m.Profile = r.p
		}
	}
	m.UpstreamLogins, m.TokenRequests = b.up.Logins()-logins0, b.up.Authority.Requests()-tokens0
	if b.pid > 0 && mode == load.Proxy {
		if cpu1, err := load.ReadProc(b.pid); err == nil {
			used := cpu1.CPU - cpu0.CPU
			if m.Cycles > 0 {
				m.ProxyCPUPerSessionUs = float64(used.Microseconds()) / float64(m.Cycles)
			}
			m.ProxyCPUPercent = 100 * used.Seconds() / ph.Elapsed.Seconds()
		}
		if b.sampler != nil {
			m.ProxyRSSPeakMB = b.peakRSS()
		}
	}
	return m, nil
}

type profResult struct {
	p   *load.CPUProfile
	err error
}

// settle waits (up to a minute) until the proxy is quiet: the first login of
// each account leaves work behind (a key derivation for the token cache)
// that belongs to warming up, not to the measured phase.
func (b *bench) settle() {
	if b.pid <= 0 {
		return
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		p0, err := load.ReadProc(b.pid)
		time.Sleep(250 * time.Millisecond)
		p1, err1 := load.ReadProc(b.pid)
		if err != nil || err1 != nil || p1.CPU-p0.CPU < 25*time.Millisecond { // under a tenth of a core
			return
		}
	}
}

func (b *bench) mark(label string) {
	if b.sampler != nil {
		b.rep.Marks = append(b.rep.Marks, report.Mark{At: b.sampler.Since().Seconds(), Label: label})
	}
}

func (b *bench) peakRSS() float64 {
	ps, err := load.ReadProc(b.pid)
	if err != nil {
		return 0
	}
	return float64(ps.RSS) / (1 << 20)
}

func (b *bench) settings() map[string]string {
	s := map[string]string{
		"rtt": b.f.mock.rtt.String(), "token delay": b.f.mock.tokenDelay.String(),
		"concurrency": strconv.Itoa(b.f.load.Concurrency), "duration": b.f.load.Duration.String(),
		"interval": b.f.load.Interval.String(), "mailboxes": strconv.Itoa(b.f.mock.mailboxes),
		"large message": fmt.Sprintf("%d bytes", b.f.mock.bigSize),
	}
	switch {
	case b.f.proxyAddr != "":
		s["proxy"] = "external at " + b.f.proxyAddr
	case b.f.proxyCmd != "":
		s["proxy"] = b.f.proxyCmd
	default:
		s["proxy"] = strings.TrimSpace("emailproxy " + b.f.proxyArg)
		if b.abuseRuns && !strings.Contains(b.f.proxyArg, "send-timeout") {
			s["proxy"] += " --send-timeout 5s"
		}
	}
	return s
}

func hostileNames() string {
	var names []string
	for _, k := range load.HostileKinds {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}

func hasScenario(list []load.Scenario, s load.Scenario) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func hasMode(list []load.Mode, m load.Mode) bool {
	for _, x := range list {
		if x == m {
			return true
		}
	}
	return false
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// machine describes this computer for the report.
func machine() report.Machine {
	m := report.Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	return m
}
