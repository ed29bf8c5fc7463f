package engine

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/engine/upstream"
)

// waitFor polls cond for up to 30 s: generous, because the suite's race
// build runs beside other packages' on two shared cores; a passing wait
// returns as soon as cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func popLogin(t *testing.T, addr, user, pass string) *popClient {
	t.Helper()
	p := dialPOP(t, addr)
	p.ok("USER %s", user)
	p.ok("PASS %s", pass)
	return p
}

func (e *proxyEnv) listenerFor(addr string) *listener {
	for _, l := range e.srv.listenerList() {
		if l.srv.ListenAddr() == addr {
			return l
		}
	}
	e.t.Fatalf("no listener on %s", addr)
	return nil
}

// A login takes a pre-connected upstream connection; connections are
// recycled before they reach their maximum age; one the server dropped
// meanwhile is replaced by a fresh dial without the client noticing.
func TestWarmPoolServesAndRecycles(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{WarmMaxAge: 600 * time.Millisecond}})
	pool := env.listenerFor(env.popAddr).up.Pool

	popLogin(t, env.popAddr, testAccount, testPassword).ok("QUIT")
	waitFor(t, "a warm connection", func() bool { _, idle := pool.Snapshot(); return idle == 1 })
	// The connection that learned the server's greeting served the first
	// login; a refill dial the second.
	st, _ := pool.Snapshot()
	if st.Misses != 0 || st.Hits != 1 {
		t.Fatalf("first login: %+v", st)
	}
	popLogin(t, env.popAddr, testAccount, testPassword).ok("QUIT")
	if st, _ = pool.Snapshot(); st.Hits != 2 || st.Dialed < 1 {
		t.Fatalf("second login did not use a refilled warm connection: %+v", st)
	}

	// Recycling: connections age out and are replaced while in use.
	waitFor(t, "warm connections to be recycled", func() bool {
		st, idle := pool.Snapshot()
		return st.Expired >= 2 && idle == 1
	})
	if st, _ := pool.Snapshot(); st.OldestIdle >= 600*time.Millisecond {
		t.Errorf("idle connection %v old, max age 600ms", st.OldestIdle)
	}

	// The provider drops every connection: the next login still works.
	env.up.DropConnections()
	popLogin(t, env.popAddr, testAccount, testPassword).ok("QUIT")
	if env.up.Logins() != 3 {
		t.Fatalf("upstream logins %d, want 3", env.up.Logins())
	}
}

// A warm POP3 connection the server has timed out answers AUTH with
// -ERR before any token was sent: the login goes on over a fresh
// connection, and the token is not blamed (no new token request).
func TestWarmConnectionTimedOutByServer(t *testing.T) {
	env := startEnv(t, envOptions{preAuthTO: 300 * time.Millisecond, engine: Options{WarmMaxAge: 10 * time.Second}})
	pool := env.listenerFor(env.popAddr).up.Pool
	popLogin(t, env.popAddr, testAccount, testPassword).ok("QUIT")
	waitFor(t, "a warm connection", func() bool { _, idle := pool.Snapshot(); return idle == 1 })
	tokens := env.up.Authority.Requests()
	time.Sleep(600 * time.Millisecond) // the server times the warm connection out
	popLogin(t, env.popAddr, testAccount, testPassword).ok("QUIT")
	if st, _ := pool.Snapshot(); st.Hits != 2 {
		t.Fatalf("the second login did not try the warm connection: %+v", st)
	}
	if env.up.Authority.Requests() != tokens || strings.Contains(env.logs.String(), "refused the token") {
		t.Fatalf("a server timeout was taken for a token refusal: %d token requests\n%s", env.up.Authority.Requests()-tokens, env.logs.String())
	}
}

// With POP3InitialResponse the token goes on the AUTH line; by default
// in two steps.
func TestPOP3InitialResponse(t *testing.T) {
	for _, ir := range []bool{false, true} {
		env := startEnv(t, envOptions{engine: Options{POP3InitialResponse: ir}})
		p := popLogin(t, env.popAddr, testAccount, testPassword)
		p.ok("STAT")
		p.ok("QUIT")
		if got := env.up.POP3InitialResponses(); (got == 1) != ir || env.up.Logins() != 1 {
			t.Fatalf("initial response %v: the server saw %d one-line AUTHs, %d logins", ir, got, env.up.Logins())
		}
	}
}

