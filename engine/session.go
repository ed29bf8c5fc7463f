package engine

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/proxyproto"
	"github.com/emailproxy/emailproxy/telemetry"
)

type phase uint8

const (
	phGreeting phase = iota // waiting for the upstream's greeting to be known
	phProxy                 // waiting for the PROXY protocol header
	phPreLogin              // the state machine reads client commands
	phLogin                 // a login runs off the loop
	phHandoff               // logged in; waiting for gnet to send what it holds for the client
	phRelay                 // handed to a relay; the gnet connection is gone
)

// pollEvery is how often a held session (output over the bound, or a
// hand-off waiting for gnet to flush) checks whether the client has read.
// gnet reports reads, not completed writes, so the session wakes itself.
const (
	pollFast = 10 * time.Millisecond
	pollSlow = 100 * time.Millisecond // after a second without progress
)

// pending is what goroutines hand back to the loop; guarded by session.mu.
type pending struct {
	profile     *profile
	login       *loginResult
	unavailable bool
	poll        bool // a poll timer fired
	// loginGone: the login's goroutine could not hand its result to the
	// loop and has closed it; nothing will come.
	loginGone bool
}

// loginState is what a session holds while a login runs and until its
// connection is handed to a relay.
type loginState struct {
	tag     string       // IMAP tag of the login command
	cancel  func()       // stops the login: its client is gone (guarded by session.mu)
	handoff *loginResult // phHandoff: the login waiting for the flush
}

type loginResult struct {
	l     *listener
	proto config.Protocol
	up    *upstream.Conn
	reply []byte // upstream's answer to relay to the client
	user  string
	err   *auth.LoginError

	mailbox    string    // mailboxKey of the account on this upstream
	reuseKey   string    // non-empty: the session may be kept after LOGOUT or QUIT
	loginReply []byte    // the upstream's original login answer (reply may be re-tagged)
	reused     bool      // the login took a lingering session
	expiry     time.Time // when the token the upstream session logged in with expires (zero: not known)
}

// session is one plaintext client connection on the gnet event loop.
// Everything but mu's fields is touched only on the connection's loop.
// Goroutines (logins, profile fetches, poll timers) never read the
// gnet.Conn: what they need (the client's address) is copied at accept,
// results go through mu, and they only call the gnet.Conn's
// goroutine-safe methods (Wake; the idle sweep: AsyncWrite and Close),
// which gnet ignores once the connection is gone.
// A client greeted at once has no session until it sends something (it
// waits as a silentClient); the session is kept small all the same, and
// builds its state machine at the first command and its logger only when
// there is something to log.
type session struct {
	l      *listener
	c      gnet.Conn
	remote string        // the client's address, copied at accept: goroutines use it, never c
	start  int64         // UnixNano of the accept
	prof   *profile      // the upstream's profile, once greeted
	m      clientMachine // built at the first input after the greeting

	// Output backpressure (event loop only). held: the client has more
	// unsent output than the bound, so its input waits unparsed; stuck
	// (UnixNano) is when the unsent output last shrank, stuckOut how much
	// there was.
	stuck int64
	// login: the login in progress and, in phHandoff, its result waiting
	// for the flush (nil before the first login). Its own allocation:
	// most connections held are idle clients that never log in, and
	// every byte of this struct is paid by each of them.
	login *loginState

	onChain links[session] // on the Server's chain of sessions (sessMu)

	// Read by the idle sweep off the loop.
	lastSeen atomic.Int64 // UnixNano of the last complete client command (or open)

	mu   sync.Mutex
	pend pending

	// The small fields last, packed: a fleet keeps thousands of these.
	stuckOut  int32
	idleCheck atomic.Bool // true while waiting for client commands before login
	phase     phase
	held      bool
	polling   bool
	closed    bool // guarded by mu
}

// newSession makes the session of client c, accepted at start (UnixNano).
func newSession(l *listener, c gnet.Conn, start int64) *session {
	sess := &session{l: l, c: c, start: start}
	if a := c.RemoteAddr(); a != nil {
		sess.remote = a.String()
	}
	sess.lastSeen.Store(sess.start)
	sess.idleCheck.Store(true)
	return sess
}

func (s *session) chainLinks() *links[session] { return &s.onChain }

// logger makes the connection's log events.
func (s *session) logger() connLog { return connLog{base: s.l.log, client: s.remote} }

