package engine

import (
	"context"
	"time"
)

// Drain is a graceful stop (SIGTERM): no new client is served (a client
// that connects now is told the proxy is shutting down), clients that
// have not logged in get a goodbye and are closed, and authenticated
// sessions may finish until ctx ends; then the rest get a goodbye (IMAP's
// `* BYE`) and are closed. It returns once every session has ended; call
// Stop after it.
func (s *Server) Drain(ctx context.Context) {
	s.draining.Store(true)
	s.closeListeners()
	// Clients before login: a goodbye, then closed.
	s.sessMu.Lock()
	var pre []*session
	s.sessions.each(func(sess *session) { pre = append(pre, sess) })
	silent := s.takeSilentLocked(func(*silentClient) bool { return true })
	s.sessMu.Unlock()
	for _, sess := range pre {
		sayByeAndClose(sess.c, sess.l.d.shutdownBye)
	}
	for _, w := range silent {
		sayByeAndClose(w.c, w.l.d.shutdownBye)
	}
	s.relayMu.Lock()
	for c, l := range s.conns {
		if l.tlsCfg == nil { // in TLS, the goodbye would be garbage: just close
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(l.d.shutdownBye)
		}
		c.Close()
	}
	s.relayMu.Unlock()
	// Authenticated sessions: until they end or the time is up.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s.relayMu.Lock()
		n := len(s.relays)
		s.relayMu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
		}
		break
	}
	s.relayMu.Lock()
	for r := range s.relays {
		r.byeAndClose()
	}
	s.relayMu.Unlock()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		s.relayMu.Lock()
		n := len(s.relays)
		s.relayMu.Unlock()
		if n == 0 {
			return
		}
	}
}
