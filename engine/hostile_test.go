package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/telemetry"
)

// eachFrontEnd runs test once per front end: the same bounds, timeouts
// and answers are expected of both.
func eachFrontEnd(t *testing.T, test func(t *testing.T, fe string)) {
	for _, fe := range []string{FrontEndGnet, FrontEndGoroutines} {
		t.Run(fe, func(t *testing.T) { test(t, fe) })
	}
}

// offer writes chunk to c until the proxy stops taking it, and fails the
// test if it took 64 MiB: what a proxy that bounds its buffers takes from
// a client is what the two kernels' socket buffers hold plus the bounds,
// nowhere near what is offered.
func offer(t *testing.T, c net.Conn, chunk []byte) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	sent := 0
	for sent < 256<<20 {
		n, err := c.Write(chunk)
		sent += n
		if err != nil {
			break
		}
	}
	if sent >= 64<<20 {
		t.Fatalf("the proxy took %d MiB from a client that reads nothing or floods a login", sent>>20)
	}
}

// settled waits until no client connection, relay or mailbox slot is
// left: what hostile clients leave behind must go when they do.
func settled(t *testing.T, env *proxyEnv) {
	t.Helper()
	key := upstream.MailboxKey(env.listenerFor(env.popAddr).srv, testAccount)
	waitFor(t, "connections, relays and mailbox slots to return to zero", func() bool {
		st := env.srv.Stats()
		held, waiting := env.srv.gates.Held(key)
		return st.PreLogin == 0 && st.Relays == 0 && held == 0 && waiting == 0
	})
}

// Clients that send a login and hang up (FIN or RST) at every moment of
// the login, many at once, must not crash the proxy (a goroutine once read
// the released gnet connection's address) nor leave anything behind.
func TestLoginAndHangUpStorm(t *testing.T) { eachFrontEnd(t, testLoginAndHangUpStorm) }

func testLoginAndHangUpStorm(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe}})
	stillServes(t, env) // the account's password is now known
	var wg sync.WaitGroup
	for i := range 400 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr, login := env.imapAddr, fmt.Sprintf("a LOGIN %s pw\r\n", testAccount)
			if i%2 == 1 {
				addr, login = env.popAddr, fmt.Sprintf("USER %s\r\nPASS pw\r\n", testAccount)
			}
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return
			}
			if i%4 < 2 { // half wait for the greeting, half do not
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 512))
			}
			c.Write([]byte(login))
			time.Sleep(time.Duration(rand.IntN(4000)) * time.Microsecond)
			if i%3 == 0 {
				c.(*net.TCPConn).SetLinger(0) // RST
			}
			c.Close()
		}()
	}
	wg.Wait()
	settled(t, env)
	stillServes(t, env)
	p := popLogin(t, env.popAddr, testAccount, "pw")
	p.ok("QUIT")
}

// A client that pipelines commands and never reads is cut off without the
// proxy buffering what it does not read: on the event loop, parsing stops
// once its unsent output passes the bound and the connection is closed
// when its unparsed input passes it too; on goroutines, reading stops
// with the blocked write, which fails after the send timeout.
func TestNonReadingPipelinerIsBounded(t *testing.T) {
	eachFrontEnd(t, testNonReadingPipelinerIsBounded)
}

func testNonReadingPipelinerIsBounded(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe, PendingLimit: 16 << 10, SendTimeout: 500 * time.Millisecond}})
	c := dialSmallWindow(t, env.imapAddr, 4096)
	defer c.Close()
	offer(t, c, bytes.Repeat([]byte("a CAPABILITY\r\n"), 4096))
	why := map[string]string{FrontEndGnet: "client sent too much without waiting for answers", FrontEndGoroutines: "send timeout: the client stopped reading"}[fe]
	waitFor(t, "a log line that says why the client was disconnected", func() bool { return strings.Contains(env.logs.String(), why) })
	settled(t, env)
	stillServes(t, env)
}