// connLog makes one connection's log events: the listener's logger with
// the client's address put first in each event. A sub-logger per
// connection (zerolog's With) would copy the listener's fields into a
// buffer kept for the session's whole life: half a kilobyte per session.
type connLog struct {
	base   zerolog.Logger
	client string
}

func (c connLog) Info() *zerolog.Event  { return c.base.Info().Str("client", c.client) }
func (c connLog) Warn() *zerolog.Event  { return c.base.Warn().Str("client", c.client) }
func (c connLog) Error() *zerolog.Event { return c.base.Error().Str("client", c.client) }
func (c connLog) Debug() *zerolog.Event { return c.base.Debug().Str("client", c.client) }

// logger is a logger with the client's address in every line.
func (c connLog) logger() zerolog.Logger { return c.base.With().Str("client", c.client).Logger() }

func (s *session) logOpen() {
	if e := s.l.log.Info(); e.Enabled() {
		e.Str("client", s.remote).Str("proto", string(s.l.srv.Protocol)).Msg("connection opened")
	}
}

// greet returns the greeting to send; the state machine waits for input.
func (s *session) greet(p *profile) []byte {
	s.prof = p
	s.phase = phPreLogin
	return s.l.d.greeting(p, false, false)
}

// post hands a result to the loop from another goroutine.
func (s *session) post(set func(*pending)) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	set(&s.pend)
	s.mu.Unlock()
	return s.c.Wake(nil) == nil
}

func (s *session) take() pending {
	s.mu.Lock()
	p := s.pend
	s.pend = pending{}
	s.mu.Unlock()
	return p
}

func (s *session) onTraffic() gnet.Action {
	p := s.take()
	if p.poll {
		s.polling = false
	}
	if s.phase == phProxy {
		if act, done := s.readProxyHeader(); done {
			return act
		}
	}
	if s.phase == phGreeting {
		switch {
		case p.profile != nil:
			if _, err := s.c.Write(s.greet(p.profile)); err != nil {
				return gnet.Close
			}
		case p.unavailable:
			s.c.Write(s.l.d.unavailableBye)
			return gnet.Close
		}
	}
	if p.login != nil && s.phase == phLogin {
		if act, done := s.finishLogin(p.login); done {
			return act
		}
	}
	switch s.phase {
	case phPreLogin:
		return s.process()
	case phHandoff:
		return s.tryHandoff()
	}
	// Waiting for the greeting or a login: input waits in gnet's buffer,
	// up to the bound.
	return s.checkInbound()
}

// checkInbound ends a connection whose unprocessed input is over the
// bound. gnet cannot stop reading one connection, so a client that keeps
// sending while its input must wait (a login in flight, output it does
// not read) is disconnected instead of growing the proxy.
func (s *session) checkInbound() gnet.Action {
	if n := s.c.InboundBuffered(); n > s.l.eng.opts.PendingLimit {
		s.l.log.Warn().Str("client", s.remote).Int("bytes", n).Int("limit", s.l.eng.opts.PendingLimit).
			Msg("client sent too much without waiting for answers; disconnecting")
		telemetry.Ended("pending_limit")
		return gnet.Close
	}
	return gnet.None
}

// outputStalled reports whether the client has more unsent output than
// the bound (until it falls under a quarter of it); then its input is left
// unparsed while the session waits for the output to drain.
func (s *session) outputStalled() (bool, gnet.Action) {
	out := s.c.OutboundBuffered()
	limit := s.l.eng.opts.PendingLimit
	if out <= limit && (!s.held || out <= limit/4) {
		s.held = false
		return false, gnet.None
	}
	return true, s.awaitDrain(out)
}

// awaitDrain waits for the client to read the out bytes gnet holds for
// it: it polls again shortly, and disconnects a client that has read
// nothing for SendTimeout.
func (s *session) awaitDrain(out int) gnet.Action {
	now := time.Now().UnixNano()
	if !s.held || out < int(s.stuckOut) {
		s.stuck = now // progress, or a new wait
	}
	s.held, s.stuckOut = true, int32(min(out, 1<<30))
	if time.Duration(now-s.stuck) > s.l.eng.opts.SendTimeout {
		s.l.log.Warn().Str("client", s.remote).Int("unsent", out).Str("send_timeout", s.l.eng.opts.SendTimeout.String()).
			Msg("client stopped reading; disconnecting")
		telemetry.Ended("send_timeout")
		return gnet.Close
	}
	s.poll(now)
	return s.checkInbound()
}

