//go:build linux

package engine

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// With a real Dovecot (OpenSSL's TLS, its own session tickets and IDLE):
// a session in IDLE parks and still gets the EXISTS of a message another
// client appends; its LOGOUT keeps the session (reuse), which the waiter
// watches and the next login takes; and a POP3 client that sends its
// last commands and shuts down writing gets every answer, also when it
// sends its whole session before its login is answered.
func TestDovecotParkedSessions(t *testing.T) {
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{ParkAfter: 20 * time.Millisecond, IMAPSessionReuse: time.Minute})
	srv, imapAddr, popAddr, logs := px.srv, px.imap, px.pop, px.logs
	parked := func(what string, n int) {
		t.Helper()
		waitFor(t, what, func() bool { return srv.Stats().Parked == n && relayGoroutines() == 0 })
	}

	c, notified := dialIMAPNotified(t, imapAddr)
	if err := c.Login(dovecotUser, "pw").Wait(); err != nil {
		t.Fatalf("login: %v\n%s", err, logs.String())
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	parked("the IDLE session to park", 2)

	msg := []byte("Subject: parked\r\n\r\nhello from a parked session\r\n")
	c2 := appendFromSecondClient(t, imapAddr, dovecotUser, "pw", msg, notified, 1)
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	c2.Logout().Wait()
	parked("the session to park again", 2)
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 || !strings.Contains(string(msgs[0].FindBodySection(section)), "hello from a parked session") {
		t.Fatalf("FETCH after a park: %v %v", msgs, err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both sessions kept", func() bool { return srv.linger.Snapshot().Parked == 2 && srv.Stats().Relays == 0 })
	time.Sleep(100 * time.Millisecond) // Dovecot's session tickets and anything else arrive while kept
	r, l := imapLogin(t, imapAddr, dovecotUser, "pw")
	if !strings.HasPrefix(l, "L1 OK") || srv.linger.Snapshot().Reused != 1 {
		t.Fatalf("a kept session (watched by the waiter) was not reused: %q %+v", l, srv.linger.Snapshot())
	}
	r.send("S SELECT INBOX\r\n")
	if got := r.until("S "); !strings.HasPrefix(got[len(got)-1], "S OK") {
		t.Fatalf("SELECT in the reused session: %q", got)
	}

	p := popLogin(t, popAddr, dovecotUser, "pw")
	p.send("STAT")
	p.send("RETR 1")
	p.send("QUIT")
	p.c.(*net.TCPConn).CloseWrite()
	if s := p.status(); !strings.HasPrefix(s, "+OK 1 ") {
		t.Fatalf("STAT after the half-close: %q", s)
	}
	if s := p.status(); !strings.HasPrefix(s, "+OK") {
		t.Fatalf("RETR after the half-close: %q", s)
	}
	if body := p.multi(); !strings.Contains(string(body), "hello from a parked session") {
		t.Fatalf("RETR after the half-close: %q", body)
	}
	if s := p.status(); !strings.HasPrefix(s, "+OK") {
		t.Fatalf("QUIT after the half-close: %q", s)
	}

	// The whole session sent at once, writing shut down before the login
	// is answered (printf ... | nc -N).
	p = dialPOP(t, popAddr)
	p.send("USER %s\r\nPASS pw\r\nSTAT\r\nQUIT", dovecotUser)
	p.c.(*net.TCPConn).CloseWrite()
	for _, want := range []string{"+OK", "+OK", "+OK 1 ", "+OK"} {
		if s := p.status(); !strings.HasPrefix(s, want) {
			t.Fatalf("a session sent at once: %q, want %s (USER, PASS, STAT, QUIT)", s, want)
		}
	}
}