// A client that pipelines more than the bound and reads slowly gets every
// answer, in order: reading pauses and resumes, nothing is dropped.
func TestSlowReadingPipelinerGetsEveryAnswer(t *testing.T) {
	eachFrontEnd(t, testSlowReadingPipelinerGetsEveryAnswer)
}

func testSlowReadingPipelinerGetsEveryAnswer(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe, PendingLimit: 8 << 10}})
	c := dialSmallWindow(t, env.imapAddr, 4096)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	const n = 400 // about 40 KiB of answers, 5 times the bound
	var cmds bytes.Buffer
	for i := range n {
		fmt.Fprintf(&cmds, "c%d CAPABILITY\r\n", i)
	}
	go c.Write(cmds.Bytes())
	got := readLinesSlowly(t, c, func(l string) bool { return strings.HasPrefix(l, fmt.Sprintf("c%d ", n-1)) })
	next := 0
	for _, l := range got {
		if strings.HasPrefix(l, "c") {
			if want := fmt.Sprintf("c%d OK", next); !strings.HasPrefix(l, want) {
				t.Fatalf("answer %d: got %q, want %q", next, l, want)
			}
			next++
		}
	}
	if next != n {
		t.Fatalf("%d of %d answers", next, n)
	}
}

// readLinesSlowly reads lines a little at a time, with pauses, until last
// holds for one of them.
func readLinesSlowly(t *testing.T, c net.Conn, last func(string) bool) []string {
	t.Helper()
	var buf bytes.Buffer
	var lines []string
	small := make([]byte, 4096)
	for {
		for {
			i := bytes.Index(buf.Bytes(), []byte("\r\n"))
			if i < 0 {
				break
			}
			l := string(buf.Next(i + 2))
			l = strings.TrimSuffix(l, "\r\n")
			lines = append(lines, l)
			if last(l) {
				return lines
			}
		}
		if len(lines)%64 == 0 {
			time.Sleep(time.Millisecond)
		}
		n, err := c.Read(small)
		buf.Write(small[:n])
		if err != nil {
			t.Fatalf("after %d lines: %v", len(lines), err)
		}
	}
}

// Answers gnet still holds for a slow reader when its login completes
// reach it before the login's answer and anything relayed after it.
func TestHandOffKeepsOrderForSlowReader(t *testing.T) {
	eachFrontEnd(t, testHandOffKeepsOrderForSlowReader)
}

func testHandOffKeepsOrderForSlowReader(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe, PendingLimit: 16 << 20}})
	c, err := net.DialTimeout("tcp", env.imapAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	// 9 MiB read slowly under the race detector, beside other packages'
	// tests on two cores: a bound, not a speed requirement.
	c.SetDeadline(time.Now().Add(90 * time.Second))
	var cmds bytes.Buffer
	const n = 100000 // ~9 MiB of answers: more than the sockets hold, less than the bound
	for i := range n {
		fmt.Fprintf(&cmds, "c%d CAPABILITY\r\n", i)
	}
	fmt.Fprintf(&cmds, "L LOGIN %s pw\r\nN NOOP\r\nQ LOGOUT\r\n", testAccount)
	if _, err := c.Write(cmds.Bytes()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the login completes while the answers wait
	lines := readLinesSlowly(t, c, func(l string) bool { return strings.HasPrefix(l, "Q ") })
	var order []string
	answers := 0
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 1 && f[0] != "*" {
			if strings.HasPrefix(f[0], "c") {
				f[0] = "c"
				answers++
			}
			if len(order) == 0 || order[len(order)-1] != f[0] {
				order = append(order, f[0])
			}
		}
	}
	if got := strings.Join(order, " "); got != "c L N Q" || answers != n {
		t.Fatalf("answers arrived as %q (%d of %d CAPABILITY answers), want c L N Q", got, answers, n)
	}
}

