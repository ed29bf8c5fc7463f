//go:build linux

package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/internal/loopback"
	"github.com/emailproxy/emailproxy/engine/internal/readwait"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

// relayGoroutines counts the goroutines copying a relay direction.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("engine.(*relayDir).run"))
}

// parkRig is one relayed IMAP session between app (the client) and srv
// (the upstream server's end of a real TLS connection), run by a server
// with nothing but its relays and its sweep.
type parkRig struct {
	s    *Server
	app  net.Conn
	srv  *tls.Conn
	logs *syncbuf.Buffer
}

func newParkRig(t *testing.T, opts Options) *parkRig {
	t.Helper()
	logs := &syncbuf.Buffer{}
	opts.Logger = zerolog.New(logs)
	opts.defaults()
	s := &Server{opts: opts, log: opts.Logger, relays: map[*relay]struct{}{}}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	w, err := readwait.New()
	if err != nil {
		t.Fatal(err)
	}
	s.waiter = w
	s.wg.Add(1)
	go s.sweepIdleRelays()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Stop(ctx)
	})

	srv, up := loopback.TLSPair(t, upstream.RecordReader)
	proxySide, app := loopback.TCPPair(t)
	res := &loginResult{proto: config.IMAP, up: &upstream.Conn{TLS: up}, reply: []byte("L1 OK logged in\r\n"), user: "u"}
	s.startRelay(proxySide, res, nil, connLog{base: s.log}, time.Now())
	rig := &parkRig{s: s, app: app, srv: srv, logs: logs}
	rig.expect(t, "L1 OK logged in\r\n")
	return rig
}

// expect reads exactly want from the app's side.
func (p *parkRig) expect(t *testing.T, want string) {
	t.Helper()
	p.app.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(p.app, got); err != nil || string(got) != want {
		t.Fatalf("client read %q, %v; want %q", got, err, want)
	}
}

func (p *parkRig) relays() int {
	p.s.relayMu.Lock()
	defer p.s.relayMu.Unlock()
	return len(p.s.relays)
}

// parked waits until both directions have parked.
func (p *parkRig) parked(t *testing.T) {
	t.Helper()
	waitFor(t, "both directions parked", func() bool {
		return int(p.s.parkedDirs.Load()) == 2 && relayGoroutines() == 0
	})
}

// recordBuffer is the capacity of crypto/tls's record buffer on the
// relay's upstream connection.
func (p *parkRig) recordBuffer() int {
	p.s.relayMu.Lock()
	defer p.s.relayMu.Unlock()
	for r := range p.s.relays {
		return reflect.ValueOf(r.up.TLS).Elem().FieldByName("rawInput").FieldByName("buf").Cap()
	}
	return -1
}

// A quiet relay parks both directions (no goroutine left) and each wakes
// for its own side's data, bytes intact, many times over. Parked, it
// holds no TLS record buffer, however much it downloaded before.
func TestQuietRelayParksAndWakes(t *testing.T) {
	p := newParkRig(t, Options{ParkAfter: 20 * time.Millisecond})
	up := make([]byte, 64)
	for cycle := range 20 {
		p.parked(t)
		if n := p.recordBuffer(); n != 0 {
			t.Fatalf("cycle %d: parked with a %d-byte TLS record buffer", cycle, n)
		}
		// The server speaks first (an IMAP IDLE update): only the
		// upstream direction wakes.
		if _, err := p.srv.Write([]byte("* 3 EXISTS\r\n")); err != nil {
			t.Fatal(err)
		}
		p.expect(t, "* 3 EXISTS\r\n")
		p.parked(t)
		// The client asks; the server answers with a download of a size
		// that ends mid-record.
		size := 1 + cycle*37_000
		if _, err := p.app.Write([]byte("A FETCH\r\n")); err != nil {
			t.Fatal(err)
		}
		p.srv.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := p.srv.Read(up); err != nil || string(up[:n]) != "A FETCH\r\n" {
			t.Fatalf("server read %q, %v", up[:n], err)
		}
		body := make([]byte, size)
		rand.Read(body)
		go p.srv.Write(body)
		got := make([]byte, size)
		p.app.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(p.app, got); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("cycle %d: download of %d bytes: %v, equal %v", cycle, size, err, bytes.Equal(got, body))
		}
	}
}

