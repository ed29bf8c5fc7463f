//go:build linux

package readwait

import (
	"encoding/binary"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Waiter watches sockets for readability, each once per Wait.
type Waiter struct {
	epfd int
	// stop is an eventfd in the epoll set: writing it ends the loop.
	stop int
	done chan struct{}

	mu     sync.Mutex
	closed bool
	gen    uint32
	// waits by descriptor; gen tells a registration from an earlier one
	// of a descriptor number since closed and reused.
	waits map[int32]wait
}

type wait struct {
	gen uint32
	fn  func()
}

// New starts a Waiter's goroutine.
func New() (*Waiter, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(stop)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stop, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(stop)
		return nil, err
	}
	w := &Waiter{epfd: epfd, stop: stop, done: make(chan struct{}), waits: make(map[int32]wait)}
	go w.loop()
	return w, nil
}

// Wait calls fn, once, from the Waiter's goroutine when the socket has
// data to read, has been hung up on, or has failed. fn must not block.
// The socket must stay open until fn has been called or Cancel has
// returned.
func (w *Waiter) Wait(rc syscall.RawConn, fn func()) (Ticket, error) {
	var t Ticket
	var werr error
	err := rc.Control(func(fd uintptr) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.closed {
			werr = ErrClosed
			return
		}
		w.gen++
		if w.gen == 0 { // 0 is the stop descriptor's
			w.gen = 1
		}
		t = Ticket{fd: int32(fd), gen: w.gen}
		// One-shot: the kernel reports the socket once and then ignores
		// it until the next Wait re-arms it (or Cancel removes it).
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: t.fd, Pad: int32(t.gen)}
		werr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		if werr == unix.EEXIST {
			werr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		}
		if werr == nil {
			w.waits[t.fd] = wait{gen: t.gen, fn: fn}
		}
	})
	if err != nil {
		return Ticket{}, err // closed
	}
	return t, werr
}

// Cancel forgets t's Wait if its callback has not been called; it
// reports whether it had not. Call it before closing the socket.
func (w *Waiter) Cancel(t Ticket) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.forget(t)
}

// forget removes t's registration; w.mu is held.
func (w *Waiter) forget(t Ticket) bool {
	wt, ok := w.waits[t.fd]
	if !ok || wt.gen != t.gen {
		return false
	}
	delete(w.waits, t.fd)
	unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(t.fd), nil)
	return true
}

// Waiting is the number of sockets waited on.
func (w *Waiter) Waiting() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waits)
}

// Close ends the Waiter's goroutine (nil: nothing to end). Callbacks not yet called never are:
// whoever waits must have taken its sockets back (Cancel) first.
func (w *Waiter) Close() {
	if w == nil {
		return
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	w.mu.Unlock()
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(w.stop, one[:])
	<-w.done
	unix.Close(w.epfd)
	unix.Close(w.stop)
}

func (w *Waiter) loop() {
	defer close(w.done)
	events := make([]unix.EpollEvent, 128)
	var ready []func()
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return // the descriptor is gone: nothing more can be watched
		}
		ready = ready[:0]
		w.mu.Lock()
		for _, ev := range events[:n] {
			if ev.Fd == int32(w.stop) && ev.Pad == 0 {
				w.mu.Unlock()
				return
			}
			t := Ticket{fd: ev.Fd, gen: uint32(ev.Pad)}
			if wt := w.waits[t.fd]; w.forget(t) {
				ready = append(ready, wt.fn)
			}
		}
		w.mu.Unlock()
		for _, fn := range ready {
			fn()
		}
		clear(ready)
	}
}