// poll wakes the session shortly, to look at its output again.
func (s *session) poll(now int64) {
	if s.polling {
		return
	}
	s.polling = true
	d := pollFast
	if time.Duration(now-s.stuck) > time.Second {
		d = pollSlow
	}
	time.AfterFunc(d, func() { s.post(func(p *pending) { p.poll = true }) })
}

// flushAt is how much output process gathers before writing it: answers
// to pipelined commands go out in one write instead of one each.
const flushAt = 16 << 10

// process runs buffered client input through the state machine, as long
// as the client reads what it is sent. The input is looked at once and
// consumed at the end, so a long pipeline is not copied once per command.
func (s *session) process() gnet.Action {
	if stalled, act := s.outputStalled(); stalled {
		return act
	}
	buf, _ := s.c.Peek(-1)
	if len(buf) == 0 {
		return gnet.None
	}
	if s.m == nil {
		s.m = s.l.d.newMachine(s.prof, false, false, &s.l.eng.opts)
	}
	out := s.l.eng.outBufs.Get()
	defer s.l.eng.outBufs.Put(out)
	used := 0
	// finish writes the gathered output and consumes the input used.
	finish := func() error {
		if used > 0 {
			s.c.Discard(used) // Discard(0) would drop the whole buffer
			used = 0
		}
		if len(out.B) == 0 {
			return nil
		}
		_, err := s.c.Write(out.B)
		out.B = out.B[:0]
		return err
	}
	for {
		confidential := s.m.Confidential()
		n, act := s.m.Next(buf[used:])
		if n > 0 {
			s.l.traceClient(s.remote, buf[used:used+n], confidential)
		}
		if len(act.Out) > 0 {
			s.l.traceProxy(s.remote, act.Out)
		}
		used += n
		if act.Kind != protocol.NeedMore {
			// Only a whole command counts as activity: a client that
			// trickles bytes (slowloris) is idle all the same.
			s.lastSeen.Store(time.Now().UnixNano())
		}
		out.B = append(out.B, act.Out...)
		switch act.Kind {
		case protocol.NeedMore:
			if finish() != nil {
				return gnet.Close
			}
			return gnet.None
		case protocol.Close, protocol.StartTLS: // plaintext listeners offer no STARTTLS
			finish()
			return gnet.Close
		case protocol.Login:
			if finish() != nil {
				return gnet.Close
			}
			s.startLogin(act)
			return s.checkInbound()
		}
		if used == len(buf) || len(out.B) >= flushAt {
			if finish() != nil {
				return gnet.Close
			}
			if stalled, act := s.outputStalled(); stalled {
				return act
			}
			if buf, _ = s.c.Peek(-1); len(buf) == 0 {
				return gnet.None
			}
		}
	}
}

func (s *session) startLogin(act protocol.Action) {
	s.phase = phLogin
	s.idleCheck.Store(false)
	clientCtx, hangUp := context.WithCancelCause(s.l.eng.ctx)
	ctx, cancel := context.WithTimeout(clientCtx, s.l.eng.opts.LoginTimeout)
	s.mu.Lock()
	s.login = &loginState{tag: act.Tag, cancel: func() { hangUp(errClientGone) }}
	s.mu.Unlock()
	// The goroutine gets copies: the session's gnet.Conn belongs to the
	// loop and may be released while the login runs.
	client, log := hostOf(s.remote), s.logger()
	s.l.eng.wg.Add(1)
	go func() {
		defer s.l.eng.wg.Done()
		defer hangUp(nil)
		defer cancel()
		res := s.l.eng.runLogin(ctx, s.l, log, act, client)
		if s.deliver(res) {
			return
		}
		if d, ok := s.l.eng.detached.LoadAndDelete(s); ok {
			s.l.eng.finishDetached(res, d.(*detachedClient))
		} else if res.up != nil {
			res.up.Close()
		}
	}()
}

// deliver hands a finished login to the loop. false: the loop is gone (or
// cannot be woken), and the result is the caller's to finish or close.
func (s *session) deliver(res *loginResult) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.pend.login = res
	s.mu.Unlock()
	if s.c.Wake(nil) == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pend.login != res {
		return true // onClose took it
	}
	s.pend.login, s.pend.loginGone = nil, true
	return false
}

