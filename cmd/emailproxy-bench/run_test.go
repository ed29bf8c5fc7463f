package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/load"
	"github.com/emailproxy/emailproxy/bench/report"
	"github.com/emailproxy/emailproxy/cmd/internal/cli"
)

// TestMain lets this test binary be the proxy that `run` starts: it runs
// itself with "proxy" first, as the real emailproxy-bench binary does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "proxy" {
		os.Exit(cli.Run(os.Args[2:], os.Stdout, os.Stderr, nil))
	}
	os.Exit(m.Run())
}

// A tiny run of every scenario, direct and through our proxy as a child
// process, with the table, the JSON and the HTML report. It asserts that
// everything ran and was measured, never how fast.
func TestRunEveryScenarioEndToEnd(t *testing.T) {
	dir := t.TempDir()
	jsonPath, htmlPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	var out, errOut bytes.Buffer
	code := run([]string{"run", "--duration", "700ms", "--concurrency", "2", "--mailboxes", "2", "--messages", "2",
		"--big-size", "1300000", "--big-mailboxes", "1", "--rtt", "2ms", "--token-delay", "0",
		"--idle-clients", "30", "--idle-sessions", "6", "--stalled-sessions", "20", "--proxy-args", "--imap-session-reuse 30s --park-after 200ms",
		"--profile", "--workdir", filepath.Join(dir, "work"), "--json", jsonPath, "--html", htmlPath}, &out, &errOut, nil)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep report.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	want := []string{"pop3", "imap", "smtp", "bulk-pop3", "bulk-imap"}
	if len(rep.Results) != len(want) {
		t.Fatalf("results for %d scenarios, want %d", len(rep.Results), len(want))
	}
	for i, r := range rep.Results {
		if r.Scenario != want[i] {
			t.Fatalf("scenario %d is %s, want %s", i, r.Scenario, want[i])
		}
		for mode, m := range map[string]*report.Mode{"direct": r.Direct, "proxy": r.Proxy} {
			if m == nil || m.Cycles == 0 || m.Errors != 0 {
				t.Fatalf("%s %s: %+v", r.Scenario, mode, m)
			}
			if m.Cycle.P50 <= 0 || m.Cycle.P99 < m.Cycle.P50 || m.Login.P50 <= 0 || m.Login.P50 > m.Cycle.P50 {
				t.Fatalf("%s %s: implausible latencies %+v %+v", r.Scenario, mode, m.Login, m.Cycle)
			}
			if len(m.CDF) == 0 {
				t.Fatalf("%s %s: no distribution", r.Scenario, mode)
			}
			// Every cycle logs in upstream, except IMAP through the
			// proxy, which reuses sessions here.
			if reused := mode == "proxy" && strings.Contains(r.Scenario, "imap"); !reused && m.UpstreamLogins != m.Cycles {
				t.Fatalf("%s %s: %d upstream logins for %d cycles", r.Scenario, mode, m.UpstreamLogins, m.Cycles)
			}
		}
		if r.Proxy.ProxyCPUPerSessionUs <= 0 || r.Proxy.ProxyRSSPeakMB <= 0 {
			t.Fatalf("%s: proxy process not measured: %+v", r.Scenario, r.Proxy)
		}
		if r.CycleP50Ratio <= 0 {
			t.Fatalf("%s: no ratio", r.Scenario)
		}
		// --profile: where the CPU went, and the profile kept in --workdir.
		if p := r.Proxy.Profile; p == nil || p.CPUs <= 0 || len(p.Top) == 0 || len(p.Areas) == 0 {
			t.Fatalf("%s: no profile: %+v", r.Scenario, r.Proxy.Profile)
		} else if _, err := os.Stat(p.File); err != nil || filepath.Dir(p.File) != filepath.Join(dir, "work") {
			t.Fatalf("%s: profile file %q: %v", r.Scenario, p.File, err)
		}
		if r.Scenario == "pop3" && (r.Proxy.UpstreamHandshakes == 0 || r.Proxy.UpstreamResumed > r.Proxy.UpstreamHandshakes) {
			t.Fatalf("pop3: upstream handshakes %d, resumed %d", r.Proxy.UpstreamHandshakes, r.Proxy.UpstreamResumed)
		}
		if strings.HasPrefix(r.Scenario, "bulk") && (r.Proxy.MBPerS <= 0 || r.ThroughputRatio <= 0) {
			t.Fatalf("%s: no throughput", r.Scenario)
		}
	}
	// With session reuse on, IMAP clients through the proxy mostly take
	// kept sessions: far fewer upstream logins than cycles.
	imap := rep.Results[1].Proxy
	if imap.UpstreamLogins*2 > imap.Cycles {
		t.Fatalf("imap with reuse: %d upstream logins for %d cycles", imap.UpstreamLogins, imap.Cycles)
	}
	// Token requests: the proxy's accounts were warmed, so none more.
	for _, r := range rep.Results {
		if r.Proxy.TokenRequests != 0 {
			t.Fatalf("%s: %d token requests during the measured phase", r.Scenario, r.Proxy.TokenRequests)
		}
	}
	// Memory per connection is noise at this size: only that it was
	// measured (no error reading the proxy's Go memory) is checked.
	// 20 stalled sessions asked, but one large mailbox takes 16 at most.
	// The held sessions park (--park-after 200ms), and one still answers.
	if rep.Idle == nil || rep.Idle.PreLogin != 30 || rep.Idle.Sessions != 6 || rep.Idle.SessionsParked != 6 || rep.Idle.Stalled != 16 || rep.Idle.Errors != 0 || len(rep.Idle.ErrorSamples) != 0 {
		t.Fatalf("idle: %+v", rep.Idle)
	}
	if tg := rep.Idle.Together; tg == nil || tg.Sessions != 6 || tg.Parked != 6 || tg.PreLogin != 30 || tg.Errors != 0 || !tg.PollOK || !tg.HeldAnswers || tg.RSSMB <= 0 {
		t.Fatalf("idle, together: %+v", rep.Idle.Together)
	}
	if rep.Machine.Cores == 0 || rep.Settings["proxy"] != "emailproxy --imap-session-reuse 30s --park-after 200ms" || len(rep.ProxyMemory) == 0 {
		t.Fatalf("report header: %+v %v", rep.Machine, rep.Settings)
	}
	page, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(page), "<svg"); n != 2*len(want)+1 {
		t.Fatalf("HTML has %d plots, want %d", n, 2*len(want)+1)
	}
	table := out.String()
	for _, s := range append(want, "proxy / direct", "pre-login clients", "authenticated IDLE sessions", "profile of the proxy, pop3", "key exchange") {
		if !strings.Contains(table, s) {
			t.Fatalf("table lacks %q:\n%s", s, table)
		}
	}
	if !strings.Contains(errOut.String(), "bulk-imap proxy") {
		t.Fatalf("no progress lines:\n%s", errOut.String())
	}
}

