package engine

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/smtp"
	"strings"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/engine/upstream"
)

// smtpReuseEnv is the mock provider and the proxy with SMTP session reuse
// on, for an implicit-TLS and a STARTTLS upstream.
func smtpReuseEnv(t *testing.T, frontEnd string) *proxyEnv {
	return startEnv(t, envOptions{servers: smtpServers[:2], engine: Options{SMTPSessionReuse: time.Minute, FrontEnd: frontEnd}})
}

// smtpRawLogin opens a raw session to addr and logs in with AUTH PLAIN.
func smtpRawLogin(t *testing.T, addr, pass string) (*rawConn, string) {
	t.Helper()
	r := dialRaw(t, addr)
	r.line()
	r.send("EHLO c\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00"+pass)) + "\r\n")
	lines := r.until("2") // the EHLO reply's lines, then the AUTH's
	for strings.HasPrefix(lines[len(lines)-1], "250") {
		lines = append(lines, r.line())
	}
	return r, lines[len(lines)-1]
}

// With reuse on, a QUIT keeps the upstream session for the next login of
// the same account and password: messages, whatever lines they hold, arrive
// whole, and the next client is not logged in upstream again. On both
// front ends, for both kinds of upstream port.
func TestSMTPSessionReuse(t *testing.T) {
	const pw = "smtp-reuse-pw"
	for _, frontEnd := range []string{FrontEndGnet, FrontEndGoroutines} {
		env := smtpReuseEnv(t, frontEnd)
		for _, name := range []string{"smtp465", "smtp587"} {
			t.Run(frontEnd+"/"+name, func(t *testing.T) { sendThroughKeptSessions(t, env, env.addrs[name], pw) })
		}
		// The debug log of it all holds no password, secret or token.
		logs := env.logs.String()
		for _, secret := range append([]string{pw, testSecret}, accessTokens(env)...) {
			if strings.Contains(logs, secret) {
				t.Fatalf("a secret is in the logs: %q", secret)
			}
		}
		if !strings.Contains(logs, `"kept_upstream":true`) {
			t.Fatal("no session was logged as kept")
		}
	}
}

// sendThroughKeptSessions sends three messages on three sessions to addr,
// each but the first taking the session the one before it left.
func sendThroughKeptSessions(t *testing.T, env *proxyEnv, addr, pw string) {
	logins, before := env.up.Logins(), env.srv.linger.Snapshot()
	body := "Subject: lines a relay might take for commands\r\n\r\nQUIT\r\nRSET\r\n.\r\n..\r\n.QUIT\r\nDATA\r\n"
	for i := range 3 {
		c := dialSMTPClient(t, addr)
		if err := c.Auth(smtp.PlainAuth("", testAccount, pw, "127.0.0.1")); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
		smtpSend(t, c, testAccount, fmt.Appendf(nil, "%s%d\r\n", body, i), "someone@example.net")
		if err := c.Quit(); err != nil {
			t.Fatalf("QUIT %d: %v", i, err)
		}
		waitFor(t, "the session to be kept", func() bool {
			return env.srv.Stats().Relays == 0 && env.srv.linger.Snapshot().Parked == before.Parked+i+1
		})
	}
	if got := env.up.Logins() - logins; got != 1 {
		t.Fatalf("%d upstream logins for 3 sessions, want 1", got)
	}
	if got := env.srv.linger.Snapshot().Reused - before.Reused; got != 2 {
		t.Fatalf("%d sessions reused, want 2", got)
	}
	msgs := env.up.SMTPMessages()
	msgs = msgs[len(msgs)-3:]
	for i, m := range msgs {
		// net/smtp stuffs the dots; the mock keeps what it got unstuffed.
		if want := fmt.Sprintf("%s%d\r\n", body, i); m.User != testAccount || string(m.Data) != want {
			t.Fatalf("message %d arrived as %q", i, m.Data)
		}
	}
}