// Input sent while a login is in flight waits in the proxy only up to the
// bound; a client that floods meanwhile is disconnected.
func TestInputFloodDuringLoginIsBounded(t *testing.T) {
	eachFrontEnd(t, testInputFloodDuringLoginIsBounded)
}

func testInputFloodDuringLoginIsBounded(t *testing.T, fe string) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "gone", http.StatusServiceUnavailable)
	}))
	defer hang.Close()
	defer close(release)
	// The goroutine front end reads nothing while the login runs: the
	// flood stops in the kernel's buffers until the login times out.
	env := startEnv(t, envOptions{tokenURL: hang.URL, tokenTO: 20 * time.Second,
		engine: Options{FrontEnd: fe, PendingLimit: 16 << 10, LoginTimeout: 2 * time.Second}})
	r := dialRaw(t, env.imapAddr)
	r.line()
	r.send("a LOGIN " + testAccount + " pw\r\n")
	offer(t, r.c, bytes.Repeat([]byte("x"), 64<<10))
	waitFor(t, "the flooding client to be gone", func() bool { return env.srv.Stats().PreLogin == 0 })
}

// A client that stops reading in the middle of a download loses its
// session after the send timeout: the upstream session, its goroutines and
// its mailbox slot are freed, and the log says why.
func TestSendTimeoutFreesStalledDownload(t *testing.T) {
	eachFrontEnd(t, testSendTimeoutFreesStalledDownload)
}

func testSendTimeoutFreesStalledDownload(t *testing.T, fe string) {
	// Larger than what the kernel buffers of both sockets can hold.
	boxes := map[string][]mock.Message{testAccount: {{UID: "huge", Body: bigMessage(24 << 20)}}}
	env := startEnv(t, envOptions{mailboxes: boxes, mailboxCap: 1,
		engine: Options{FrontEnd: fe, MailboxLimit: 1, SendTimeout: 300 * time.Millisecond, LoginTimeout: 10 * time.Second}})
	p := popLogin(t, env.popAddr, testAccount, "pw")
	p.c.(*net.TCPConn).SetReadBuffer(4096)
	p.send("RETR 1") // never read
	defer func() {
		if t.Failed() {
			t.Log(env.logs.String())
		}
	}()
	waitFor(t, "the stalled session to end", func() bool { return env.srv.Stats().Relays == 0 })
	if !strings.Contains(env.logs.String(), "send timeout: the client stopped reading") {
		t.Fatalf("the log does not say why the session ended")
	}
	settled(t, env)
	q := popLogin(t, env.popAddr, testAccount, "pw") // the slot is free again
	q.ok("STAT")
	q.ok("QUIT")
}

// An authenticated session with no traffic for its protocol's idle
// timeout is closed; one that keeps talking is not.
func TestIdleAuthenticatedSessionsAreClosed(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{POP3IdleTimeout: 400 * time.Millisecond, IMAPIdleTimeout: time.Hour}})
	idle := popLogin(t, env.popAddr, testAccount, "pw")
	busy := popLogin(t, env.popAddr, testAccount, "pw")
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		busy.ok("NOOP")
		time.Sleep(100 * time.Millisecond)
	}
	idle.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.br.ReadByte(); err != io.EOF {
		t.Fatalf("idle session: read gave %v, want EOF", err)
	}
	busy.ok("QUIT")
	if !strings.Contains(env.logs.String(), "idle timeout") {
		t.Fatalf("the log does not say why the idle session ended")
	}
	i, l := imapLogin(t, env.imapAddr, testAccount, "pw")
	if !strings.HasPrefix(l, "L1 OK") {
		t.Fatal(l)
	}
	time.Sleep(600 * time.Millisecond) // longer than POP3's, far shorter than IMAP's
	i.send("N NOOP\r\n")
	if got := i.until("N "); !strings.HasPrefix(got[len(got)-1], "N OK") {
		t.Fatalf("IMAP session after a pause: %q", got)
	}
}