// Another proxy is started through --proxy-cmd with the generated files;
// one that does not come up is reported with its log.
func TestRunProxyCmd(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"run", "--scenarios", "pop3", "--modes", "proxy", "--duration", "300ms", "--concurrency", "1",
		"--mailboxes", "1", "--rtt", "0", "--token-delay", "0",
		"--proxy-cmd", self + " proxy --no-gui --config-file {config} --log-format json"}, &out, &errOut, nil)
	if code != 0 || !strings.Contains(out.String(), "pop3") {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	errOut.Reset()
	code = run([]string{"run", "--scenarios", "pop3", "--modes", "proxy", "--duration", "300ms",
		"--proxy-cmd", "echo this proxy fails at once >&2; exit 3"}, &out, &errOut, nil)
	if code != 1 || !strings.Contains(errOut.String(), "this proxy fails at once") {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
}

// Injected faults show up as counted errors with their messages; the run
// itself completes.
func TestRunWithInjectedFaults(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run([]string{"run", "--scenarios", "pop3", "--duration", "600ms", "--concurrency", "2", "--mailboxes", "2",
		"--rtt", "0", "--token-delay", "0", "--fault-drop-rate", "0.5", "--json", "-"}, &out, &errOut, nil)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut.String())
	}
	var rep report.Report
	if err := json.Unmarshal(out.Bytes()[bytes.IndexByte(out.Bytes(), '{'):], &rep); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	d := rep.Results[0].Direct
	if d.Errors == 0 || len(d.ErrorSamples) == 0 {
		t.Fatalf("half the connections dropped, yet no errors: %+v", d)
	}
}

