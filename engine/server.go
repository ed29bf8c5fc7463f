// Package engine owns every socket of the proxy: one gnet event loop engine
// serves the plaintext client listeners and runs the pre-login state
// machines; logins run on goroutines (token, upstream dial, TLS, XOAUTH2)
// and report back to the loop; authenticated sessions are relayed on
// goroutines with bounded, pooled buffers.
package engine

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/rs/zerolog"
	"github.com/valyala/bytebufferpool"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/pop3"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// Options tune the engine; zero values take the defaults shown.
type Options struct {
	EventLoops   int           // gnet event loops (default: number of CPUs)
	LoginTimeout time.Duration // token + dial + TLS + XOAUTH2 for one login (default 30 s)
	DialTimeout  time.Duration // TCP + TLS + greeting upstream (default 10 s)
	RelayBuffer  int           // bytes per relay direction (default 16 KiB)
	TCPKeepAlive time.Duration // client and upstream keepalive period (default 60 s)
	IdleTimeout  time.Duration // a client silent this long before login is disconnected (default 10 min)
	// SendTimeout ends a session whose peer accepts no bytes for this long
	// (a client that stops reading mid-download; default 60 s, nginx's
	// send_timeout). It measures time without progress, not total time.
	SendTimeout time.Duration
	// Authenticated sessions with no traffic either way for this long are
	// closed; the defaults are the RFC minimums for a server's autologout:
	// IMAP 30 min (RFC 9051 §5.4), POP3 10 min (RFC 1939 §3), SMTP 5 min
	// per command (RFC 5321 §4.5.3.2).
	IMAPIdleTimeout, POP3IdleTimeout, SMTPIdleTimeout time.Duration
	// PendingLimit bounds what a client connection on the event loop may
	// hold before login: unsent output (above it, its input waits) and
	// input that must wait (above it, the client is disconnected: gnet
	// cannot stop reading one connection). Default 64 KiB.
	PendingLimit int
	// WarmConnections caps the pre-connected upstream connections kept per
	// server section; the pool grows towards it only while logins find it
	// empty (default 64; negative: none).
	WarmConnections int
	// WarmMaxAge recycles a warm connection this old, well before servers
	// drop unauthenticated connections (default 40 s; Exchange: 60 s).
	WarmMaxAge time.Duration
	// MailboxLimit caps one mailbox's concurrent authenticated sessions on
	// one upstream host; logins over it queue (default 16, Exchange
	// Online's limit; negative: no cap).
	MailboxLimit int
	// POP3InitialResponse sends the XOAUTH2 response on the AUTH line
	// (RFC 5034 allows it) instead of after the server's "+" (default:
	// two steps, as Exchange Online documents).
	POP3InitialResponse bool
	// IMAPSessionReuse keeps an IMAP upstream session this long after its
	// client's LOGOUT for the next login of the same account and password
	// (default 0: off).
	IMAPSessionReuse time.Duration
	IMAPLimits       imap.Limits // default imap.DefaultLimits
	POPLimits        pop3.Limits // default pop3.DefaultLimits
	SMTPLimits       smtp.Limits // default smtp.DefaultLimits
	// RootCAs verifies upstream certificates; nil means the system roots
	// (which honour SSL_CERT_FILE).
	RootCAs *x509.CertPool
	Logger  zerolog.Logger
}