// trickle sends one byte of an endless command every step until the proxy
// closes the connection, and reports how long that took (0: never, within
// the limit).
func trickle(c net.Conn, step, limit time.Duration) time.Duration {
	start := time.Now()
	for time.Since(start) < limit {
		if _, err := c.Write([]byte("a")); err != nil {
			return time.Since(start)
		}
		c.SetReadDeadline(time.Now().Add(step))
		buf := make([]byte, 256)
		for {
			_, err := c.Read(buf)
			if err == io.EOF {
				return time.Since(start)
			}
			if err != nil {
				break // the step's deadline: send the next byte
			}
		}
	}
	return 0
}

// A client that trickles one byte at a time without ever finishing a
// command (slowloris) is idle: it is disconnected after the idle timeout,
// on the event loop and on the goroutine (local TLS) front end alike.
func TestSlowlorisIsIdle(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{engine: Options{IdleTimeout: 500 * time.Millisecond},
		servers: []serverSpec{{name: "imaps", proto: "IMAP", upstream: func(up *mock.Upstream) string { return up.IMAPAddr }, keys: pc.keys(false)}}})
	plain, err := net.DialTimeout("tcp", env.imapAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if d := trickle(plain, 100*time.Millisecond, 10*time.Second); d == 0 {
		t.Fatal("event loop: a trickling client was never disconnected")
	}
	tc, err := tls.Dial("tcp", env.addrs["imaps"], pc.client())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if d := trickle(tc, 100*time.Millisecond, 10*time.Second); d == 0 {
		t.Fatal("TLS front end: a trickling client was never disconnected")
	}
	stillServes(t, env)
}

// On the local TLS front end, a client that pipelines and never reads is
// disconnected after the send timeout; nothing is buffered for it.
func TestNonReadingPipelinerOverTLS(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{engine: Options{SendTimeout: 300 * time.Millisecond},
		servers: []serverSpec{{name: "imaps", proto: "IMAP", upstream: func(up *mock.Upstream) string { return up.IMAPAddr }, keys: pc.keys(false)}}})
	raw := dialSmallWindow(t, env.addrs["imaps"], 4096)
	defer raw.Close()
	offer(t, tls.Client(raw, pc.client()), bytes.Repeat([]byte("a CAPABILITY\r\n"), 4096))
	waitFor(t, "the log to say why", func() bool {
		return strings.Contains(env.logs.String(), "send timeout: the client stopped reading")
	})
	stillServes(t, env)
}

// A graceful stop: clients before login get a goodbye, new clients are
// refused, authenticated sessions go on until they end or
// the drain's time is up; then IMAP clients are told BYE.
func TestDrain(t *testing.T) { eachFrontEnd(t, testDrain) }