// With --proxy-addr the harness starts no proxy: it writes the
// configuration to --workdir and waits for one to listen there.
func TestRunAgainstRunningProxy(t *testing.T) {
	dir := t.TempDir()
	var out, errOut syncBuf
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"run", "--scenarios", "imap", "--modes", "proxy", "--duration", "300ms", "--concurrency", "1",
			"--mailboxes", "1", "--rtt", "0", "--token-delay", "0", "--workdir", dir, "--proxy-addr", "127.0.0.1"}, &out, &errOut, nil)
	}()
	cfgPath := filepath.Join(dir, "bench.config")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(cfgPath); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no configuration written\n%s", errOut.String())
		}
	}
	time.Sleep(100 * time.Millisecond) // the file is complete: written before the harness says so
	stop := make(chan struct{})
	proxyDone := make(chan int, 1)
	t.Setenv("SSL_CERT_FILE", filepath.Join(dir, "bench-ca.pem"))
	var proxyOut syncBuf
	go func() {
		proxyDone <- cli.Run([]string{"--no-gui", "--config-file", cfgPath}, &proxyOut, &proxyOut, stop)
	}()
	select {
	case code := <-done:
		close(stop)
		<-proxyDone
		if code != 0 || !strings.Contains(out.String(), "imap") {
			t.Fatalf("exit %d\n%s\n%s\nproxy:\n%s", code, out.String(), errOut.String(), proxyOut.String())
		}
	case <-time.After(60 * time.Second):
		close(stop)
		t.Fatal("the harness did not finish")
	}
}