// What a client does decides whether its session is kept: raw sessions,
// each followed by a login that shows whether the kept session was taken.
func TestSMTPSessionReuseKeepsOnlyCleanSessions(t *testing.T) {
	const pw = "smtp-reuse-pw"
	plainMsg := "MAIL FROM:<" + testAccount + ">\r\nRCPT TO:<x@example.net>\r\n"
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, r *rawConn)
		kept bool
	}{
		{"quit pipelined after the message", func(t *testing.T, r *rawConn) {
			r.send(plainMsg + "DATA\r\n")
			r.until("354")
			r.send("Subject: x\r\n\r\nQUIT\r\n.\r\nQUIT\r\n")
			if l := r.until("221"); len(l) != 2 || !strings.HasPrefix(l[0], "250") {
				t.Fatalf("%q", l)
			}
			r.expectEOF()
		}, true},
		{"bdat chunks holding command lines", func(t *testing.T, r *rawConn) {
			chunk := "Subject: b\r\n\r\nQUIT\r\nRSET\r\n"
			r.send(plainMsg + fmt.Sprintf("BDAT %d LAST\r\n%sQUIT\r\n", len(chunk), chunk))
			if l := r.until("221"); len(l) != 4 {
				t.Fatalf("%q", l)
			}
		}, true},
		{"hang-up between commands", func(t *testing.T, r *rawConn) {
			r.send("NOOP\r\n")
			r.until("250")
			r.c.Close()
		}, true},
		{"transaction left open", func(t *testing.T, r *rawConn) {
			r.send(plainMsg)
			r.line()
			r.line()
			r.send("QUIT\r\n")
			r.until("221")
		}, true},
		{"EHLO after login", func(t *testing.T, r *rawConn) {
			r.send("EHLO again\r\n")
			r.until("250 ")
			r.send("QUIT\r\n")
			r.until("221")
		}, false},
		{"hang-up in the middle of a message", func(t *testing.T, r *rawConn) {
			r.send(plainMsg + "DATA\r\n")
			r.until("354")
			r.send("Subject: cut\r\n\r\nhalf")
			r.c.Close()
		}, false},
		{"content sent before the server's 354", func(t *testing.T, r *rawConn) {
			r.send(plainMsg + "DATA\r\nSubject: early\r\n\r\nQUIT\r\n.\r\nQUIT\r\n")
			r.until("221")
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := smtpReuseEnv(t, FrontEndGnet)
			addr := env.addrs["smtp465"]
			r, ok := smtpRawLogin(t, addr, pw)
			if !strings.HasPrefix(ok, "235") {
				t.Fatalf("login: %q", ok)
			}
			tc.run(t, r)
			waitFor(t, "the session to end", func() bool { return env.srv.Stats().Relays == 0 })
			if parked := env.srv.linger.Snapshot().Parked; parked != map[bool]int{true: 1, false: 0}[tc.kept] {
				t.Fatalf("kept %d sessions, want kept=%v", parked, tc.kept)
			}
			// A wrong password does not get the kept session.
			if _, bad := smtpRawLogin(t, addr, "wrong"); !strings.HasPrefix(bad, "535") {
				t.Fatalf("wrong password: %q", bad)
			}
			// The next login takes it, or logs in upstream again.
			logins := env.up.Logins()
			next, ok := smtpRawLogin(t, addr, pw)
			if !strings.HasPrefix(ok, "235") {
				t.Fatalf("next login: %q", ok)
			}
			if fresh := env.up.Logins() - logins; fresh != map[bool]int{true: 0, false: 1}[tc.kept] {
				t.Fatalf("%d fresh upstream logins after kept=%v", fresh, tc.kept)
			}
			// The session it got works, with no transaction left over.
			next.send("RCPT TO:<y@example.net>\r\n")
			if l := next.line(); !strings.HasPrefix(l, "5") {
				t.Fatalf("RCPT before MAIL in the next session: %q", l)
			}
			next.send(plainMsg + "DATA\r\n")
			next.until("354")
			next.send("Subject: next\r\n\r\nok\r\n.\r\nQUIT\r\n")
			next.until("221")
			msgs := env.up.SMTPMessages()
			if last := msgs[len(msgs)-1]; string(last.Data) != "Subject: next\r\n\r\nok\r\n" {
				t.Fatalf("next message %q", last.Data)
			}
			for _, m := range msgs {
				if strings.Contains(string(m.Data), "cut") {
					t.Fatalf("a message cut short was delivered: %q", m.Data)
				}
			}
		})
	}
}

