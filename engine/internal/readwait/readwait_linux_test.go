//go:build linux

package readwait

import (
	"net"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/emailproxy/emailproxy/engine/internal/loopback"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns both ends of a TCP connection on 127.0.0.1.
func pair(t *testing.T) (net.Conn, net.Conn) { return loopback.TCPPair(t) }

func raw(t *testing.T, c net.Conn) syscall.RawConn {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func newWaiter(t *testing.T) *Waiter {
	t.Helper()
	w, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

// fired returns a callback and the channel it reports on.
func fired() (func(), chan struct{}) {
	ch := make(chan struct{}, 4)
	return func() { ch <- struct{}{} }, ch
}

func expect(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: callback not called", what)
	}
}

func expectNot(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: callback called", what)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestCalledOnceWhenDataComes(t *testing.T) {
	w := newWaiter(t)
	s, c := pair(t)
	fn, ch := fired()
	if _, err := w.Wait(raw(t, s), fn); err != nil {
		t.Fatal(err)
	}
	expectNot(t, ch, "quiet socket")
	if w.Waiting() != 1 {
		t.Fatalf("waiting %d, want 1", w.Waiting())
	}
	c.Write([]byte("x"))
	expect(t, ch, "data")
	c.Write([]byte("y")) // more data, no new Wait: no second call
	expectNot(t, ch, "second write")
	if w.Waiting() != 0 {
		t.Fatalf("waiting %d after the call, want 0", w.Waiting())
	}

	// The same socket waits again (with data unread: at once).
	if _, err := w.Wait(raw(t, s), fn); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "unread data on a second Wait")
}

func TestCalledWhenPeerHangsUp(t *testing.T) {
	w := newWaiter(t)
	s, c := pair(t)
	fn, ch := fired()
	if _, err := w.Wait(raw(t, s), fn); err != nil {
		t.Fatal(err)
	}
	c.Close()
	expect(t, ch, "hang-up")
}

func TestCancel(t *testing.T) {
	w := newWaiter(t)
	s, c := pair(t)
	fn, ch := fired()
	tk, err := w.Wait(raw(t, s), fn)
	if err != nil {
		t.Fatal(err)
	}
	if !w.Cancel(tk) {
		t.Fatal("Cancel of a pending wait reported false")
	}
	c.Write([]byte("x"))
	expectNot(t, ch, "cancelled wait")
	if w.Cancel(tk) {
		t.Fatal("second Cancel reported true")
	}

	tk, _ = w.Wait(raw(t, s), fn)
	expect(t, ch, "wait after cancel")
	if w.Cancel(tk) {
		t.Fatal("Cancel after the call reported true")
	}
}

// A descriptor number closed and reused by another socket: the old
// wait's ticket does not cancel the new one.
func TestReusedDescriptor(t *testing.T) {
	w := newWaiter(t)
	s1, _ := pair(t)
	old, oldCh := fired()
	tk1, err := w.Wait(raw(t, s1), old)
	if err != nil {
		t.Fatal(err)
	}
	w.Cancel(tk1)
	s1.Close()
	s2, c2 := pair(t)
	fn, ch := fired()
	tk2, err := w.Wait(raw(t, s2), fn)
	if err != nil {
		t.Fatal(err)
	}
	if tk1.fd == tk2.fd && w.Cancel(tk1) {
		t.Fatal("an old ticket cancelled a new wait on the same descriptor number")
	}
	c2.Write([]byte("x"))
	expect(t, ch, "new socket")
	expectNot(t, oldCh, "old socket's callback")
}

func TestClosed(t *testing.T) {
	w := newWaiter(t)
	s, _ := pair(t)
	s.Close()
	if _, err := w.Wait(raw(t, s), func() {}); err == nil {
		t.Fatal("Wait on a closed socket succeeded")
	}
	s2, _ := pair(t)
	w.Close()
	if _, err := w.Wait(raw(t, s2), func() {}); err != ErrClosed {
		t.Fatalf("Wait after Close: %v, want ErrClosed", err)
	}
	w.Close() // twice is fine
}

// Many sockets, one goroutine: each callback once, for its own socket.
func TestManySockets(t *testing.T) {
	w := newWaiter(t)
	const n = 300
	chans := make([]chan struct{}, n)
	peers := make([]net.Conn, n)
	for i := range n {
		s, c := pair(t)
		fn, ch := fired()
		chans[i], peers[i] = ch, c
		if _, err := w.Wait(raw(t, s), fn); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i += 2 {
		peers[i].Write([]byte("x"))
	}
	for i := 0; i < n; i += 2 {
		expect(t, chans[i], "written socket")
	}
	if got := w.Waiting(); got != n/2 {
		t.Fatalf("waiting %d, want %d", got, n/2)
	}
	for i := 1; i < n; i += 2 {
		select {
		case <-chans[i]:
			t.Fatalf("socket %d called without data", i)
		default:
		}
	}
}