func testDrain(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe}})
	pre := dialRaw(t, env.imapAddr)
	pre.line()
	pop := popLogin(t, env.popAddr, testAccount, "pw")
	imapSess, l := imapLogin(t, env.imapAddr, testAccount, "pw")
	if !strings.HasPrefix(l, "L1 OK") {
		t.Fatal(l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	drained := make(chan struct{})
	go func() { env.srv.Drain(ctx); close(drained) }()

	if got := pre.line(); got != "* BYE [UNAVAILABLE] emailproxy is shutting down, try again later" {
		t.Fatalf("client before login: %q", got)
	}
	pre.expectEOF()
	// A new client is refused: every listener is closed.
	if late, err := net.DialTimeout("tcp", env.popAddr, 5*time.Second); err == nil {
		late.Close()
		t.Fatal("a new client could connect during the drain")
	}
	pop.ok("NOOP") // authenticated sessions go on
	pop.ok("QUIT")
	select {
	case <-drained:
		t.Fatal("the drain ended while an IMAP session was still open")
	case <-time.After(300 * time.Millisecond):
	}
	lines := imapSess.until("* BYE")
	if got := lines[len(lines)-1]; got != "* BYE [UNAVAILABLE] emailproxy is shutting down" {
		t.Fatalf("IMAP session at the end of the drain: %q", lines)
	}
	imapSess.expectEOF()
	<-drained
	if st := env.srv.Stats(); st.Relays != 0 || st.PreLogin != 0 {
		t.Fatalf("after the drain: %+v", st)
	}
}

// A reload: a removed section stops serving, an added one starts, an
// unchanged one goes on, and sessions already relayed are not touched.
// Each section learns its upstream's greeting before its first client,
// at start and when a reload adds it.
func TestReloadServerSections(t *testing.T) { eachFrontEnd(t, testReloadServerSections) }

func testReloadServerSections(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe}})
	learned := func(port int) func() bool {
		return func() bool {
			l := env.srv.listener(port)
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.prof != nil
		}
	}
	waitFor(t, "the greeting learned at start", learned(portOfAddr(t, env.imapAddr)))
	pop := popLogin(t, env.popAddr, testAccount, "pw")
	text, err := os.ReadFile(env.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	oldPort := portOfAddr(t, env.imapAddr)
	newPort := freePort(t)
	moved := strings.Replace(string(text), fmt.Sprintf("[IMAP-%d]", oldPort), fmt.Sprintf("[IMAP-%d]", newPort), 1)
	cfg := env.reloadWith(moved)
	waitFor(t, "the added section's greeting learned", learned(newPort))
	// The removed section: refused.
	if c, err := net.DialTimeout("tcp", env.imapAddr, 5*time.Second); err == nil {
		c.Close()
		t.Fatal("the removed section's port still takes clients")
	}
	// The added one serves.
	r, l := imapLogin(t, fmt.Sprintf("127.0.0.1:%d", newPort), testAccount, "pw")
	if !strings.HasPrefix(l, "L1 OK") {
		t.Fatalf("added section: %q", l)
	}
	r.send("Q LOGOUT\r\n")
	r.until("Q ")
	// The unchanged one, and its session, go on.
	pop.ok("NOOP")
	pop.ok("QUIT")
	popLogin(t, env.popAddr, testAccount, "pw").ok("QUIT")
	if err := env.srv.Reload(&config.Config{File: cfg.File}); err == nil {
		t.Fatal("a configuration without servers was taken")
	}
}

// A client that hangs up while the server sits on its login frees the
// mailbox slot at once, whether it closes or resets: the next login of
// the mailbox does not wait for the first one's timeout. On both front
// ends (the goroutine one watches the client while its login runs).
func TestHangUpDuringStalledLoginFreesTheSlot(t *testing.T) {
	eachFrontEnd(t, testHangUpDuringStalledLoginFreesTheSlot)
}

