package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/config"
)

// imapServer is a TLS IMAP greeter on 127.0.0.1 whose key exchange groups
// can be changed between connections; it records the first group each
// client offers (its preference, and the one key share Go sends).
type imapServer struct {
	mu      sync.Mutex
	groups  []tls.CurveID
	offered []tls.CurveID
	chosen  []tls.CurveID
}

func (s *imapServer) start(t *testing.T, ca *mock.CA) string {
	leaf, err := ca.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{leaf}, GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.offered = append(s.offered, h.SupportedCurves[0])
		return &tls.Config{Certificates: []tls.Certificate{leaf}, CurvePreferences: s.groups}, nil
	}}
	return serveTLS(t, cfg, func(tc *tls.Conn) {
		if tc.Handshake() != nil {
			return
		}
		s.mu.Lock()
		s.chosen = append(s.chosen, tc.ConnectionState().CurveID)
		s.mu.Unlock()
		tc.Write([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n"))
		tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		tc.Read(make([]byte, 1))
	})
}

// serveTLS accepts TLS connections with cfg on 127.0.0.1 until the test
// ends, each handled (then closed) on its own goroutine, and returns the
// address.
func serveTLS(t *testing.T, cfg *tls.Config, handle func(*tls.Conn)) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c.(*tls.Conn))
			}()
		}
	}()
	return ln.Addr().String()
}

// The dialler stops offering the post-quantum hybrids to a server that
// chose a classical key exchange (no ML-KEM key generation per handshake
// then), still connects when that server changes its classical group,
// offers the hybrids again after an hour, and keeps offering them to a
// server that picks one.
func TestDialerLearnsTheServersKeyExchange(t *testing.T) {
	ca, err := mock.NewCA("dial test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv := &imapServer{groups: []tls.CurveID{tls.X25519}}
	addr := srv.start(t, ca)
	_, port, _ := net.SplitHostPort(addr)
	cs := &config.Server{Protocol: config.IMAP, ServerAddress: "localhost", ServerPort: atoi(t, port)}
	d := NewDialer(cs, ca.Pool, 5*time.Second)
	dial := func(groups ...tls.CurveID) {
		t.Helper()
		srv.mu.Lock()
		srv.groups = groups
		srv.mu.Unlock()
		u, err := d.Dial(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		u.Close()
	}
	dial(tls.X25519) // offered the hybrid, chose X25519
	dial(tls.X25519)
	dial(tls.CurveP256) // the server changed: a HelloRetryRequest, then P-256
	dial()              // the server now prefers the hybrid, but is not offered it within the hour
	d.learnedAt.Store(time.Now().Add(-2 * relearnAfter).UnixNano())
	dial() // an hour later: offered again, and chosen
	dial()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	// (The retried ClientHello of the third dial is not seen: the server
	// asks GetConfigForClient once per connection.)
	want := []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.X25519, tls.X25519, tls.X25519MLKEM768, tls.X25519MLKEM768}
	wantChosen := []tls.CurveID{tls.X25519, tls.X25519, tls.CurveP256, tls.X25519, tls.X25519MLKEM768, tls.X25519MLKEM768}
	if fmt.Sprint(srv.offered) != fmt.Sprint(want) || fmt.Sprint(srv.chosen) != fmt.Sprint(wantChosen) {
		t.Fatalf("first group offered %v, want %v; chosen %v, want %v", srv.offered, want, srv.chosen, wantChosen)
	}
}

// testCA makes a throwaway CA and a server certificate it issued for
// localhost and 127.0.0.1.
func testCA(t *testing.T) (*mock.CA, tls.Certificate) {
	t.Helper()
	ca, err := mock.NewCA("upstream test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	return ca, leaf
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// After a dial by name, the address it reached is dialled directly (no
// lookup) for a while; one that stops answering is dropped and the name
// used again, within the same dial.
func TestDialerReusesTheAddressItReached(t *testing.T) {
	ca, err := mock.NewCA("dial test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv := &imapServer{groups: []tls.CurveID{tls.X25519}}
	_, port, _ := net.SplitHostPort(srv.start(t, ca))
	d := NewDialer(&config.Server{Protocol: config.IMAP, ServerAddress: "localhost", ServerPort: atoi(t, port)}, ca.Pool, 5*time.Second)
	u, err := d.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
	last := d.lastAddr.Load()
	if last == nil || !strings.HasSuffix(last.addr, ":"+port) || strings.HasPrefix(last.addr, "localhost") {
		t.Fatalf("address remembered: %+v", last)
	}
	u, err = d.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
	if d.lastAddr.Load() != last {
		t.Fatal("the second dial looked the name up again")
	}
	// A remembered address that refuses: the dial falls back to the name.
	dead := freeLocalAddr(t)
	d.lastAddr.Store(&reached{addr: dead, at: time.Now()})
	u, err = d.Dial(context.Background())
	if err != nil {
		t.Fatalf("fallback to the name: %v", err)
	}
	u.Close()
	if now := d.lastAddr.Load(); now == nil || now.addr == dead || !strings.HasSuffix(now.addr, ":"+port) {
		t.Fatalf("after the fallback: %+v", now)
	}
}

func freeLocalAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
