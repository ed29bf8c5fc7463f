//go:build linux

package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/engine/internal/loopback"
	"github.com/emailproxy/emailproxy/engine/internal/readwait"
)

// keptRig is a Linger, with or without a Waiter, and a way to give it
// sessions: the proxy's end of a real TLS connection whose server end
// the test holds.
type keptRig struct {
	ls  *Linger
	w   *readwait.Waiter
	ttl time.Duration
}

func newKeptRig(t *testing.T, withWaiter bool, ttl time.Duration) *keptRig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	wg := &sync.WaitGroup{}
	rig := &keptRig{ls: NewLinger(Life{Ctx: ctx, WG: wg}), ttl: ttl}
	if withWaiter {
		w, err := readwait.New()
		if err != nil {
			t.Fatal(err)
		}
		rig.w, rig.ls.Waiter = w, w
	}
	t.Cleanup(func() {
		rig.ls.CloseAll()
		cancel()
		wg.Wait()
		rig.w.Close()
	})
	return rig
}

// keep parks a fresh session under key and returns the server's end.
func (k *keptRig) keep(t *testing.T, key string) *tls.Conn {
	t.Helper()
	srv, cl := loopback.TLSPair(t, RecordReader)
	k.ls.Park(&Conn{TLS: cl}, key, "box", []byte("L OK done\r\n"), k.ttl, time.Time{})
	return srv
}

// watchers counts goroutines reading kept sessions.
func watchers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "upstream.(*Linger).Park.func")
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// With a Waiter, a kept session holds no goroutine; a record that
// carries nothing (the TLS session tickets a Go server sends after the
// handshake, unread when the session is kept) does not drop it, and the
// session taken still works both ways.
func TestKeptSessionWatchedWithoutGoroutine(t *testing.T) {
	k := newKeptRig(t, true, time.Minute)
	srv := k.keep(t, "key")
	waitUntil(t, "the socket watched", func() bool { return k.w.Waiting() == 1 })
	if n := watchers(); n != 0 {
		t.Fatalf("%d goroutines read kept sessions", n)
	}
	time.Sleep(50 * time.Millisecond) // the tickets arrive and are read
	lg := k.ls.Take("key")
	if lg == nil {
		t.Fatalf("the kept session was dropped: %+v", k.ls.Snapshot())
	}
	if k.w.Waiting() != 0 {
		t.Fatal("a taken session is still watched")
	}
	go srv.Write([]byte("* OK still here\r\n"))
	buf := make([]byte, 64)
	lg.u.TLS.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := lg.u.TLS.Read(buf)
	if err != nil || string(buf[:n]) != "* OK still here\r\n" {
		t.Fatalf("taken session read %q, %v", buf[:n], err)
	}
	lg.u.Close()
}

// A server that speaks (BYE) or hangs up while its session is kept has
// it dropped and closed, with the Waiter and with a goroutine per
// session alike.
func TestKeptSessionDroppedWhenServerSpeaksOrHangsUp(t *testing.T) {
	for _, withWaiter := range []bool{true, false} {
		k := newKeptRig(t, withWaiter, time.Minute)
		bye := k.keep(t, "bye")
		gone := k.keep(t, "gone")
		time.Sleep(50 * time.Millisecond)
		bye.Write([]byte("* BYE autologout\r\n"))
		gone.Close()
		waitUntil(t, fmt.Sprintf("waiter %v: both dropped", withWaiter), func() bool { return k.ls.Snapshot().Dropped == 2 })
		if k.ls.Take("bye") != nil || k.ls.Take("gone") != nil {
			t.Fatal("a dropped session was handed out")
		}
		bye.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(bye); err != nil {
			t.Fatalf("waiter %v: the dropped session was not closed: %v", withWaiter, err)
		}
		if withWaiter && k.w.Waiting() != 0 {
			t.Fatal("a dropped session is still watched")
		}
	}
}

// An expired kept session is closed and no longer watched.
func TestKeptSessionExpires(t *testing.T) {
	k := newKeptRig(t, true, 50*time.Millisecond)
	srv := k.keep(t, "key")
	waitUntil(t, "expired", func() bool { return k.ls.Snapshot().Expired == 1 })
	if k.w.Waiting() != 0 {
		t.Fatal("an expired session is still watched")
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(srv); err != nil {
		t.Fatalf("the expired session was not closed: %v", err)
	}
}

// A kept session is dropped when the token it logged in with expires,
// even if its time to be kept runs longer; and Take hands the expiry on.
func TestKeptSessionEndsWithItsToken(t *testing.T) {
	k := newKeptRig(t, true, time.Hour)
	srv, cl := loopback.TLSPair(t, RecordReader)
	expiry := time.Now().Add(300 * time.Millisecond)
	k.ls.Park(&Conn{TLS: cl}, "key", "box", []byte("L OK done\r\n"), k.ttl, expiry)
	if lg := k.ls.Take("key"); lg == nil || !lg.expiry.Equal(expiry) {
		t.Fatalf("taken: %+v", lg)
	} else {
		k.ls.Park(lg.u, "key", "box", lg.reply, k.ttl, lg.expiry)
	}
	waitUntil(t, "expired", func() bool { return k.ls.Snapshot().Expired == 1 })
	if time.Now().Before(expiry) {
		t.Fatal("dropped before its token expired")
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(srv); err != nil {
		t.Fatalf("the session was not closed: %v", err)
	}
}