func testHangUpDuringStalledLoginFreesTheSlot(t *testing.T, fe string) {
	env := startEnv(t, envOptions{mailboxCap: 1, engine: Options{FrontEnd: fe, MailboxLimit: 1, LoginTimeout: time.Minute, WarmConnections: -1}})
	key := upstream.MailboxKey(env.listenerFor(env.popAddr).srv, testAccount)
	for _, reset := range []bool{false, true} {
		env.up.SetUserFault(testAccount, mock.StallLogin)
		c := dialPOP(t, env.popAddr)
		c.ok("USER %s", testAccount)
		c.send("PASS pw")
		waitFor(t, "the stalled login to hold the slot", func() bool { held, _ := env.srv.gates.Held(key); return held == 1 })
		if reset {
			c.c.(*net.TCPConn).SetLinger(0)
		}
		c.c.Close()
		// The server still stalls: only the hang-up can free the slot.
		waitFor(t, "the slot to be free", func() bool { held, _ := env.srv.gates.Held(key); return held == 0 })
	}
	env.up.SetUserFault(testAccount, mock.NoFault)
	// The stopped logins are the client's doing: logged as such at info
	// level, counted as client_gone, and not blamed on the server (whose
	// exchange, cut short by a deadline, reads as a timeout).
	waitFor(t, "the logins to be logged", func() bool { return env.popLogins(telemetry.ClientGone) == 2 })
	if n := env.popLogins(telemetry.UpstreamUnavailable); n != 0 {
		t.Fatalf("%d logins counted as upstream_unavailable", n)
	}
	lines := loginLines(env.logs.String())
	for _, line := range lines {
		if line["level"] != "info" || line["error"] != "the client hung up during the login" || line["ok"] != false {
			t.Fatalf("a stopped login's log line: %v", line)
		}
	}
	if logs := env.logs.String(); len(lines) != 2 || strings.Contains(logs, "failed during authentication") || strings.Contains(logs, "timeout") {
		t.Fatalf("the hang-ups were not logged as the clients' doing:\n%s", logs)
	}
	p := popLogin(t, env.popAddr, testAccount, "pw") // well within the one-minute login timeout
	p.ok("QUIT")
}

// Commands a client sends while its login waits (here for the mailbox's
// one slot) are kept and answered once it is logged in, on both front
// ends; so is a client that ends its sending after them (its end is not
// a hang-up: the login goes on).
func TestCommandsSentDuringLoginAreAnswered(t *testing.T) {
	defer func(d time.Duration) { watchAfter = d }(watchAfter)
	watchAfter = time.Millisecond // the goroutine front end watches the client from here
	eachFrontEnd(t, testCommandsSentDuringLoginAreAnswered)
}

func testCommandsSentDuringLoginAreAnswered(t *testing.T, fe string) {
	env := startEnv(t, envOptions{mailboxCap: 1, engine: Options{FrontEnd: fe, MailboxLimit: 1}})
	key := upstream.MailboxKey(env.listenerFor(env.popAddr).srv, testAccount)
	for _, shut := range []bool{false, true} {
		first := popLogin(t, env.popAddr, testAccount, "pw")
		c := dialPOP(t, env.popAddr)
		c.ok("USER %s", testAccount)
		c.send("PASS pw")
		waitFor(t, "the second login to wait for the slot", func() bool { _, waiting := env.srv.gates.Held(key); return waiting == 1 })
		c.send("STAT")
		c.send("QUIT")
		if shut {
			c.c.(*net.TCPConn).CloseWrite()
		}
		time.Sleep(50 * time.Millisecond) // for the watch to read them (either way, they are answered)
		first.ok("QUIT")
		for _, want := range []string{"+OK", "+OK 1 ", "+OK"} {
			if got := c.status(); !strings.HasPrefix(got, want) {
				t.Fatalf("half-closed %v: %q, want %s (PASS, STAT, QUIT)", shut, got, want)
			}
		}
	}
}

// proxyClient connects through a pretend balancer: header, then POP3.
func proxyClient(t *testing.T, addr string, header []byte) (*popClient, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(header)
	p := &popClient{t: t, c: c, br: bufio.NewReader(c)}
	g, err := p.br.ReadString('\n')
	if err != nil {
		return p, ""
	}
	return p, g
}

// Behind a TCP balancer: the PROXY protocol header names the client, for
// the logs and the per-address limits; a connection without a valid header
// or from elsewhere than proxy_protocol_from is closed without a greeting.
func TestProxyProtocol(t *testing.T) { eachFrontEnd(t, testProxyProtocol) }

