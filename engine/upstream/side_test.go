package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
)

// A warm connection whose server has dropped it is replaced by a fresh
// dial within the login; one whose server is there but does not answer
// the login is not: the login's time is up then, and what the client is
// told is that the server did not answer, not that it could not be
// reached.
func TestOpenRedialsOnlyForADroppedWarmConnection(t *testing.T) {
	ca, leaf := testCA(t)
	// behaviour: what the server does with the next connection's login.
	var behaviour atomic.Value
	var conns atomic.Int32
	stop := make(chan struct{})
	var handlers sync.WaitGroup
	t.Cleanup(func() { close(stop); handlers.Wait() })
	addr := serveTLS(t, &tls.Config{Certificates: []tls.Certificate{leaf}}, func(tc *tls.Conn) {
		handlers.Add(1)
		defer handlers.Done()
		conns.Add(1)
		what := behaviour.Load().(string)
		tc.Write([]byte("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n"))
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			return
		}
		switch what {
		case "drop": // as a server that timed the connection out
			return
		case "silent":
			<-stop
		default:
			tag, _, _ := strings.Cut(line, " ")
			tc.Write([]byte(tag + " OK logged in\r\n"))
			tc.SetReadDeadline(time.Now().Add(5 * time.Second))
			tc.Read(make([]byte, 1))
		}
	})
	_, port, _ := net.SplitHostPort(addr)
	cs := &config.Server{Protocol: config.IMAP, ServerAddress: "localhost", ServerPort: atoi(t, port)}
	d := NewDialer(cs, ca.Pool, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	// The pool holds what the test offers it; its own refills fail, so
	// every connection the server sees is the test's or the login's.
	noRefill := func(context.Context) (*Conn, error) { return nil, errors.New("no refills in this test") }
	side := &Side{Srv: cs, Dialer: d, Gates: NewGates(0), Learn: func(*Conn) {},
		Pool: NewPool(Life{Ctx: ctx, WG: &wg}, noRefill, func(*Conn) {}, zerolog.Nop(), 1, time.Minute)}
	warm := func(what string) {
		t.Helper()
		behaviour.Store(what)
		u, err := d.Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		side.Pool.Offer(u)
	}
	login := func() (*Session, error) {
		// The bound a login has (--login-timeout), short here.
		lctx, lcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer lcancel()
		return side.Open(lctx, Request{Tag: "L1", User: "u@example.test", Token: "t"})
	}

	warm("drop")
	behaviour.Store("answer")
	sess, err := login()
	if err != nil {
		t.Fatalf("a dropped warm connection: %v", err)
	}
	sess.Conn.Close()
	if n := conns.Load(); n != 2 {
		t.Fatalf("connections after a dropped warm one: %d, want 2 (the warm one, then a fresh dial)", n)
	}

	warm("silent")
	behaviour.Store("answer")
	_, err = login()
	var f *Failure
	if !errors.As(err, &f) || !strings.Contains(f.Text, "failed during authentication") || !strings.Contains(f.Text, "timeout") {
		t.Fatalf("a silent warm connection: %v", err)
	}
	if n := conns.Load(); n != 3 {
		t.Fatalf("connections after a silent warm one: %d, want 3 (no dial once the login's time was up)", n)
	}

	// A login stopped from outside (its client gone) says why, at every
	// step, and blames neither the server whose answer it stopped waiting
	// for nor the mailbox's limit.
	gone := errors.New("the client went")
	stopped := func(what string) {
		t.Helper()
		sctx, stop := context.WithCancelCause(context.Background())
		time.AfterFunc(50*time.Millisecond, func() { stop(gone) })
		_, err := side.Open(sctx, Request{Tag: "L2", User: "u@example.test", Token: "t"})
		if !errors.As(err, &f) || f.Text != "login stopped: the client went" {
			t.Fatalf("a login stopped %s: %v", what, err)
		}
	}
	warm("silent")
	stopped("while the server was silent")
	side.Gates = NewGates(1)
	release, err := side.Gates.Acquire(context.Background(), MailboxKey(cs, "u@example.test"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	stopped("while waiting for the mailbox's slot")
}
