package engine

import (
	"time"

	"github.com/panjf2000/gnet/v2"
)

// silentClient is a plaintext client on the event loop that has been
// greeted and has sent nothing since. Many of a fleet's connections are
// in that state at any moment (and all of a client that only holds a
// connection open), so it costs 48 bytes instead of a session's 176: the
// session is made when the first bytes come (wakeSilent). What it keeps
// is what the idle sweep, a drain and the log need.
type silentClient struct {
	c       gnet.Conn
	l       *listener
	opened  int64               // UnixNano of the accept
	onChain links[silentClient] // on the Server's chain of silent clients (sessMu)
}

func (w *silentClient) chainLinks() *links[silentClient] { return &w.onChain }

// greetSilent greets a client whose upstream greeting is known and
// keeps it as a silent client; on the loop, from OnOpen.
func (s *Server) greetSilent(l *listener, c gnet.Conn, prof *profile) []byte {
	w := &silentClient{c: c, l: l, opened: time.Now().UnixNano()}
	l.preLogin.Add(1)
	c.SetContext(w)
	s.sessMu.Lock()
	s.silent.push(w)
	s.sessMu.Unlock()
	if e := l.log.Info(); e.Enabled() {
		e.Stringer("client", c.RemoteAddr()).Str("proto", string(l.srv.Protocol)).Msg("connection opened")
	}
	return l.d.greeting(prof, false, false)
}

// takeSilentLocked takes off their chain, and returns, the silent
// clients for which pick is true: the caller says goodbye and closes
// them. Holds sessMu.
func (s *Server) takeSilentLocked(pick func(*silentClient) bool) []*silentClient {
	var taken []*silentClient
	s.silent.each(func(w *silentClient) {
		if pick(w) {
			s.silent.remove(w)
			taken = append(taken, w)
		}
	})
	return taken
}

// wakeSilent makes the session of a silent client whose first bytes have
// come, and lets it read them; on the loop, from OnTraffic.
func (s *Server) wakeSilent(w *silentClient) gnet.Action {
	sess := newSession(w.l, w.c, w.opened)
	sess.prof, sess.phase = w.l.knownProfile(), phPreLogin
	// One hold of the lock moves the client from one list to the other.
	s.sessMu.Lock()
	listed := s.silent.remove(w)
	if listed {
		s.sessions.push(sess)
	}
	s.sessMu.Unlock()
	if !listed {
		return gnet.None // swept or drained: the goodbye is queued, then the close
	}
	w.c.SetContext(sess)
	return sess.onTraffic()
}

// closeSilent ends a silent client; on the loop, from OnClose.
func (s *Server) closeSilent(w *silentClient, err error) {
	s.sessMu.Lock()
	s.silent.remove(w)
	s.sessMu.Unlock()
	w.l.preLogin.Add(-1)
	if e := w.l.log.Info(); e.Enabled() {
		logClosed(e.Stringer("client", w.c.RemoteAddr()), w.opened, err)
	}
}