// syncBuf is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// A short abuse run against our proxy: every hostile kind runs beside
// honest clients; the proxy stays up, the honest clients see no error,
// and its goroutines and the upstream sessions go back to where they were.
// The proxy is this test binary: under -race, a data race it meets is in
// its log, and fails the test.
func TestAbuseScenario(t *testing.T) {
	workdir := t.TempDir()
	// Sessions kept for reuse stay open upstream: 2 s, well within the
	// settle limit, so that every phase can end with none.
	// The large message must be larger than what the sockets' kernel
	// buffers hold, or a stalled download is no stall for the proxy.
	rep, out := runJSON(t, "--scenarios", "abuse", "--duration", "1500ms", "--concurrency", "4", "--mailboxes", "7",
		"--messages", "2", "--big-size", "12000000", "--big-mailboxes", "1", "--rtt", "2ms", "--token-delay", "0",
		"--abuse-slowloris", "100", "--abuse-stalled", "4", "--abuse-settle", "20s", "--workdir", workdir,
		"--proxy-args", "--send-timeout 1s --imap-session-reuse 2s --smtp-session-reuse 2s --park-after 100ms")
	proxyLog, err := os.ReadFile(filepath.Join(workdir, "proxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"DATA RACE", "panic"} {
		if bytes.Contains(proxyLog, []byte(bad)) {
			t.Fatalf("%q in the proxy's log:\n%s", bad, proxyLog)
		}
	}
	a := rep.Abuse
	if a == nil || a.Clean == nil || len(a.Kinds) != len(load.HostileKinds) {
		t.Fatalf("abuse results: %+v\n%s", a, out)
	}
	for _, r := range append([]report.AbuseRow{*a.Clean}, a.Kinds...) {
		if !r.Alive || r.Errors != 0 || r.Cycles == 0 || r.SettledS < 0 {
			t.Fatalf("%s: %+v\n%s", r.Kind, r, out)
		}
		if r.Kind != a.Clean.Kind && r.HostileConnections == 0 {
			t.Fatalf("%s: no hostile client connected", r.Kind)
		}
		if r.GoroutinesBefore < 0 || r.GoroutinesAfter < 0 {
			t.Fatalf("%s: goroutines not measured", r.Kind)
		}
	}
	if !strings.Contains(out, "abuse: honest POP3 clients polling") {
		t.Fatalf("no abuse table:\n%s", out)
	}
}

// The hang-up storm against the goroutine front end (Windows'): the
// logins of clients that hung up are stopped, not queued for their
// mailboxes' slots until their timeout, so the honest clients see no
// error and the upstream sessions come back.
func TestAbuseHangUpStormOnGoroutines(t *testing.T) {
	rep, out := runJSON(t, "--scenarios", "abuse", "--abuse-kinds", "hangup-storm", "--duration", "3s",
		"--concurrency", "4", "--mailboxes", "7", "--messages", "2", "--big-size", "100000", "--big-mailboxes", "1", "--rtt", "2ms",
		"--token-delay", "0", "--abuse-settle", "10s", "--proxy-args", "--front-end goroutines")
	a := rep.Abuse
	if a == nil || len(a.Kinds) != 1 {
		t.Fatalf("abuse results: %+v\n%s", a, out)
	}
	if r := a.Kinds[0]; !r.Alive || r.Errors != 0 || r.SettledS < 0 || r.HostileConnections == 0 {
		t.Fatalf("%+v\n%s", r, out)
	}
}

// runJSON runs the harness with args and returns its JSON report and what
// it printed.
func runJSON(t *testing.T, args ...string) (report.Report, string) {
	t.Helper()
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var out, errOut bytes.Buffer
	if code := run(append(append([]string{"run"}, args...), "--json", jsonPath), &out, &errOut, nil); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep report.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	return rep, out.String()
}

// A short fleet run: one proxy, two sharing nothing, two sharing a real
// redis-server, each started fresh. Two proxies sharing Redis make the
// token requests of one and hold the per-mailbox cap of one; two sharing
// nothing make twice the requests.
func TestFleetScenario(t *testing.T) {
	rep, out := runJSON(t, "--scenarios", "fleet", "--modes", "proxy", "--duration", "1s", "--concurrency", "6",
		"--mailboxes", "2", "--fleet-mailboxes", "2", "--fleet-mailbox-limit", "1", "--messages", "2", "--big-size", "0",
		"--rtt", "2ms", "--token-delay", "0")
	f := rep.Fleet
	if f == nil || len(f.Rows) != 3 || f.Mailboxes != 2 || f.Cap != 1 {
		t.Fatalf("fleet results: %+v\n%s", f, out)
	}
	want := []struct{ tokens, maxSessions int }{{2, 1}, {4, 2}, {2, 1}}
	for i, r := range f.Rows {
		if r.Cycles == 0 || r.Errors != 0 || r.TokenRequests != want[i].tokens || r.MaxSessionsPerMailbox > want[i].maxSessions || r.MaxSessionsPerMailbox < 1 {
			t.Fatalf("%s: %+v (want %d token requests, at most %d sessions per mailbox)\n%s", r.Setup, r, want[i].tokens, want[i].maxSessions, out)
		}
	}
	if !f.Rows[2].SharedRedis || f.Rows[2].Instances != 2 || !strings.Contains(out, "fleet: 6 POP3 clients on 2 mailboxes") {
		t.Fatalf("fleet table:\n%s", out)
	}
}