// detachedClient is a client that finished sending (EOF) while its login
// ran, having sent commands after its login command: a script that pipes
// its commands and shuts down its writing side (printf ... | nc -N).
// gnet ends a connection at EOF, so before it closes the socket the
// session takes a duplicate of it and its unread input; the login then
// goes on without the loop, and the client gets the login's answer and
// its commands' answers, as on the goroutine front end. A client that
// hangs up with nothing after its login command is let go at once, and
// its login cancelled.
type detachedClient struct {
	fd       int
	leftover []byte
	log      connLog
	opened   time.Time
	m        clientMachine // for a failed login's answer
	tag      string
}

// detach returns the client to serve without the loop, if onClose(err)
// should; on the loop, before gnet closes the socket.
func (s *session) detach(err error) *detachedClient {
	if s.phase != phLogin || !errors.Is(err, io.EOF) || s.c.InboundBuffered() == 0 || s.c.OutboundBuffered() > 0 {
		// Output gnet still holds is written by its close, which must
		// not race a relay's writes: such a client is let go.
		return nil
	}
	in, _ := s.c.Peek(-1)
	fd, derr := s.c.Dup()
	if derr != nil {
		return nil
	}
	return &detachedClient{fd: fd, leftover: append([]byte(nil), in...), log: s.logger(),
		opened: time.Unix(0, s.start), m: s.m, tag: s.login.tag}
}

// handOver gives a client that finished sending before it was greeted
// (the upstream's greeting not yet learned: the first clients after a
// start) to the goroutine front end, with what it sent: that front end
// can wait for the greeting and then serve the input, which the event
// loop cannot once the client's EOF has come. On the loop, before gnet
// closes the socket.
func (s *session) handOver(err error) bool {
	if s.phase != phGreeting || !errors.Is(err, io.EOF) || s.c.InboundBuffered() == 0 ||
		s.c.OutboundBuffered() > 0 || s.l.srv.ProxyProtocol {
		return false
	}
	in, _ := s.c.Peek(-1)
	pre := append([]byte(nil), in...)
	fd, err := s.c.Dup()
	if err != nil {
		return false
	}
	conn, err := fileConn(fd, s.l.eng.opts.TCPKeepAlive)
	if err != nil {
		return false
	}
	c := &prefixConn{Conn: conn, pre: pre}
	if !s.l.eng.track(c, s.l) { // stopping or draining
		c.Close()
		return false
	}
	s.l.eng.wg.Add(1)
	go s.l.eng.serveConn(s.l, c, time.Unix(0, s.start))
	return true
}

// finishDetached answers a detached client's login: on success its
// session is relayed (the relay sees the client's EOF after the
// leftover commands and relays the server's answers until the server
// closes); on failure it is told why and closed.
func (s *Server) finishDetached(res *loginResult, d *detachedClient) {
	client, err := fileConn(d.fd, s.opts.TCPKeepAlive) // takes d.fd, even on failure
	if err != nil {
		d.log.Error().Err(err).Msg("cannot hand the connection to the relay")
		if res.up != nil {
			res.up.Close()
		}
		return
	}
	if res.err == nil {
		s.startRelay(client, res, d.leftover, d.log, d.opened)
		return
	}
	client.SetWriteDeadline(time.Now().Add(time.Second))
	client.Write(d.m.loginFailed(d.tag, "emailproxy: "+res.err.Message, res.err.Temporary))
	client.Close()
	d.log.Info().Dur("duration_ms", time.Since(d.opened)).Msg("connection closed")
}

// finishLogin answers the client; on success the connection leaves gnet
// for a relay once gnet has sent everything it holds for the client.
func (s *session) finishLogin(res *loginResult) (gnet.Action, bool) {
	s.mu.Lock()
	login := s.login
	login.cancel = nil
	if res.err != nil {
		s.login = nil
	}
	s.mu.Unlock()
	if res.err != nil {
		s.phase = phPreLogin
		s.lastSeen.Store(time.Now().UnixNano())
		s.idleCheck.Store(true)
		out := s.m.loginFailed(login.tag, "emailproxy: "+res.err.Message, res.err.Temporary)
		if _, err := s.c.Write(out); err != nil {
			return gnet.Close, true
		}
		return gnet.None, false
	}
	s.phase, login.handoff = phHandoff, res
	return s.tryHandoff(), true
}