// A client that hangs up while parked ends the relay: the upstream is
// closed, the session is forgotten and logged, nothing stays parked.
func TestParkedRelayEndsWhenClientHangsUp(t *testing.T) {
	p := newParkRig(t, Options{ParkAfter: 20 * time.Millisecond})
	p.parked(t)
	p.app.Close()
	p.srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := p.srv.Read(make([]byte, 16)); err == nil {
		t.Fatal("the upstream was not closed")
	}
	waitFor(t, "the relay ended", func() bool { return p.relays() == 0 && int(p.s.parkedDirs.Load()) == 0 })
	waitFor(t, "closing logged", func() bool { return strings.Contains(p.logs.String(), "connection closed") })
}

// The server hanging up while parked closes the client.
func TestParkedRelayEndsWhenServerHangsUp(t *testing.T) {
	p := newParkRig(t, Options{ParkAfter: 20 * time.Millisecond})
	p.parked(t)
	p.srv.Close()
	p.app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := p.app.Read(make([]byte, 16)); err != io.EOF {
		t.Fatalf("client read %d bytes, %v; want EOF", n, err)
	}
	waitFor(t, "the relay ended", func() bool { return p.relays() == 0 && int(p.s.parkedDirs.Load()) == 0 })
}

// The idle timeout ends a parked session.
func TestParkedRelayIdleTimeout(t *testing.T) {
	p := newParkRig(t, Options{ParkAfter: 20 * time.Millisecond, IMAPIdleTimeout: 300 * time.Millisecond})
	p.app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := p.app.Read(make([]byte, 16)); err != io.EOF {
		t.Fatalf("client read %d bytes, %v; want EOF", n, err)
	}
	waitFor(t, "idle timeout logged", func() bool { return strings.Contains(p.logs.String(), "idle timeout") })
	if int(p.s.parkedDirs.Load()) != 0 {
		t.Fatal("a socket is still watched")
	}
}

// A shutdown tells a parked IMAP client BYE (its client direction wakes
// to be closed after the upstream one has ended), and Stop returns.
func TestParkedRelayShutdown(t *testing.T) {
	p := newParkRig(t, Options{ParkAfter: 20 * time.Millisecond})
	p.parked(t)
	p.s.relayMu.Lock()
	for r := range p.s.relays {
		r.byeAndClose()
	}
	p.s.relayMu.Unlock()
	p.expect(t, "* BYE [UNAVAILABLE] emailproxy is shutting down\r\n")
	p.app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := p.app.Read(make([]byte, 16)); err != io.EOF {
		t.Fatalf("after BYE: %v, want EOF", err)
	}
	waitFor(t, "the relay ended", func() bool { return p.relays() == 0 })
}