func testProxyProtocol(t *testing.T, fe string) {
	pop := func(up *mock.Upstream) string { return up.POPAddr }
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe}, servers: []serverSpec{
		{name: "pp", proto: "POP", upstream: pop, keys: "proxy_protocol = True"},
		{name: "elsewhere", proto: "POP", upstream: pop, keys: "proxy_protocol = True\nproxy_protocol_from = 10.0.0.0/8"}}})
	v1 := func(src string) []byte { return []byte("PROXY TCP4 " + src + " 127.0.0.1 40000 995\r\n") }
	p, g := proxyClient(t, env.addrs["pp"], v1("203.0.113.7"))
	if !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting after a v1 header: %q", g)
	}
	p.ok("USER %s", testAccount)
	p.ok("PASS pw")
	p.ok("STAT")
	p.ok("QUIT")
	if !strings.Contains(env.logs.String(), `"client":"203.0.113.7:40000"`) {
		t.Fatal("the log does not name the client the header gave")
	}
	v2 := append([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"), 198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x40, 0x03, 0xe3)
	if p, g := proxyClient(t, env.addrs["pp"], v2); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting after a v2 header: %q", g)
	} else {
		p.ok("QUIT")
	}
	// The limits count the header's address: five wrong passwords lock
	// 203.0.113.7 out, not 198.51.100.9 (the balancer's own address is
	// the same for both).
	for range 5 {
		p, _ := proxyClient(t, env.addrs["pp"], v1("203.0.113.7"))
		p.ok("USER %s", testAccount)
		p.cmd("PASS wrong")
	}
	p, _ = proxyClient(t, env.addrs["pp"], v1("203.0.113.7"))
	p.ok("USER %s", testAccount)
	if got := p.cmd("PASS pw"); !strings.Contains(got, "too many") {
		t.Fatalf("the header's address is not held back: %q", got)
	}
	p, _ = proxyClient(t, env.addrs["pp"], v2)
	p.ok("USER %s", testAccount)
	p.ok("PASS pw")
	if _, g := proxyClient(t, env.addrs["pp"], []byte("USER x\r\n")); g != "" {
		t.Fatalf("no header: greeted %q", g)
	}
	if _, g := proxyClient(t, env.addrs["elsewhere"], v1("203.0.113.7")); g != "" {
		t.Fatalf("a header from outside proxy_protocol_from: greeted %q", g)
	}
}

// A login in flight when the proxy stops is logged as stopped by that, at
// info level, and not counted as the server being unavailable.
func TestLoginStoppedByTheProxyStopping(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{LoginTimeout: time.Minute, WarmConnections: -1}})
	env.up.SetUserFault(testAccount, mock.StallLogin)
	key := upstream.MailboxKey(env.listenerFor(env.popAddr).srv, testAccount)
	c := dialPOP(t, env.popAddr)
	c.ok("USER %s", testAccount)
	c.send("PASS pw")
	waitFor(t, "the stalled login to hold the slot", func() bool { held, _ := env.srv.gates.Held(key); return held == 1 })
	env.srv.cancel(errStopping) // what Stop does first
	waitFor(t, "the login to be logged", func() bool { return env.popLogins(telemetry.Other) == 1 })
	if n := env.popLogins(telemetry.UpstreamUnavailable); n != 0 {
		t.Fatalf("%d logins counted as upstream_unavailable", n)
	}
	lines := loginLines(env.logs.String())
	if len(lines) != 1 || lines[0]["level"] != "info" || lines[0]["error"] != "the proxy is stopping" {
		t.Fatalf("the stopped login's log line: %v", lines)
	}
	env.up.SetUserFault(testAccount, mock.NoFault)
}

// popLogins reads the POP3 section's login counter for result.
func (e *proxyEnv) popLogins(result string) uint64 {
	section := e.listenerFor(e.popAddr).srv.Section
	return telemetry.Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_logins_total{proto="POP",server=%q,result=%q}`, section, result)).Get()
}

// loginLines returns the JSON log's "login" lines, decoded.
func loginLines(logs string) []map[string]any {
	var lines []map[string]any
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"message":"login"`) {
			var line map[string]any
			json.Unmarshal([]byte(l), &line)
			lines = append(lines, line)
		}
	}
	return lines
}
