package engine

// The event-loop front end: gnet's callbacks for the plaintext
// listeners. A connection greeted at once is a silent client (silent.go)
// until its first bytes, then a session (session.go) driven on its loop;
// the idle sweep runs off the loops and uses only gnet's goroutine-safe
// calls.

import (
	"net"
	"time"

	"github.com/emailproxy/emailproxy/internal/contain"
	"github.com/emailproxy/emailproxy/telemetry"
	"github.com/panjf2000/gnet/v2"
	"github.com/rs/zerolog"
)

// OnOpen implements gnet.EventHandler: greet at once if the upstream's
// greeting is known, else fetch it off the loop.
func (s *Server) OnOpen(c gnet.Conn) (out []byte, action gnet.Action) {
	defer func() {
		if v := recover(); v != nil {
			contain.Recovered(s.log, "front_end", v)
			out, action = nil, gnet.Close
		}
	}()
	port := 0
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		port = a.Port
	}
	l := s.listener(port)
	if l == nil {
		return nil, gnet.Close
	}
	if s.draining.Load() || l.removed.Load() {
		return l.d.shutdownBye, gnet.Close
	}
	if !l.srv.ProxyProtocol {
		if prof := l.knownProfile(); prof != nil {
			return s.greetSilent(l, c, prof), gnet.None // a session once it speaks
		}
	}
	sess := newSession(l, c, time.Now().UnixNano())
	l.preLogin.Add(1)
	c.SetContext(sess)
	s.addSession(sess)
	if l.srv.ProxyProtocol {
		sess.phase = phProxy // greeted once the header has told the client's address
		return nil, gnet.None
	}
	sess.logOpen()
	return sess.startGreeting(), gnet.None
}

// startGreeting returns the greeting if the upstream's profile is known;
// else it asks for the profile and the session is greeted from OnTraffic.
func (sess *session) startGreeting() []byte {
	sess.phase = phGreeting
	prof := sess.l.profileOr(sess.l.eng, func(p *profile) {
		sess.post(func(ps *pending) {
			if p != nil {
				ps.profile = p
			} else {
				ps.unavailable = true
			}
		})
	})
	if prof == nil {
		return nil
	}
	return sess.greet(prof)
}

// OnTraffic implements gnet.EventHandler. A panic in one session's code
// closes that session, not the loop and every session on it.
func (s *Server) OnTraffic(c gnet.Conn) (action gnet.Action) {
	defer func() {
		if v := recover(); v != nil {
			contain.Recovered(s.log, "front_end", v)
			action = gnet.Close
		}
	}()
	switch x := c.Context().(type) {
	case *session:
		return x.onTraffic()
	case *silentClient:
		return s.wakeSilent(x)
	}
	return gnet.Close
}

// OnClose implements gnet.EventHandler.
func (s *Server) OnClose(c gnet.Conn, err error) gnet.Action {
	defer func() {
		if v := recover(); v != nil {
			contain.Recovered(s.log, "front_end", v)
		}
	}()
	switch x := c.Context().(type) {
	case *session:
		x.l.preLogin.Add(-1)
		s.removeSession(x)
		x.onClose(err)
	case *silentClient:
		s.closeSilent(x, err)
	}
	return gnet.None
}

// OnTick implements gnet.EventHandler: it disconnects clients that stayed
// silent before login for longer than IdleTimeout (a login in progress has
// its own timeout). It runs off the event loops, so it only reads atomics
// and uses gnet's thread-safe calls.
func (s *Server) OnTick() (time.Duration, gnet.Action) {
	now := time.Now().UnixNano()
	limit := s.opts.IdleTimeout.Nanoseconds()
	var idle []*session
	s.sessMu.Lock()
	s.sessions.each(func(sess *session) {
		if sess.idleCheck.Load() && now-sess.lastSeen.Load() > limit {
			sess.idleCheck.Store(false)
			idle = append(idle, sess)
		}
	})
	silent := s.takeSilentLocked(func(w *silentClient) bool { return now-w.opened > limit })
	s.sessMu.Unlock()
	for _, sess := range idle {
		telemetry.Ended("idle_before_login")
		sayByeAndClose(sess.c, sess.l.d.idleBye)
	}
	for _, w := range silent {
		telemetry.Ended("idle_before_login")
		sayByeAndClose(w.c, w.l.d.idleBye)
	}
	return min(s.opts.IdleTimeout/4, 10*time.Second), gnet.None
}

// sayByeAndClose queues bye for the client and then its close; safe off
// the loop, and a no-op once the connection is gone.
func sayByeAndClose(c gnet.Conn, bye []byte) {
	c.AsyncWrite(bye, nil)
	c.Close()
}

func (s *Server) addSession(sess *session) {
	s.sessMu.Lock()
	s.sessions.push(sess)
	s.sessMu.Unlock()
}

func (s *Server) removeSession(sess *session) {
	s.sessMu.Lock()
	s.sessions.remove(sess)
	s.sessMu.Unlock()
}

// gnetLogger sends gnet's own messages to zerolog.
type gnetLogger struct{ l zerolog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug().Msgf("gnet: "+f, a...) }

func (g gnetLogger) Infof(f string, a ...any) { g.l.Debug().Msgf("gnet: "+f, a...) }

func (g gnetLogger) Warnf(f string, a ...any) { g.l.Warn().Msgf("gnet: "+f, a...) }

func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error().Msgf("gnet: "+f, a...) }

func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error().Msgf("gnet: "+f, a...) }
