package engine

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
)

// A client that sends its last commands and shuts down its writing side
// (as `printf ... | nc` does) still gets every answer: the proxy passes
// the half-close on upstream and relays until the server closes.
func TestClientHalfCloseGetsEveryAnswer(t *testing.T) {
	eachFrontEnd(t, testClientHalfCloseGetsEveryAnswer)
}

func testClientHalfCloseGetsEveryAnswer(t *testing.T, fe string) {
	boxes, big := mailboxWithBig()
	env := startEnv(t, envOptions{mailboxes: boxes, engine: Options{FrontEnd: fe}})
	for i := range 5 {
		p := popLogin(t, env.popAddr, testAccount, "pw")
		p.send("STAT")
		p.send("RETR 2")
		p.send("QUIT")
		if err := p.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if s := p.status(); !strings.HasPrefix(s, "+OK 2 ") {
			t.Fatalf("round %d: STAT after the half-close: %q", i, s)
		}
		if s := p.status(); !strings.HasPrefix(s, "+OK") {
			t.Fatalf("round %d: RETR after the half-close: %q", i, s)
		}
		defer func() {
			if t.Failed() {
				t.Log(env.logs.String())
			}
		}()
		if body := p.multi(); !bytes.Equal(body, big) {
			t.Fatalf("round %d: RETR body: %d bytes, want %d", i, len(body), len(big))
		}
		if s := p.status(); !strings.HasPrefix(s, "+OK") {
			t.Fatalf("round %d: QUIT after the half-close: %q", i, s)
		}
		if _, err := p.br.ReadByte(); err != io.EOF {
			t.Fatalf("round %d: after QUIT: %v, want EOF", i, err)
		}
	}
}

// With one session per mailbox allowed by both the proxy and the server,
// clients that QUIT and hang up at once, back to back, never find the
// server still counting the last one (it ends its sessions 30 ms after
// their goodbye): the proxy frees the mailbox's slot once the server has
// closed, not when the client has.
func TestSlotFreedWhenServerHasClosed(t *testing.T) {
	env := startEnv(t, envOptions{mailboxCap: 1, quitDelay: 30 * time.Millisecond, engine: Options{MailboxLimit: 1},
		mailboxes: map[string][]mock.Message{testAccount: {{UID: "u1", Body: []byte("Subject: hi\r\n\r\nhello\r\n")}}}})
	for i := range 20 {
		p := dialPOP(t, env.popAddr)
		p.ok("USER %s", testAccount)
		if s := p.cmd("PASS pw"); !strings.HasPrefix(s, "+OK") {
			t.Fatalf("login %d: %q (the server still counted the session before)", i, s)
		}
		p.ok("QUIT")
		p.c.Close()
	}
	if n := env.up.LimitRefusals(); n != 0 {
		t.Fatalf("the server refused %d sessions over its cap", n)
	}
}

// The same for IMAP, with session reuse off and on (the reuse relay
// answers the LOGOUT itself and keeps the session).
func TestIMAPClientHalfCloseGetsEveryAnswer(t *testing.T) {
	for _, reuse := range []time.Duration{0, time.Minute} {
		boxes, big := mailboxWithBig()
		env := startEnv(t, envOptions{mailboxes: boxes, engine: Options{IMAPSessionReuse: reuse}})
		c, ok := imapLogin(t, env.imapAddr, testAccount, "pw")
		if !strings.HasPrefix(ok, "L1 OK") {
			t.Fatal(ok)
		}
		c.send("a SELECT INBOX\r\nb FETCH 2 BODY.PEEK[]\r\nc LOGOUT\r\n")
		if err := c.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.until("a OK")
		if l := c.line(); !strings.HasPrefix(l, "* 2 FETCH") || !strings.HasSuffix(l, fmt.Sprintf("{%d}", len(big))) {
			t.Fatalf("reuse %v: FETCH after the half-close: %q", reuse, l)
		}
		body := make([]byte, len(big))
		if _, err := io.ReadFull(io.MultiReader(c.r, c.c), body); err != nil || !bytes.Equal(body, big) {
			t.Fatalf("reuse %v: FETCH body after the half-close: %v", reuse, err)
		}
		if l := c.until("c "); !strings.HasPrefix(l[len(l)-1], "c OK") {
			t.Fatalf("reuse %v: LOGOUT after the half-close: %q", reuse, l)
		}
		c.expectEOF()
	}
}