// A server that does not answer the proxy's RSET with a plain 250 (it
// stalls, refuses, or says more) loses its session: it is closed, not
// kept, within resetTimeout, and the client still gets its 221. One that
// answers 250 keeps it.
func TestSMTPSessionReuseNeedsTheResetAnswered(t *testing.T) {
	defer func(d time.Duration) { resetTimeout = d }(resetTimeout)
	resetTimeout = 300 * time.Millisecond
	ca, err := mock.NewCA("scripted SMTP CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	for _, onReset := range []string{"250 2.0.0 OK\r\n", "", "421 4.3.2 shutting down\r\n", "250 2.0.0 OK\r\n250 2.0.0 unasked\r\n"} {
		kept := onReset == "250 2.0.0 OK\r\n"
		t.Run(fmt.Sprintf("%q", onReset), func(t *testing.T) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf}})
			if err != nil {
				t.Fatal(err)
			}
			closed := make(chan struct{}, 4)
			acceptEach(t, ln, func(c net.Conn) {
				defer func() { closed <- struct{}{} }()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(c)
				c.Write([]byte("220 scripted.example\r\n"))
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					switch verb := strings.ToUpper(strings.Fields(line + " x")[0]); verb {
					case "EHLO":
						c.Write([]byte("250-scripted.example\r\n250 AUTH XOAUTH2\r\n"))
					case "AUTH":
						c.Write([]byte("235 2.7.0 Authentication successful\r\n"))
					case "RSET":
						c.Write([]byte(onReset))
					default:
						c.Write([]byte("250 2.0.0 OK\r\n"))
					}
				}
			})
			env := startEnv(t, envOptions{ca: ca, engine: Options{SMTPSessionReuse: time.Minute, WarmConnections: -1},
				servers: []serverSpec{{name: "scripted", proto: "SMTP", upstream: func(*mock.Upstream) string { return ln.Addr().String() }}}})
			r, ok := smtpRawLogin(t, env.addrs["scripted"], "pw")
			if !strings.HasPrefix(ok, "235") {
				t.Fatalf("login: %q", ok)
			}
			r.send("NOOP\r\n")
			r.line()
			r.send("QUIT\r\n")
			if l := r.line(); !strings.HasPrefix(l, "221") {
				t.Fatalf("QUIT: %q", l)
			}
			if kept {
				waitFor(t, "the session to be kept", func() bool { return env.srv.linger.Snapshot().Parked == 1 })
				return
			}
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("the server's connection was not closed")
			}
			waitFor(t, "the relay to end", func() bool { return env.srv.Stats().Relays == 0 })
			if st := env.srv.linger.Snapshot(); st.Parked != 0 {
				t.Fatalf("a session whose RSET got %q was kept: %+v", onReset, st)
			}
		})
	}
}

