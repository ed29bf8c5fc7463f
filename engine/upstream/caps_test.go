package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/imap"
)

// A server's capabilities are asked for once and taken for its next
// connections (POP3 CAPA) until capsFor has passed; each connection still
// has them. An IMAP greeting that carries them needs no asking at all.
func TestCapabilitiesAskedOnce(t *testing.T) {
	up, err := mock.Start(mock.Options{ClientID: "c", ClientSecret: "s", Scope: "x",
		Mailboxes: map[string][]mock.Message{"a@x": {{UID: "1", Body: []byte("Subject: a\r\n\r\na\r\n")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	for _, tc := range []struct {
		proto config.Protocol
		addr  string
		ask   string
		asks  int // in the first four connections
	}{{config.POP, up.POPAddr, "CAPA", 1}, {config.IMAP, up.IMAPAddr, "C0 CAPABILITY", 0}} {
		_, port, _ := net.SplitHostPort(tc.addr)
		d := NewDialer(&config.Server{Protocol: tc.proto, ServerAddress: "localhost", ServerPort: atoi(t, port)}, up.CA.Pool, 5*time.Second)
		var mu sync.Mutex
		asked := 0
		d.Trace = func(dir, line string) {
			if dir == "proxy->server" && strings.HasPrefix(line, tc.ask) {
				mu.Lock()
				asked++
				mu.Unlock()
			}
		}
		askedNow := func() int { mu.Lock(); defer mu.Unlock(); return asked }
		dial := func() []string {
			u, err := d.Dial(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if len(u.Caps) == 0 {
				t.Fatalf("%s: a connection without capabilities", tc.proto)
			}
			return u.Caps
		}
		first := dial()
		for range 3 {
			if got := dial(); !slices.Equal(got, first) {
				t.Fatalf("%s: capabilities %q, then %q", tc.proto, first, got)
			}
		}
		if n := askedNow(); n != tc.asks {
			t.Fatalf("%s: asked %d times in 4 connections, want %d", tc.proto, n, tc.asks)
		}
		if tc.asks == 0 {
			continue
		}
		k := d.caps.Load()
		d.caps.Store(&listed{caps: k.caps, at: k.at.Add(-capsFor)})
		dial()
		if n := askedNow(); n != 2 {
			t.Fatalf("%s: after %v, asked %d times, want 2", tc.proto, capsFor, n)
		}
	}
}

// The same for IMAP against a server whose greeting lists no
// capabilities (Exchange Online's does not): CAPABILITY once, SASL-IR
// known on every connection.
func TestIMAPCapabilitiesAskedOnce(t *testing.T) {
	ca, leaf := testCA(t)
	var asked atomic.Int32
	addr := serveTLS(t, &tls.Config{Certificates: []tls.Certificate{leaf}}, func(c *tls.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("* OK The IMAP4 service is ready.\r\n"))
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(l, "C0 CAPABILITY") {
				asked.Add(1)
				c.Write([]byte("* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR UNSELECT\r\nC0 OK CAPABILITY completed.\r\n"))
			}
		}
	})
	_, port, _ := net.SplitHostPort(addr)
	d := NewDialer(&config.Server{Protocol: config.IMAP, ServerAddress: "localhost", ServerPort: atoi(t, port)}, ca.Pool, 5*time.Second)
	for i := range 4 {
		u, err := d.Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !imap.HasCapability(u.Caps, "SASL-IR") || !imap.HasCapability(u.Caps, "UNSELECT") {
			t.Fatalf("connection %d: capabilities %q", i, u.Caps)
		}
		u.Close()
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("CAPABILITY asked %d times in 4 connections, want 1", n)
	}
}

// A server whose capability list never ends fails the connection after
// maxCapLines lines instead of growing the proxy for as long as the dial
// timeout lets it talk.
func TestEndlessCapabilityListIsRefused(t *testing.T) {
	ca, leaf := testCA(t)
	stop := make(chan struct{})
	var handlers sync.WaitGroup
	t.Cleanup(func() { close(stop); handlers.Wait() })
	endless := func(greeting, answer, line string) func(*tls.Conn) {
		return func(tc *tls.Conn) {
			handlers.Add(1)
			defer handlers.Done()
			tc.Write([]byte(greeting))
			br := bufio.NewReader(tc)
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			tc.Write([]byte(answer))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := tc.Write([]byte(line)); err != nil {
					return
				}
			}
		}
	}
	for _, tc := range []struct {
		proto config.Protocol
		serve func(*tls.Conn)
	}{
		{config.POP, endless("+OK ready\r\n", "+OK Capability list follows\r\n", "X-CAPABILITY-NUMBER-SOMETHING\r\n")},
		{config.IMAP, endless("* OK ready\r\n", "", "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\n")},
	} {
		addr := serveTLS(t, &tls.Config{Certificates: []tls.Certificate{leaf}}, tc.serve)
		_, port, _ := net.SplitHostPort(addr)
		d := NewDialer(&config.Server{Protocol: tc.proto, ServerAddress: "localhost", ServerPort: atoi(t, port)}, ca.Pool, 30*time.Second)
		u, err := d.Dial(context.Background())
		if err == nil {
			u.Close()
			t.Fatalf("%s: an endless capability list was taken", tc.proto)
		}
		if !strings.Contains(err.Error(), "did not greet as a") || !strings.Contains(err.Error(), "capability list does not end") {
			t.Fatalf("%s: %v", tc.proto, err)
		}
	}
}