// Logins over the per-mailbox cap wait for a session of that mailbox to
// end instead of failing upstream; one that waits past its login timeout
// gets a temporary error that says why.
func TestMailboxCapQueuesAndReleases(t *testing.T) {
	env := startEnv(t, envOptions{mailboxCap: 2, engine: Options{MailboxLimit: 2, LoginTimeout: 3 * time.Second}})
	key := upstream.MailboxKey(env.listenerFor(env.popAddr).srv, testAccount)
	a := popLogin(t, env.popAddr, testAccount, testPassword)
	b := popLogin(t, env.popAddr, testAccount, testPassword)

	c := dialPOP(t, env.popAddr)
	c.ok("USER %s", testAccount)
	c.send("PASS %s", testPassword)
	waitFor(t, "the third login to queue", func() bool { held, waiting := env.srv.gates.Held(key); return held == 2 && waiting == 1 })
	a.ok("QUIT")
	if got := c.status(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("queued login: %q", got)
	}
	if held, waiting := env.srv.gates.Held(key); held != 2 || waiting != 0 {
		t.Fatalf("after hand-over: held %d waiting %d", held, waiting)
	}

	// Nobody leaves: the fourth login waits until its timeout.
	d := dialPOP(t, env.popAddr)
	d.ok("USER %s", testAccount)
	if got := d.cmd("PASS %s", testPassword); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") || !strings.Contains(got, "too many sessions") {
		t.Fatalf("timed-out queued login: %q", got)
	}
	b.ok("QUIT")
	c.ok("QUIT")
	waitFor(t, "all slots free", func() bool { held, _ := env.srv.gates.Held(key); return held == 0 })
	if _, peak := env.up.Sessions("pop3", testAccount); peak != 2 || env.up.LimitRefusals() != 0 {
		t.Fatalf("upstream saw peak %d sessions, %d refusals", peak, env.up.LimitRefusals())
	}
}

const otherAccount = "other@yourdomain.com"

