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

// A client that sends its login and its commands at once and shuts down
// its writing side before the login is answered (printf ... | nc -N)
// gets every answer on both front ends: gnet ends a connection at its
// EOF, so the session takes the socket and the unread commands before
// that and the login goes on without the loop. A wrong password sent so
// is answered, and the connection ends.
func TestHalfCloseBeforeLoginAnswered(t *testing.T) {
	eachFrontEnd(t, testHalfCloseBeforeLoginAnswered)
}

func testHalfCloseBeforeLoginAnswered(t *testing.T, fe string) {
	boxes, big := mailboxWithBig()
	env := startEnv(t, envOptions{mailboxes: boxes, engine: Options{FrontEnd: fe}})
	defer func() {
		if t.Failed() {
			t.Log(env.logs.String())
		}
	}()
	popLogin(t, env.popAddr, testAccount, "pw").ok("QUIT") // its password is now the account's
	shut := func(c net.Conn) {
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		p := dialPOP(t, env.popAddr)
		p.send("USER %s\r\nPASS pw\r\nSTAT\r\nRETR 2\r\nQUIT", testAccount)
		shut(p.c)
		for _, want := range []string{"+OK", "+OK", "+OK 2 ", "+OK"} {
			if s := p.status(); !strings.HasPrefix(s, want) {
				t.Fatalf("POP3 round %d: %q, want %s (USER, PASS, STAT, RETR)", i, s, want)
			}
		}
		if body := p.multi(); !bytes.Equal(body, big) {
			t.Fatalf("POP3 round %d: RETR body: %d bytes, want %d", i, len(body), len(big))
		}
		if s := p.status(); !strings.HasPrefix(s, "+OK") {
			t.Fatalf("POP3 round %d: QUIT: %q", i, s)
		}
		if _, err := p.br.ReadByte(); err != io.EOF {
			t.Fatalf("POP3 round %d: after QUIT: %v, want EOF", i, err)
		}
	}

	c := dialRaw(t, env.imapAddr)
	c.line() // greeting
	c.send(fmt.Sprintf("L LOGIN %s pw\r\na SELECT INBOX\r\nb FETCH 2 BODY.PEEK[]\r\nc LOGOUT\r\n", testAccount))
	shut(c.c)
	c.until("L OK")
	c.until("a OK")
	if l := c.line(); !strings.HasPrefix(l, "* 2 FETCH") || !strings.HasSuffix(l, fmt.Sprintf("{%d}", len(big))) {
		t.Fatalf("IMAP FETCH: %q", l)
	}
	body := make([]byte, len(big))
	if _, err := io.ReadFull(io.MultiReader(c.r, c.c), body); err != nil || !bytes.Equal(body, big) {
		t.Fatalf("IMAP FETCH body: %v", err)
	}
	c.until("c OK")

	// A wrong password: its answer, then the end (the goroutine front
	// end also answers the commands after it, all refused).
	p := dialPOP(t, env.popAddr)
	p.send("USER %s\r\nPASS wrong\r\nSTAT", testAccount)
	shut(p.c)
	if s := p.status(); !strings.HasPrefix(s, "+OK") {
		t.Fatalf("USER: %q", s)
	}
	if s := p.status(); !strings.HasPrefix(s, "-ERR") {
		t.Fatalf("wrong password: %q", s)
	}
	for {
		l, err := p.br.ReadString('\n')
		if err == io.EOF && l == "" {
			break
		}
		if err != nil || !strings.HasPrefix(l, "-ERR") {
			t.Fatalf("after the refused login: %q %v, want refusals and then EOF", l, err)
		}
	}
	stillServes(t, env)
}

// The same before the client is greeted: until the upstream's greeting is
// learned (here a server slow to answer) the first clients after a start
// wait for theirs. One that sends its whole session at once and shuts
// down writing meanwhile is served on both front ends.
func TestHalfCloseBeforeGreeting(t *testing.T) {
	eachFrontEnd(t, testHalfCloseBeforeGreeting)
}

func testHalfCloseBeforeGreeting(t *testing.T, fe string) {
	env := startEnv(t, envOptions{engine: Options{FrontEnd: fe}, servers: []serverSpec{{name: "slowpop", proto: "POP",
		upstream: func(up *mock.Upstream) string { return slowToConnect(t, up.POPAddr, time.Second) }}}})
	defer func() {
		if t.Failed() {
			t.Log(env.logs.String())
		}
	}()
	c := dialRaw(t, env.addrs["slowpop"])
	c.send(fmt.Sprintf("USER %s\r\nPASS pw\r\nSTAT\r\nQUIT\r\n", testAccount))
	if err := c.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"+OK", "+OK", "+OK", "+OK 1 ", "+OK"} {
		if l := c.line(); !strings.HasPrefix(l, want) {
			t.Fatalf("%q, want %s (greeting, USER, PASS, STAT, QUIT)", l, want)
		}
	}
	if n, err := c.c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after QUIT: %d bytes, %v; want EOF", n, err)
	}
	// One connection, logged as one (on the event loop it changed front
	// ends on the way).
	client := c.c.LocalAddr().String()
	count := func(msg string) int {
		n := 0
		for _, line := range strings.Split(env.logs.String(), "\n") {
			if strings.Contains(line, `"client":"`+client+`"`) && strings.Contains(line, `"message":"`+msg+`"`) {
				n++
			}
		}
		return n
	}
	waitFor(t, "the session's end logged", func() bool { return count("connection closed") > 0 })
	if o, c := count("connection opened"), count("connection closed"); o != 1 || c != 1 {
		t.Fatalf("the connection was logged opened %d times and closed %d times", o, c)
	}
}

// slowToConnect forwards each connection to addr after a delay, as a
// server slow to answer would seem; it stops with the test.
func slowToConnect(t *testing.T, addr string, delay time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acceptEach(t, ln, func(in net.Conn) {
		defer in.Close()
		time.Sleep(delay)
		out, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		defer out.Close()
		go func() { io.Copy(out, in); out.Close() }()
		io.Copy(in, out)
	})
	return ln.Addr().String()
}