func (o *Options) defaults() {
	if o.EventLoops <= 0 {
		o.EventLoops = runtime.NumCPU()
	}
	if o.LoginTimeout <= 0 {
		o.LoginTimeout = 30 * time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.RelayBuffer <= 0 {
		o.RelayBuffer = 16 << 10
	}
	if o.TCPKeepAlive <= 0 {
		o.TCPKeepAlive = 60 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Minute
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 60 * time.Second
	}
	if o.IMAPIdleTimeout <= 0 {
		o.IMAPIdleTimeout = 30 * time.Minute
	}
	if o.POP3IdleTimeout <= 0 {
		o.POP3IdleTimeout = 10 * time.Minute
	}
	if o.SMTPIdleTimeout <= 0 {
		o.SMTPIdleTimeout = 5 * time.Minute
	}
	if o.PendingLimit <= 0 {
		o.PendingLimit = 64 << 10
	}
	if o.WarmConnections == 0 {
		o.WarmConnections = 64
	}
	if o.WarmMaxAge <= 0 {
		o.WarmMaxAge = 40 * time.Second
	}
	if o.MailboxLimit == 0 {
		o.MailboxLimit = 16
	}
	if o.IMAPLimits == (imap.Limits{}) {
		o.IMAPLimits = imap.DefaultLimits
	}
	if o.POPLimits == (pop3.Limits{}) {
		o.POPLimits = pop3.DefaultLimits
	}
	if o.SMTPLimits == (smtp.Limits{}) {
		o.SMTPLimits = smtp.DefaultLimits
	}
}

// Server is the running proxy.
type Server struct {
	gnet.BuiltinEventEngine

	cfg      *config.Config
	provider *auth.Provider
	opts     Options
	log      zerolog.Logger

	listeners map[int]*listener // by local port (unique across sections)

	eng    gnet.Engine
	booted chan struct{}
	done   chan error

	ctx    context.Context // cancelled on Stop: ends logins in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup // login, profile and relay goroutines

	gnetStarted bool
	tlsLns      []net.Listener
	// gnet clients, for the idle sweep: an intrusive list, so that
	// tracking a connection allocates nothing.
	sessMu    sync.Mutex
	sessHead  *session
	sessCount int

	// relayBufs holds the relays' full-size buffers: one size only, so
	// every buffer taken is one that was given back.
	relayBufs bytebufferpool.Pool
	// outBufs gathers a pre-login session's answers within one event.
	outBufs bytebufferpool.Pool

	gates  *upstream.Gates
	linger *upstream.Linger // nil: IMAP session reuse off

	relayMu sync.Mutex
	relays  map[*relay]struct{}
	conns   map[net.Conn]struct{} // pre-login connections of TLS listeners
}

// listener is one server section's state shared by its connections.
type listener struct {
	srv *config.Server
	up  *upstream.Side
	log zerolog.Logger

	// Local TLS (nil tlsCfg: plaintext listener on gnet).
	certs    *certStore
	tlsCfg   *tls.Config
	startTLS bool // STARTTLS / STLS offered (and required before login)

	mu       sync.Mutex
	prof     *profile
	fetching bool
	waiting  []func(*profile) // called with nil when the upstream is unavailable
}

// profileOr returns the upstream's profile if it is known. If not, it
// returns nil and arranges for later to be called, from another goroutine,
// with the profile once fetched (nil if the upstream is unavailable).
func (l *listener) profileOr(s *Server, later func(*profile)) *profile {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.prof != nil {
		return l.prof
	}
	l.waiting = append(l.waiting, later)
	if !l.fetching {
		l.fetching = true
		s.wg.Add(1)
		go s.fetchProfile(l)
	}
	return nil
}

// waitProfile blocks until the profile is known (nil: unavailable).
func (l *listener) waitProfile(s *Server) *profile {
	ch := make(chan *profile, 1)
	if p := l.profileOr(s, func(p *profile) { ch <- p }); p != nil {
		return p
	}
	return <-ch
}

// learn records the greeting and capabilities of a fresh upstream
// connection, the first time one is seen.
func (l *listener) learn(u *upstream.Conn) *profile {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.prof == nil {
		l.prof = profileOf(l.srv.Protocol, u)
	}
	return l.prof
}

// New prepares a proxy for cfg's servers; Start binds them.
func New(cfg *config.Config, provider *auth.Provider, opts Options) *Server {
	opts.defaults()
	s := &Server{
		cfg: cfg, provider: provider, opts: opts, log: opts.Logger,
		listeners: map[int]*listener{},
		booted:    make(chan struct{}),
		done:      make(chan error, 1),
		relays:    map[*relay]struct{}{},
		conns:     map[net.Conn]struct{}{},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	life := upstream.Life{Ctx: s.ctx, WG: &s.wg}
	s.gates = upstream.NewGates(max(opts.MailboxLimit, 0))
	if opts.IMAPSessionReuse > 0 {
		s.linger = upstream.NewLinger(life, opts.IMAPSessionReuse)
		s.gates.Evict = s.linger.Evict
	}
	for _, srv := range cfg.Servers {
		l := &listener{srv: srv, log: opts.Logger.With().Str("server", srv.Section).Logger()}
		dialer := upstream.NewDialer(srv, opts.RootCAs, opts.DialTimeout)
		learn := func(u *upstream.Conn) { l.learn(u) }
		l.up = &upstream.Side{Srv: srv, Dialer: dialer, Gates: s.gates, Linger: s.linger, Learn: learn,
			POP3InitialResponse: opts.POP3InitialResponse,
			Pool:                upstream.NewPool(life, dialer.Dial, learn, l.log, max(opts.WarmConnections, 0), opts.WarmMaxAge)}
		s.listeners[srv.LocalPort] = l
	}
	return s
}

// Start binds every listener and returns once they accept connections, or
// with the first error (a certificate that does not load, a port in use).
func (s *Server) Start() error {
	if len(s.listeners) == 0 {
		return errors.New("no server sections to serve: add an [IMAP-port], [POP-port] or [SMTP-port] section")
	}
	var addrs []string
	for _, srv := range s.cfg.Servers {
		l := s.listeners[srv.LocalPort]
		if err := l.setupTLS(); err != nil {
			s.closeTLSListeners()
			return err
		}
		if l.tlsCfg == nil {
			addrs = append(addrs, "tcp://"+srv.ListenAddr())
			continue
		}
		ln, err := net.Listen("tcp", srv.ListenAddr())
		if err != nil {
			s.closeTLSListeners()
			return fmt.Errorf("cannot listen on %s for [%s] (is the proxy already running?): %w", srv.ListenAddr(), srv.Section, err)
		}
		s.tlsLns = append(s.tlsLns, ln)
		s.wg.Add(1)
		go s.acceptTLS(l, ln)
	}
	if len(addrs) > 0 {
		go func() {
			s.done <- gnet.Rotate(s, addrs,
				gnet.WithMulticore(true),
				gnet.WithNumEventLoop(s.opts.EventLoops),
				gnet.WithReuseAddr(true),
				gnet.WithTCPKeepAlive(s.opts.TCPKeepAlive),
				gnet.WithTCPNoDelay(gnet.TCPNoDelay),
				gnet.WithLogger(gnetLogger{s.log}),
				gnet.WithTicker(true),
			)
		}()
		select {
		case <-s.booted:
			s.gnetStarted = true
		case err := <-s.done:
			if err == nil {
				err = errors.New("event loop stopped at start")
			}
			s.cancel()
			s.closeTLSListeners()
			s.wg.Wait()
			return fmt.Errorf("cannot listen on %v (is the proxy already running?): %w", addrs, err)
		}
	}
	s.wg.Add(1)
	go s.sweepIdleRelays()
	for _, srv := range s.cfg.Servers {
		l := s.listeners[srv.LocalPort]
		mode := "plaintext"
		switch {
		case l.tlsCfg != nil && l.startTLS:
			mode = "STARTTLS required"
		case l.tlsCfg != nil:
			mode = "TLS"
		}
		upMode := "TLS"
		if srv.ServerStartTLS {
			upMode = "STARTTLS"
		}
		s.log.Info().Str("server", srv.Section).Str("listen", srv.ListenAddr()).Str("local", mode).
			Str("upstream", srv.UpstreamAddr()).Str("upstream_tls", upMode).Msg("listening")
	}
	return nil
}

func (s *Server) closeTLSListeners() {
	for _, ln := range s.tlsLns {
		ln.Close()
	}
}

// Done reports the event loop's end (after Stop, or on a fatal error).
func (s *Server) Done() <-chan error { return s.done }

// Stop closes the listeners and every connection, ends logins in flight
// and waits for all goroutines the server started.
func (s *Server) Stop(ctx context.Context) error {
	s.cancel()
	s.closeTLSListeners()
	var err error
	if s.gnetStarted {
		err = s.eng.Stop(ctx)
	}
	s.relayMu.Lock()
	for r := range s.relays {
		r.close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.relayMu.Unlock()
	s.linger.CloseAll()
	s.wg.Wait()
	return err
}

// OnBoot implements gnet.EventHandler.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	close(s.booted)
	return gnet.None
}

// OnOpen implements gnet.EventHandler: greet at once if the upstream's
// greeting is known, else fetch it off the loop.
func (s *Server) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	port := 0
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		port = a.Port
	}
	l := s.listeners[port]
	if l == nil {
		return nil, gnet.Close
	}
	sess := newSession(s, l, c)
	c.SetContext(sess)
	s.addSession(sess)
	sess.logOpen()
	prof := l.profileOr(s, func(p *profile) {
		sess.post(func(ps *pending) {
			if p != nil {
				ps.profile = p
			} else {
				ps.unavailable = true
			}
		})
	})
	if prof == nil {
		return nil, gnet.None // greeted from OnTraffic once the profile is known
	}
	return sess.greet(prof), gnet.None
}