// With reuse on, a LOGOUT keeps the upstream session for the next login
// of the same account and password, reset to no mailbox selected; other
// accounts, wrong passwords and sessions that used stateful commands
// never get it.
func TestIMAPSessionReuse(t *testing.T) {
	const pw = "reuse-pw-1"
	env := startEnv(t, envOptions{
		mailboxes: map[string][]mock.Message{
			testAccount:  {{UID: "a1", Body: []byte("Subject: a\r\n\r\nA\r\n")}},
			otherAccount: {{UID: "b1", Body: []byte("Subject: b\r\n\r\nB\r\n")}, {UID: "b2", Body: []byte("Subject: b2\r\n\r\nB2\r\n")}},
		},
		extraConfig: "\n[" + otherAccount + "]\ntoken_url = {TOKEN}\noauth2_scope = " + testScope +
			"\noauth2_flow = client_credentials\nclient_id = " + testClientID + "\nclient_secret = " + testSecret + "\n",
		engine: Options{IMAPSessionReuse: 5 * time.Second},
	})

	// First session: SELECT, then LOGOUT answered by the proxy.
	c, ok := imapLogin(t, env.imapAddr, testAccount, pw)
	if !strings.HasPrefix(ok, "L1 OK") {
		t.Fatalf("login: %q", ok)
	}
	c.send("S1 SELECT INBOX\r\n")
	if l := c.until("S1 "); !strings.Contains(strings.Join(l, "\n"), "1 EXISTS") {
		t.Fatalf("select: %q", l)
	}
	c.send("Q1 LOGOUT\r\n")
	if l := c.until("Q1 "); l[0] != "* BYE emailproxy: logged out" || l[1] != "Q1 OK LOGOUT completed" {
		t.Fatalf("logout: %q", l)
	}
	c.expectEOF()
	waitFor(t, "the session to be kept", func() bool { return env.srv.linger.Snapshot().Parked == 1 })

	// The other account gets its own upstream session, not the kept one.
	o, ok := imapLogin(t, env.imapAddr, otherAccount, pw)
	if !strings.HasPrefix(ok, "L1 OK") || env.up.Logins() != 2 {
		t.Fatalf("other account: %q, upstream logins %d", ok, env.up.Logins())
	}
	// Pipelined: the LOGOUT comes before the SELECT is answered; the
	// answers still arrive in order, the goodbye last.
	o.send("S1 SELECT INBOX\r\nQ1 LOGOUT\r\n")
	l := o.until("Q1 ")
	joined := strings.Join(l, "\n")
	if !strings.Contains(joined, "2 EXISTS") || !strings.Contains(joined, "S1 OK") ||
		l[len(l)-2] != "* BYE emailproxy: logged out" || strings.Index(joined, "S1 OK") > strings.Index(joined, "* BYE") {
		t.Fatalf("other account, pipelined: %q", l)
	}

	// A wrong password is refused and does not consume the kept session.
	_, bad := imapLogin(t, env.imapAddr, testAccount, "not the password")
	if !strings.HasPrefix(bad, "L1 NO") {
		t.Fatalf("wrong password: %q", bad)
	}

	// The right password gets the kept session: no new upstream login,
	// and no mailbox selected (FETCH is refused until SELECT).
	r, ok := imapLogin(t, env.imapAddr, testAccount, pw)
	if !strings.HasPrefix(ok, "L1 OK") || env.up.Logins() != 2 || env.srv.linger.Snapshot().Reused != 1 {
		t.Fatalf("reuse: %q, upstream logins %d, %+v", ok, env.up.Logins(), env.srv.linger.Snapshot())
	}
	r.send("F1 FETCH 1 (FLAGS)\r\n")
	if l := r.until("F1 "); !strings.HasPrefix(l[len(l)-1], "F1 BAD") && !strings.HasPrefix(l[len(l)-1], "F1 NO") {
		t.Fatalf("a mailbox is still selected in the reused session: %q", l)
	}
	// A command outside the stateless set makes the session single-use:
	// LOGOUT then goes upstream and the session ends.
	r.send("E1 ENABLE CONDSTORE\r\n")
	r.until("E1 ")
	r.send("Q2 LOGOUT\r\n")
	r.until("Q2 OK")
	r.expectEOF()
	if n := env.srv.linger.Snapshot().Parked; n != 2 { // the first session and the other account's
		t.Fatalf("parked %d sessions, want 2", n)
	}

	// A real client logs in (reusing the other account's session), reads
	// and logs out cleanly.
	ic, err := imapclient.DialInsecure(env.imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login(otherAccount, pw).Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 2 {
		t.Fatalf("select after reuse: %v %v", sel, err)
	}
	if err := ic.Logout().Wait(); err != nil {
		t.Fatalf("logout: %v", err)
	}
	if env.up.Logins() != 2 || env.srv.linger.Snapshot().Reused != 2 {
		t.Fatalf("upstream logins %d (want 2: one per account), %+v", env.up.Logins(), env.srv.linger.Snapshot())
	}
	// Nothing secret in the logs (debug level) of all that.
	logs := env.logs.String()
	tokens := accessTokens(env)
	if len(tokens) == 0 {
		t.Fatal("no tokens seen upstream")
	}
	for _, secret := range append([]string{pw, testSecret}, tokens...) {
		if strings.Contains(logs, secret) {
			t.Fatalf("a secret is in the logs: %q", secret)
		}
	}
}

// Session reuse works the same behind a local TLS listener (the relay's
// client side is then TLS too), with a real client logging in and out
// several times over one upstream session.
func TestIMAPSessionReuseOverLocalTLS(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{servers: tlsServers(pc)[:1], engine: Options{IMAPSessionReuse: 5 * time.Second}})
	for i := 0; i < 3; i++ {
		c, err := imapclient.DialTLS(env.addrs["imaps"], &imapclient.Options{TLSConfig: pc.client()})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(testAccount, testPassword).Wait(); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil || sel.NumMessages != 1 {
			t.Fatalf("select %d: %v %v", i, sel, err)
		}
		if err := c.Logout().Wait(); err != nil {
			t.Fatalf("logout %d: %v", i, err)
		}
		c.Close()
		want := i + 1
		waitFor(t, "the session to be kept", func() bool { return env.srv.linger.Snapshot().Parked == want })
	}
	if env.up.Logins() != 1 || env.srv.linger.Snapshot().Reused != 2 {
		t.Fatalf("upstream logins %d (want 1), %+v", env.up.Logins(), env.srv.linger.Snapshot())
	}
}

// With reuse on and the mailbox at its cap, a login waiting for a slot
// gets one when a session logs out: the session is closed, not kept.
func TestReuseDoesNotStarveQueuedLogins(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{IMAPSessionReuse: time.Minute, MailboxLimit: 1, LoginTimeout: 20 * time.Second}})
	a, ok := imapLogin(t, env.imapAddr, testAccount, "pw-starve")
	if !strings.HasPrefix(ok, "L1 OK") {
		t.Fatalf("first login: %q", ok)
	}
	b := dialRaw(t, env.imapAddr)
	b.line()
	b.send("L2 LOGIN " + testAccount + " pw-starve\r\n")
	key := upstream.MailboxKey(env.listenerFor(env.imapAddr).srv, testAccount)
	waitFor(t, "the second login to queue", func() bool { _, waiting := env.srv.gates.Held(key); return waiting == 1 })
	a.send("Q1 LOGOUT\r\n")
	a.until("Q1 ")
	if l := b.until("L2 "); !strings.HasPrefix(l[len(l)-1], "L2 OK") {
		t.Fatalf("queued login: %q", l)
	}
	if n := env.srv.linger.Snapshot().Parked; n != 0 {
		t.Fatalf("%d sessions kept while a login waited", n)
	}
}