// tryHandoff moves a logged-in connection to a relay. Answers to commands
// the client sent before its login may still sit in gnet's output buffer
// (a client that reads slowly): they go first, so the relay waits until
// gnet has sent them.
func (s *session) tryHandoff() gnet.Action {
	if out := s.c.OutboundBuffered(); out > 0 {
		return s.awaitDrain(out) // on Close, onClose ends the upstream session
	}
	res, tag := s.login.handoff, s.login.tag
	s.mu.Lock()
	s.login = nil
	s.mu.Unlock()
	// Client bytes sent after the login command (pipelined) go upstream
	// after the authentication, in order.
	var leftover []byte
	if n := s.c.InboundBuffered(); n > 0 {
		b, _ := s.c.Next(n)
		leftover = append([]byte(nil), b...)
	}
	fd, err := s.c.Dup()
	if err != nil {
		return s.handoffFailed(res, tag, err)
	}
	client, err := fileConn(fd, s.l.eng.opts.TCPKeepAlive)
	if err != nil {
		return s.handoffFailed(res, tag, err)
	}
	s.phase = phRelay
	s.l.eng.startRelay(client, res, leftover, s.logger(), time.Unix(0, s.start))
	return gnet.Close
}

// handoffFailed ends a login whose client could not be given to a relay
// (no file descriptor left for the duplicate): the upstream session is
// closed and the client, which has not had its answer, is told to try
// again.
func (s *session) handoffFailed(res *loginResult, tag string, err error) gnet.Action {
	log := s.logger()
	log.Error().Err(err).Msg("cannot hand the connection to the relay")
	res.up.Close()
	s.c.Write(s.m.loginFailed(tag, "emailproxy: cannot take the session over ("+err.Error()+"); try again later", true))
	return gnet.Close
}

func (s *session) onClose(err error) {
	d := s.detach(err)
	s.mu.Lock()
	s.closed = true
	var stopLogin func()
	if s.login != nil {
		stopLogin = s.login.cancel
	}
	res := s.pend.login
	if d != nil && res == nil && s.pend.loginGone {
		closeFD(d.fd) // its login has given up already
		d = nil
	}
	if d != nil && res == nil {
		s.l.eng.detached.Store(s, d) // the login's goroutine finishes it
	}
	s.pend = pending{}
	s.mu.Unlock()
	if d != nil {
		s.phase = phRelay // the relay, or finishDetached, logs its end
		if res != nil {
			s.l.eng.wg.Add(1)
			go func() {
				defer s.l.eng.wg.Done()
				s.l.eng.finishDetached(res, d)
			}()
		}
		return
	}
	if stopLogin != nil {
		stopLogin()
	}
	if res != nil && res.up != nil {
		res.up.Close()
	}
	if s.login != nil && s.login.handoff != nil { // closed while waiting for its output to drain
		s.login.handoff.up.Close()
		s.login.handoff = nil
	}
	if s.handOver(err) {
		return // the goroutine front end logs its end
	}
	if s.phase == phRelay {
		return // the relay logs the end of the session
	}
	// On the event loop: log without building a per-session logger.
	if ev := s.l.log.Info(); ev.Enabled() {
		logClosed(ev.Str("client", s.remote), s.start, err)
	}
}

// logClosed writes ev, which names the client, as the end of a
// connection opened at start (UnixNano) that was not relayed.
func logClosed(ev *zerolog.Event, start int64, err error) {
	if err != nil && !errors.Is(err, io.EOF) { // EOF: the client hung up, as clients do
		ev = ev.Str("error", err.Error())
	}
	ev.Dur("duration_ms", time.Duration(time.Now().UnixNano()-start)).Msg("connection closed")
}

// readProxyHeader reads the PROXY protocol header a balancer sends first;
// once it is whole the client's address is the one it names, and the
// client is greeted. done: act is what to return.
func (s *session) readProxyHeader() (act gnet.Action, done bool) {
	buf, _ := s.c.Peek(-1)
	n, src, whole, err := proxyproto.Parse(buf)
	switch {
	case err != nil:
		s.l.log.Warn().Str("peer", s.remote).Msg("no valid PROXY protocol header; closing without a greeting")
		return gnet.Close, true
	case !whole:
		if len(buf) > proxyproto.MaxHeader {
			return gnet.Close, true
		}
		return gnet.None, true
	}
	s.c.Discard(n)
	if src.IsValid() {
		s.remote = src.String()
	}
	if !s.l.admitsClient(s.remote) {
		return gnet.Close, true
	}
	s.logOpen()
	if g := s.startGreeting(); g != nil {
		if _, err := s.c.Write(g); err != nil {
			return gnet.Close, true
		}
	}
	return gnet.None, false
}
