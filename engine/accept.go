package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/upstream"
)

// Every listener is a net.Listener with an accept loop of its own, on
// both front ends: a plaintext client accepted there is handed to the gnet
// event loops (gnet.Client.Enroll), any other goes to a goroutine
// (serveConn). gnet accepts nothing itself: its accept treats running out
// of descriptors (EMFILE) as fatal and shuts every loop down, so a burst
// of clients at the open-file limit would end the proxy. Here accept
// fails, the loop waits and tries again (the client waits in the kernel's
// queue), and sessions already open go on. It also lets a reload add or
// remove a plaintext port, and a drain close every port. Enroll returns
// once the client is on a loop (OnOpen has greeted it), so Stop, which
// waits for the accept loops before it stops the event loops, leaves no
// client behind.

// listen binds srv's local address, with the keepalive period the
// accepted clients get.
func (s *Server) listen(srv *config.Server) (net.Listener, error) {
	lc := listenConfig(s.opts.TCPKeepAlive)
	ln, err := lc.Listen(context.Background(), "tcp", srv.ListenAddr())
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s for [%s] (is the proxy already running?): %s", srv.ListenAddr(), srv.Section, upstream.ShortNetErr(err))
	}
	return ln, nil
}

// startLoops starts the gnet event loops, with no listener of their own.
func (s *Server) startLoops() error {
	loops, err := gnet.NewClient(s,
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(s.opts.EventLoops),
		// Set on the accepted socket already (listen, and Go's own
		// TCP_NODELAY): gnet setting them again would cost system calls.
		gnet.WithTCPNoDelay(gnet.TCPDelay),
		gnet.WithLogger(gnetLogger{s.log}),
		gnet.WithTicker(true),
	)
	if err == nil {
		err = loops.Start()
	}
	if err != nil {
		return fmt.Errorf("cannot start the event loops: %w", err)
	}
	s.loops = loops
	return nil
}

// serve runs l's accept loop.
func (s *Server) serve(l *listener) {
	s.lnMu.Lock()
	s.lns = append(s.lns, l.ln)
	s.lnMu.Unlock()
	s.accepts.Add(1)
	go s.accept(l.srv.LocalPort, l.ln)
}

// stopListening closes ln (a section a reload removed) and forgets it.
func (s *Server) stopListening(ln net.Listener) {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	s.lns = slices.DeleteFunc(s.lns, func(l net.Listener) bool { return l == ln })
	ln.Close()
}

// closeAll closes the listeners of ls, bound but not served.
func (s *Server) closeAll(ls []*listener) {
	for _, l := range ls {
		l.ln.Close()
	}
}

// closeListeners stops every accept loop: no new client is taken.
func (s *Server) closeListeners() {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	for _, ln := range s.lns {
		ln.Close()
	}
}

// accept serves ln's connections until the server stops (or a reload
// removes its section); each goes to the section on port now.
func (s *Server) accept(port int, ln net.Listener) {
	defer s.accepts.Done()
	var failing acceptFailures
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return // stopping, draining, or the section was removed
			}
			failing.wait(s, port, err)
			continue
		}
		l := s.listener(port)
		switch {
		case l == nil || l.removed.Load():
			c.Close()
		case !l.admitsPeer(c.RemoteAddr()):
			c.Close()
		case l.tlsCfg == nil && s.loops != nil && !failing.loopsFull():
			// The loops take a duplicate of c's descriptor: at the limit,
			// that fails like accept, and gnet closes c without a word.
			// For a while after, plaintext clients are served on
			// goroutines, which need no second descriptor, so no other
			// client is lost that way.
			if err := s.enroll(c); err != nil && s.ctx.Err() == nil {
				failing.enrollFailed(s, port, err)
				failing.wait(s, port, err)
				continue
			}
		case !s.track(c, l):
			c.Close()
		default:
			s.wg.Add(1)
			go s.serveConn(l, c, time.Time{})
		}
		failing.over(s, port)
	}
}

// enroll hands a plaintext client to the event loops.
func (s *Server) enroll(c net.Conn) error {
	if h := testHookEnroll; h != nil {
		if err := h(c); err != nil {
			return err
		}
	}
	_, err := s.loops.Enroll(c)
	return err
}

// testHookEnroll, when set by a test, runs before each hand-over to the
// event loops; an error it returns fails the hand-over (it must close c,
// as gnet does).
var testHookEnroll func(c net.Conn) error

// loopsFullFor is how long plaintext clients go to goroutines after the
// event loops could not take one.
const loopsFullFor = 30 * time.Second

// acceptFailures paces an accept loop while accept fails: out of file
// descriptors (EMFILE, ENFILE) or of memory. It waits 5 ms after the
// first failure, doubling up to a second, as net/http does, and logs the
// start and the end of each episode rather than every failure. It also
// remembers when the event loops last failed to take a client.
type acceptFailures struct {
	n         int
	delay     time.Duration
	since     time.Time
	loopsFail time.Time // zero: never
}

// loopsFull reports whether the event loops failed to take a client
// within loopsFullFor.
func (f *acceptFailures) loopsFull() bool {
	if f.loopsFail.IsZero() {
		return false
	}
	if time.Since(f.loopsFail) < loopsFullFor {
		return true
	}
	f.loopsFail = time.Time{}
	return false
}

func (f *acceptFailures) enrollFailed(s *Server, port int, err error) {
	if f.loopsFail.IsZero() {
		s.log.Warn().Err(err).Int("port", port).Dur("for", loopsFullFor).Msg("the event loops cannot take clients (out of file descriptors?); new plaintext clients are served on goroutines for a while")
	}
	f.loopsFail = time.Now()
}

func (f *acceptFailures) wait(s *Server, port int, err error) {
	if f.n == 0 {
		f.delay, f.since = 5*time.Millisecond, time.Now()
		s.log.Error().Err(err).Int("port", port).Msg("cannot accept clients (out of file descriptors?); retrying, sessions already open go on")
	} else {
		f.delay = min(2*f.delay, time.Second)
	}
	f.n++
	select {
	case <-time.After(f.delay):
	case <-s.ctx.Done():
	}
}

func (f *acceptFailures) over(s *Server, port int) {
	if f.n > 0 {
		s.log.Warn().Int("port", port).Int("failures", f.n).Dur("took_ms", time.Since(f.since)).Msg("accepting clients again")
		f.n = 0
	}
}