// accessTokens are the tokens the provider's servers received.
func accessTokens(env *proxyEnv) []string {
	var toks []string
	for _, raw := range env.up.XOAUTH2Received() {
		if _, tok, ok := strings.Cut(raw, "auth=Bearer "); ok {
			toks = append(toks, strings.TrimRight(tok, "\x01"))
		}
	}
	return toks
}

// A server that refuses a login because the mailbox is busy ([IN-USE],
// [LIMIT]: no cap in the proxy, or another client of the mailbox) is
// passed on as a temporary failure, and the token is kept: no token
// request, and the next login once a session ends uses the same token.
func TestServerBusyIsNotATokenRefusal(t *testing.T) {
	env := startEnv(t, envOptions{mailboxCap: 1, engine: Options{MailboxLimit: -1}})
	a := popLogin(t, env.popAddr, testAccount, testPassword)
	requests := env.up.Authority.Requests()
	b := dialPOP(t, env.popAddr)
	b.ok("USER %s", testAccount)
	if got := b.cmd("PASS %s", testPassword); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") || !strings.Contains(got, "busy") || strings.Contains(got, "token") {
		t.Fatalf("POP3 login to a busy mailbox: %q", got)
	}
	quoted := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(testPassword)
	first, got := imapLogin(t, env.imapAddr, testAccount, quoted)
	if !strings.HasPrefix(got, "L1 OK") {
		t.Fatalf("IMAP login: %q", got)
	}
	second, got := imapLogin(t, env.imapAddr, testAccount, quoted)
	if !strings.HasPrefix(got, "L1 NO [UNAVAILABLE]") || !strings.Contains(got, "busy") || strings.Contains(got, "token") {
		t.Fatalf("IMAP login to a busy mailbox: %q", got)
	}
	second.c.Close()
	first.c.Close()
	a.ok("QUIT")
	waitFor(t, "the POP3 session to end upstream", func() bool { n, _ := env.up.Sessions("pop3", testAccount); return n == 0 })
	c := popLogin(t, env.popAddr, testAccount, testPassword)
	c.ok("QUIT")
	if n := env.up.Authority.Requests(); n != requests {
		t.Fatalf("%d token requests after a busy refusal; the token was dropped", n-requests)
	}
}

// The per-mailbox cap counts each protocol apart, as servers do: with a
// cap of 1, a POP3 session of a mailbox does not make its IMAP login wait.
func TestMailboxCapIsPerProtocol(t *testing.T) {
	env := startEnv(t, envOptions{mailboxCap: 1, engine: Options{MailboxLimit: 1, LoginTimeout: 2 * time.Second}})
	p := popLogin(t, env.popAddr, testAccount, testPassword)
	quoted := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(testPassword)
	r, got := imapLogin(t, env.imapAddr, testAccount, quoted)
	if !strings.HasPrefix(got, "L1 OK") {
		t.Fatalf("IMAP login beside a POP3 session, cap 1: %q", got)
	}
	r.send("L2 LOGOUT\r\n")
	r.until("L2 ")
	p.ok("QUIT")
}

// A reload that changes a section closes the sessions it kept: a login
// after it gets a session made under the new configuration, never one
// made under the old (another server, perhaps).
func TestReloadClosesKeptSessionsOfAChangedSection(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{IMAPSessionReuse: time.Minute}})
	c, ok := imapLogin(t, env.imapAddr, testAccount, "pw-reload")
	if !strings.HasPrefix(ok, "L1 OK") {
		t.Fatalf("login: %q", ok)
	}
	c.send("Q1 LOGOUT\r\n")
	c.until("Q1 ")
	waitFor(t, "the session to be kept", func() bool { return env.srv.linger.Snapshot().Parked == 1 })
	if now, _ := env.up.Sessions("imap", testAccount); now != 1 {
		t.Fatalf("%d IMAP sessions upstream, want the kept one", now)
	}
	text, err := os.ReadFile(env.cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	section := fmt.Sprintf("[IMAP-%d]\nserver_address = 127.0.0.1\n", portOfAddr(t, env.imapAddr))
	changed := strings.Replace(string(text), section, strings.Replace(section, "127.0.0.1", "localhost", 1), 1)
	if changed == string(text) {
		t.Fatal("the section to change is not in the config")
	}
	env.reloadWith(changed)
	waitFor(t, "the kept session to be closed", func() bool { now, _ := env.up.Sessions("imap", testAccount); return now == 0 })
	logins := env.up.Logins()
	if _, ok := imapLogin(t, env.imapAddr, testAccount, "pw-reload"); !strings.HasPrefix(ok, "L1 OK") ||
		env.up.Logins() != logins+1 || env.srv.linger.Snapshot().Reused != 0 {
		t.Fatalf("login after the reload: %q, %d fresh upstream logins, %+v", ok, env.up.Logins()-logins, env.srv.linger.Snapshot())
	}
}