// A kept SMTP session holds one of its mailbox's slots. A login that
// cannot take it (here: through the other section to the same server)
// and finds the mailbox at its cap closes it and gets the slot at once;
// a login queued for the slot gets it at the next QUIT, whose session is
// then not kept.
func TestSMTPKeptSessionGivesWayAtTheMailboxCap(t *testing.T) {
	env := startEnv(t, envOptions{servers: smtpServers[:2],
		engine: Options{SMTPSessionReuse: time.Minute, MailboxLimit: 1, LoginTimeout: 20 * time.Second}})
	const pw = "pw-cap"
	a, ok := smtpRawLogin(t, env.addrs["smtp465"], pw)
	if !strings.HasPrefix(ok, "235") {
		t.Fatalf("first login: %q", ok)
	}
	a.send("QUIT\r\n")
	a.until("221")
	waitFor(t, "the session to be kept", func() bool { return env.srv.linger.Snapshot().Parked == 1 })
	logins := env.up.Logins()
	b, ok := smtpRawLogin(t, env.addrs["smtp587"], pw)
	if !strings.HasPrefix(ok, "235") || env.up.Logins() != logins+1 {
		t.Fatalf("login through the other section: %q, %d fresh upstream logins", ok, env.up.Logins()-logins)
	}
	if env.srv.linger.Snapshot().Reused != 0 {
		t.Fatal("a kept session was taken through another section")
	}
	c := dialRaw(t, env.addrs["smtp587"])
	c.line()
	c.send("EHLO c\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00"+pw)) + "\r\n")
	key := upstream.MailboxKey(env.listenerFor(env.addrs["smtp587"]).srv, testAccount)
	waitFor(t, "the next login to queue", func() bool { _, waiting := env.srv.gates.Held(key); return waiting == 1 })
	b.send("QUIT\r\n")
	b.until("221")
	if l := c.until("235"); !strings.HasPrefix(l[len(l)-1], "235") {
		t.Fatalf("queued login: %q", l)
	}
	if st := env.srv.linger.Snapshot(); st.Parked != 1 || st.Reused != 0 {
		t.Fatalf("a session was kept while a login waited: %+v", st)
	}
}

// A kept session is not reused past the expiry of the token it logged in
// with, however long --smtp-session-reuse would keep it: it is dropped
// then, and the next login logs in afresh, with a fresh token, as a
// client logging in itself would.
func TestKeptSessionEndsWithItsToken(t *testing.T) {
	env := startEnv(t, envOptions{servers: smtpServers[:1], tokenLife: 4 * time.Second,
		engine: Options{SMTPSessionReuse: time.Hour}})
	addr := env.addrs["smtp465"]
	r, ok := smtpRawLogin(t, addr, "pw-exp")
	if !strings.HasPrefix(ok, "235") {
		t.Fatalf("login: %q", ok)
	}
	r.send("QUIT\r\n")
	r.until("221")
	waitFor(t, "the session to be kept", func() bool { return env.srv.linger.Snapshot().Parked == 1 })
	// Kept for an hour, but its token lasts seconds: waitFor's 30 s are
	// enough only if the token's expiry ends it.
	waitFor(t, "the session to be dropped at its token's expiry", func() bool { return env.srv.linger.Snapshot().Expired == 1 })
	logins := env.up.Logins()
	if _, ok := smtpRawLogin(t, addr, "pw-exp"); !strings.HasPrefix(ok, "235") || env.up.Logins() != logins+1 {
		t.Fatalf("next login: %q, %d fresh upstream logins", ok, env.up.Logins()-logins)
	}
}

// A client that pipelines commands and never reads their replies cannot
// hold a reusable session (or its memory) for ever: the send timeout ends
// it, the session is not kept, and its mailbox slot comes back.
func TestSMTPReuseRelayNonReader(t *testing.T) {
	env := startEnv(t, envOptions{servers: smtpServers[:1],
		engine: Options{SMTPSessionReuse: time.Minute, SendTimeout: 300 * time.Millisecond}})
	r, ok := smtpRawLogin(t, env.addrs["smtp465"], "pw-flood")
	if !strings.HasPrefix(ok, "235") {
		t.Fatalf("login: %q", ok)
	}
	flood := []byte(strings.Repeat("NOOP\r\n", 1<<16))
	r.c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	var werr error
	for sent := 0; werr == nil && sent < 256<<20; sent += len(flood) {
		_, werr = r.c.Write(flood)
	}
	if werr == nil {
		t.Fatal("256 MiB of commands went through without a reply read")
	}
	waitFor(t, "the session to end", func() bool { return env.srv.Stats().Relays == 0 })
	if st := env.srv.linger.Snapshot(); st.Parked != 0 {
		t.Fatalf("a non-reading client's session was kept: %+v", st)
	}
	key := upstream.MailboxKey(env.listenerFor(env.addrs["smtp465"]).srv, testAccount)
	if held, _ := env.srv.gates.Held(key); held != 0 {
		t.Fatalf("%d mailbox slots still held", held)
	}
}