// fetchProfile connects upstream once to learn its greeting and
// capabilities, then greets the clients that were waiting.
func (s *Server) fetchProfile(l *listener) {
	defer s.wg.Done()
	u, err := l.up.Dialer.Dial(s.ctx)
	var prof *profile
	if err == nil {
		prof = l.learn(u)
		l.up.Pool.Offer(u) // the first login can use it
	} else {
		l.log.Error().Err(err).Msg("upstream server unavailable")
	}
	l.mu.Lock()
	waiting := l.waiting
	l.waiting, l.fetching = nil, false
	l.mu.Unlock()
	for _, f := range waiting {
		f(prof)
	}
}

// OnTraffic implements gnet.EventHandler.
func (s *Server) OnTraffic(c gnet.Conn) gnet.Action {
	sess, ok := c.Context().(*session)
	if !ok {
		return gnet.Close
	}
	return sess.onTraffic()
}

// OnClose implements gnet.EventHandler.
func (s *Server) OnClose(c gnet.Conn, err error) gnet.Action {
	if sess, ok := c.Context().(*session); ok {
		s.removeSession(sess)
		sess.onClose(err)
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
	for sess := s.sessHead; sess != nil; sess = sess.next {
		if sess.idleCheck.Load() && now-sess.lastSeen.Load() > limit {
			sess.idleCheck.Store(false)
			idle = append(idle, sess)
		}
	}
	s.sessMu.Unlock()
	for _, sess := range idle {
		sess.c.AsyncWrite(idleBye(sess.l.srv.Protocol), nil)
		sess.c.Close()
	}
	return min(s.opts.IdleTimeout/4, 10*time.Second), gnet.None
}

func (s *Server) addSession(sess *session) {
	s.sessMu.Lock()
	sess.next = s.sessHead
	if s.sessHead != nil {
		s.sessHead.prev = sess
	}
	s.sessHead = sess
	s.sessCount++
	s.sessMu.Unlock()
}

func (s *Server) removeSession(sess *session) {
	s.sessMu.Lock()
	if sess.prev != nil {
		sess.prev.next = sess.next
	} else if s.sessHead == sess {
		s.sessHead = sess.next
	}
	if sess.next != nil {
		sess.next.prev = sess.prev
	}
	sess.prev, sess.next = nil, nil
	s.sessCount--
	s.sessMu.Unlock()
}

// gnetLogger sends gnet's own messages to zerolog.
type gnetLogger struct{ l zerolog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug().Msgf("gnet: "+f, a...) }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug().Msgf("gnet: "+f, a...) }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn().Msgf("gnet: "+f, a...) }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error().Msgf("gnet: "+f, a...) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error().Msgf("gnet: "+f, a...) }

// Stats is a snapshot of the engine's counters.
type Stats struct {
	PreLogin int                  // plaintext clients connected, not yet relayed
	Relays   int                  // authenticated sessions being relayed
	Warm     map[string]WarmStats // by server section
	Reuse    upstream.ReuseStats  // IMAP session reuse (zero when off)
}

// WarmStats describes one section's warm pool.
type WarmStats struct {
	Idle, Hits, Misses, Expired, Dialed int
}

// Stats returns the engine's counters.
func (s *Server) Stats() Stats {
	st := Stats{Warm: map[string]WarmStats{}, Reuse: s.linger.Snapshot()}
	s.sessMu.Lock()
	st.PreLogin = s.sessCount
	s.sessMu.Unlock()
	s.relayMu.Lock()
	st.Relays = len(s.relays)
	s.relayMu.Unlock()
	for _, l := range s.listeners {
		ps, idle := l.up.Pool.Snapshot()
		st.Warm[l.srv.Section] = WarmStats{Idle: idle, Hits: ps.Hits, Misses: ps.Misses, Expired: ps.Expired, Dialed: ps.Dialed}
	}
	return st
}