// Stop with a parked session returns, and leaves no goroutine (the
// package's TestMain checks for leaks).
func TestStopWithParkedRelay(t *testing.T) {
	p := newParkRig(t, Options{ParkAfter: 20 * time.Millisecond})
	p.parked(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { p.s.Stop(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return with a parked session")
	}
	if relayGoroutines() != 0 {
		t.Fatal("relay goroutines left after Stop")
	}
}

// A relay that is never quiet for ParkAfter does not park.
func TestBusyRelayDoesNotPark(t *testing.T) {
	p := newParkRig(t, Options{ParkAfter: time.Hour})
	time.Sleep(100 * time.Millisecond)
	if n := int(p.s.parkedDirs.Load()); n != 0 {
		t.Fatalf("%d directions parked", n)
	}
	if n := relayGoroutines(); n != 2 {
		t.Fatalf("%d relay goroutines, want 2", n)
	}
}

// Through the whole proxy, with a real IMAP client on each front end: a
// session in IDLE parks, the server's EXISTS (after another client's
// APPEND) reaches it, and a 3 MiB FETCH after a park arrives intact.
func TestIdleIMAPSessionParks(t *testing.T) { eachFrontEnd(t, testIdleIMAPSessionParks) }

func testIdleIMAPSessionParks(t *testing.T, fe string) {
	boxes, big := mailboxWithBig()
	env := startEnv(t, envOptions{mailboxes: boxes, engine: Options{FrontEnd: fe, ParkAfter: 20 * time.Millisecond}})
	c, notified := dialIMAPNotified(t, env.imapAddr)
	if err := c.Login(testAccount, testPassword).Wait(); err != nil {
		t.Fatalf("login: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the IDLE session parked", func() bool { return env.srv.Stats().Parked == 2 && relayGoroutines() == 0 })

	c2 := appendFromSecondClient(t, env.imapAddr, testAccount, testPassword, []byte("Subject: appended\r\n\r\nbody\r\n"), notified, 3)
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both sessions parked", func() bool { return env.srv.Stats().Parked == 4 && relayGoroutines() == 0 })
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, big) {
		t.Fatalf("FETCH body after a park differs: %d bytes, want %d", len(got), len(big))
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	c2.Logout().Wait()
	waitFor(t, "both sessions ended", func() bool { return env.srv.Stats().Relays == 0 && env.srv.Stats().Parked == 0 })
}

// With session reuse, a quiet session parks too; its LOGOUT (or a
// hang-up) while parked still resets the upstream session and keeps it,
// and the next login takes it.
func TestReusedSessionParks(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{IMAPSessionReuse: time.Minute, ParkAfter: 20 * time.Millisecond}})
	parked := func(n int) {
		t.Helper()
		waitFor(t, "the sessions parked", func() bool { return env.srv.Stats().Parked == n && relayGoroutines() == 0 })
	}
	c, ok := imapLogin(t, env.imapAddr, testAccount, "pw")
	if !strings.HasPrefix(ok, "L1 OK") {
		t.Fatal(ok)
	}
	c.send("S1 SELECT INBOX\r\n")
	c.until("S1 OK")
	parked(2)
	c.send("N1 NOOP\r\n")
	c.until("N1 OK")
	parked(2)
	c.send("Q1 LOGOUT\r\n")
	if l := c.until("Q1 "); l[len(l)-1] != "Q1 OK LOGOUT completed" {
		t.Fatalf("logout while parked: %q", l)
	}
	c.expectEOF()
	waitFor(t, "the session to be kept", func() bool { return env.srv.linger.Snapshot().Parked == 1 })

	// The kept session serves the next login; this client hangs up while
	// parked, which keeps the session again.
	c, ok = imapLogin(t, env.imapAddr, testAccount, "pw")
	if !strings.HasPrefix(ok, "L1 OK") || env.up.Logins() != 1 {
		t.Fatalf("reuse: %q, upstream logins %d", ok, env.up.Logins())
	}
	c.send("S1 SELECT INBOX\r\n")
	c.until("S1 OK")
	parked(2)
	c.c.Close()
	waitFor(t, "the session to be kept again", func() bool { return env.srv.linger.Snapshot().Parked == 2 })
	// The kept session's socket is the one the waiter watches now.
	waitFor(t, "no relay parked", func() bool {
		return env.srv.Stats().Parked == 0 && env.srv.Stats().Relays == 0 && env.srv.waiter.Waiting() == 1
	})
	c, ok = imapLogin(t, env.imapAddr, testAccount, "pw")
	if !strings.HasPrefix(ok, "L1 OK") || env.up.Logins() != 1 {
		t.Fatalf("second reuse: %q, upstream logins %d", ok, env.up.Logins())
	}
	c.send("S1 SELECT INBOX\r\n")
	if l := c.until("S1 "); !strings.HasPrefix(l[len(l)-1], "S1 OK") {
		t.Fatalf("select in the twice-kept session: %q", l)
	}
}

// Behind a local TLS listener (the client's side is TLS too, over its own
// socket) and to an upstream reached with STARTTLS, a quiet session parks
// and wakes the same way.
func TestParkingOverTLSListenerAndUpstreamSTARTTLS(t *testing.T) {
	pc := newProxyCert(t)
	servers := tlsServers(pc)
	env := startEnv(t, envOptions{servers: []serverSpec{servers[0], servers[6]}, engine: Options{ParkAfter: 20 * time.Millisecond}})
	for _, name := range []string{"imaps", "imap-up-starttls"} {
		var c *imapclient.Client
		var err error
		if name == "imaps" {
			c, err = imapclient.DialTLS(env.addrs[name], &imapclient.Options{TLSConfig: pc.client()})
		} else {
			c, err = imapclient.DialInsecure(env.addrs[name], nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(testAccount, testPassword).Wait(); err != nil {
			t.Fatalf("%s: login: %v", name, err)
		}
		waitFor(t, name+": the session parked", func() bool { return env.srv.Stats().Parked == 2 && relayGoroutines() == 0 })
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil || sel.NumMessages != 1 {
			t.Fatalf("%s: select after parking: %v %v", name, sel, err)
		}
		waitFor(t, name+": parked again", func() bool { return env.srv.Stats().Parked == 2 && relayGoroutines() == 0 })
		if err := c.Logout().Wait(); err != nil {
			t.Fatalf("%s: logout while parked: %v", name, err)
		}
		c.Close()
		waitFor(t, name+": the session ended", func() bool { return env.srv.Stats().Relays == 0 && env.srv.Stats().Parked == 0 })
	}
}
