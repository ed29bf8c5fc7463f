// Package engine owns every socket of the proxy: one gnet event loop engine
// serves the plaintext client listeners and runs the pre-login state
// machines; logins run on goroutines (token, upstream dial, TLS, XOAUTH2)
// and report back to the loop; authenticated sessions are relayed on
// goroutines with bounded, pooled buffers.
package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/rs/zerolog"
	"github.com/valyala/bytebufferpool"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/internal/readwait"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/internal/contain"
	"github.com/emailproxy/emailproxy/telemetry"
)

// Server is the running proxy.
type Server struct {
	gnet.BuiltinEventEngine

	cfg      *config.Config
	provider *auth.Provider
	opts     Options
	log      zerolog.Logger

	lsn  atomic.Pointer[map[int]*listener] // by local port (unique across sections); replaced whole by Reload
	life upstream.Life

	// loops are the gnet event loops serving the plaintext listeners
	// (nil: none; see accept.go).
	loops *gnet.Client

	ctx    context.Context // cancelled on Stop (errStopping): ends logins in flight
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // login, profile and relay goroutines

	lnMu    sync.Mutex
	lns     []net.Listener // every listener, closed by Drain and Stop
	accepts sync.WaitGroup // the accept loops
	// The event loops' clients, for the idle sweep and a drain: those
	// with a session, and the silent ones (silent.go).
	sessMu   sync.Mutex
	sessions chain[session, *session]
	silent   chain[silentClient, *silentClient]

	// relayBufs holds the relays' full-size buffers: one size only, so
	// every buffer taken is one that was given back.
	relayBufs bytebufferpool.Pool
	// outBufs gathers a pre-login session's answers within one event.
	outBufs bytebufferpool.Pool

	gates  *upstream.Gates
	linger *upstream.Linger // nil: session reuse off for every protocol

	relayMu sync.Mutex
	relays  map[*relay]struct{}
	// waiter watches the sockets of parked relay directions and of kept
	// IMAP sessions (nil: none park; see Options.ParkAfter); parkedDirs
	// counts the former.
	waiter     *readwait.Waiter
	parkedDirs atomic.Int64
	conns      map[net.Conn]*listener // pre-login connections of the goroutine front end
	// detached holds, by session, the clients that ended their input
	// while their login ran, until the login's goroutine takes them (see
	// detachedClient).
	detached sync.Map

	draining      atomic.Bool  // Drain has begun: new clients are turned away
	listenersMade atomic.Int64 // for the listeners' reuse scopes
}

// listener is one server section's state shared by its connections.
type listener struct {
	eng *Server // the engine serving the section
	srv *config.Server
	d   *dialect
	up  *upstream.Side
	log zerolog.Logger
	m   *telemetry.Server
	// reuseScope names this configuration of the section in the keys of
	// its kept sessions (unique per listener: see Linger.Key).
	reuseScope string

	// gate: which connections the section serves (allowed.go).
	gate *clientGate

	// Connections of this section, for the metrics.
	preLogin, sessions atomic.Int64
	// ln is the section's listener (see accept.go); removed: a reload
	// took the section away.
	ln      net.Listener
	removed atomic.Bool

	// Local TLS (nil tlsCfg: plaintext; served by Options.FrontEnd).
	certs    *certStore
	tlsCfg   *tls.Config
	startTLS bool // STARTTLS / STLS offered (and required before login)

	mu       sync.Mutex
	prof     *profile
	fetching bool
	waiting  []func(*profile) // called with nil when the upstream is unavailable
	// down is touched only by the fetch running (fetching), one at a time.
	down outage
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

// warnIfExposed warns, once the section listens, when its clients log in
// in plaintext on an address other machines can reach: emailproxy.py's
// default local_address, ::, is every interface, and a config without
// the key sends the apps' passwords across the network in clear.
func (l *listener) warnIfExposed() {
	if l.ln == nil || l.tlsCfg != nil || l.srv.LoopbackClientsOnly() {
		return
	}
	a, ok := l.ln.Addr().(*net.TCPAddr)
	if !ok || a.IP.IsLoopback() {
		return
	}
	ev := l.log.Warn().Str("listen", a.String())
	if l.srv.AllowedClients != "" {
		ev = ev.Str("allowed_clients", l.srv.AllowedClients)
	}
	ev.Msg("plaintext listener reachable from other machines: passwords cross the network unencrypted; " + config.ExposedAdvice)
}

// knownProfile returns the upstream's profile, nil if not yet known.
func (l *listener) knownProfile() *profile {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.prof
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
		l.prof = l.d.profile(u)
	}
	return l.prof
}

// newListener prepares a server section: its dialect, its upstream side
// and its metrics.
func (s *Server) newListener(srv *config.Server) *listener {
	l := &listener{eng: s, srv: srv, d: dialectOf(srv.Protocol), log: s.opts.Logger.With().Str("server", srv.Section).Logger(),
		m: telemetry.ForServer(string(srv.Protocol), srv.Section)}
	l.gate = newClientGate(srv)
	s.gauges(srv.LocalPort, srv.Section)
	dialer := upstream.NewDialer(srv, s.opts.RootCAs, s.opts.DialTimeout)
	dialer.Trace = l.traceUpstream
	learn := func(u *upstream.Conn) {
		defer func() { // a panic reading the server's greeting fails nothing else
			if v := recover(); v != nil {
				contain.Recovered(l.log, "dial", v)
			}
		}()
		l.learn(u)
	}
	l.up = &upstream.Side{Srv: srv, Dialer: dialer, Gates: s.gates, Learn: learn,
		POP3InitialResponse: s.opts.POP3InitialResponse,
		Pool:                upstream.NewPool(s.life, dialer.Dial, learn, l.log, max(s.opts.WarmConnections, 0), s.opts.WarmMaxAge)}
	if s.reuseFor(srv.Protocol) > 0 {
		l.up.Linger = s.linger
		l.reuseScope = fmt.Sprintf("%s#%d", srv.Section, s.listenersMade.Add(1))
	}
	return l
}

// reuseFor is how long a session of proto is kept after its client leaves
// (0: not at all).
func (s *Server) reuseFor(proto config.Protocol) time.Duration {
	switch proto {
	case config.IMAP:
		return s.opts.IMAPSessionReuse
	case config.SMTP:
		return s.opts.SMTPSessionReuse
	}
	return 0
}

// listener is the section served on port now (nil: none).
func (s *Server) listener(port int) *listener { return (*s.lsn.Load())[port] }

// listenerList is every section served now.
func (s *Server) listenerList() []*listener {
	var out []*listener
	for _, l := range *s.lsn.Load() {
		out = append(out, l)
	}
	return out
}

// New prepares a proxy for cfg's servers; Start binds them.
func New(cfg *config.Config, provider *auth.Provider, opts Options) *Server {
	opts.defaults()
	s := &Server{
		cfg: cfg, provider: provider, opts: opts, log: opts.Logger,
		relays: map[*relay]struct{}{},
		conns:  map[net.Conn]*listener{},
	}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	life := upstream.Life{Ctx: s.ctx, WG: &s.wg}
	s.gates = upstream.NewGates(max(opts.MailboxLimit, 0))
	s.gates.Shared = opts.SharedMailboxes
	if opts.IMAPSessionReuse > 0 || opts.SMTPSessionReuse > 0 {
		s.linger = upstream.NewLinger(life)
		s.gates.Evict = s.linger.Evict
	}
	s.life = life
	m := map[int]*listener{}
	for _, srv := range cfg.Servers {
		m[srv.LocalPort] = s.newListener(srv)
	}
	s.lsn.Store(&m)
	return s
}

// Start binds every listener and returns once they accept connections, or
// with the first error (a certificate that does not load, a port in use).
func (s *Server) Start() error {
	if len(*s.lsn.Load()) == 0 {
		return errors.New("no server sections to serve: add an [IMAP-port], [POP-port] or [SMTP-port] section")
	}
	if s.opts.ParkAfter > 0 {
		w, err := readwait.New()
		switch {
		case err == nil:
			s.waiter = w
			if s.linger != nil {
				s.linger.Waiter = w // kept sessions are watched the same way
			}
		case !errors.Is(err, errors.ErrUnsupported):
			s.log.Warn().Err(err).Msg("idle sessions keep their goroutines: cannot watch their sockets")
		}
	}
	if err := s.start(); err != nil {
		s.waiter.Close()
		return err
	}
	return nil
}

func (s *Server) start() error {
	loopServed := false
	var bound []*listener // closed again if a later step fails
	for _, srv := range s.cfg.Servers {
		l := s.listener(srv.LocalPort)
		if err := l.setupTLS(); err != nil {
			s.closeAll(bound)
			return err
		}
		ln, err := s.listen(srv)
		if err != nil {
			s.closeAll(bound)
			return err
		}
		l.ln = ln
		bound = append(bound, l)
		loopServed = loopServed || (l.tlsCfg == nil && s.opts.FrontEnd == FrontEndGnet)
	}
	if loopServed {
		if err := s.startLoops(); err != nil {
			s.closeAll(bound)
			return err
		}
	}
	for _, srv := range s.cfg.Servers {
		s.serve(s.listener(srv.LocalPort))
	}
	telemetry.Gauge(`emailproxy_session_reuse_hits_total`, func() float64 { return float64(s.linger.Snapshot().Reused) })
	telemetry.Gauge(`emailproxy_mailbox_queue_length`, func() float64 { return float64(s.gates.Waiting()) })
	s.wg.Add(1)
	go s.sweepIdleRelays()
	for _, srv := range s.cfg.Servers {
		l := s.listener(srv.LocalPort)
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
		l.warnIfExposed()
	}
	for _, srv := range s.cfg.Servers {
		s.listener(srv.LocalPort).learnEarly(s)
	}
	return nil
}

// learnEarly learns the upstream's greeting now, in the background,
// rather than when the first client comes (at start, and for the sections
// a reload adds or changes): that client is greeted at once, and a server
// that cannot be reached shows in the log before any client does.
func (l *listener) learnEarly(s *Server) {
	l.profileOr(s, func(*profile) {})
}

// Stop closes the listeners and every connection, ends logins in flight
// and waits for all goroutines the server started.
func (s *Server) Stop(ctx context.Context) error {
	s.cancel(errStopping)
	s.closeListeners()
	s.accepts.Wait() // no client is on its way to the loops
	var err error
	if s.loops != nil {
		err = s.loops.Stop()
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
	s.waiter.Close() // every relay has ended: none is parked
	return err
}

// fetchProfile connects upstream once to learn its greeting and
// capabilities, then greets the clients that were waiting.
func (s *Server) fetchProfile(l *listener) {
	defer s.wg.Done()
	prof := s.dialAndLearn(l)
	l.mu.Lock()
	waiting := l.waiting
	l.waiting, l.fetching = nil, false
	l.mu.Unlock()
	for _, f := range waiting {
		f(prof)
	}
}

// dialAndLearn connects upstream and learns its profile; the connection
// goes to the warm pool (the first login can use it). A panic in it
// (reading what the server sent) leaves the profile unknown, as a failed
// dial does: the clients waiting for it are told, not left waiting.
func (s *Server) dialAndLearn(l *listener) (prof *profile) {
	var u *upstream.Conn
	defer func() {
		if v := recover(); v != nil {
			contain.Recovered(l.log, "dial", v)
			if u != nil {
				u.Close()
			}
			prof = nil
		}
	}()
	var err error
	if u, err = l.up.Dialer.Dial(s.ctx); err != nil {
		if log, n := l.down.failed(time.Now(), err.Error()); log {
			l.log.Error().Err(err).Int("failed_dials", n).Msg("upstream server unavailable")
		} else {
			l.log.Debug().Err(err).Msg("upstream server unavailable")
		}
		return nil
	}
	if away, n := l.down.reached(time.Now()); n > 0 {
		l.log.Info().Dur("unavailable_ms", away).Int("failed_dials", n).Msg("upstream server reachable again")
	}
	prof = l.learn(u)
	l.up.Pool.Offer(u)
	return prof
}

// gauges registers what the metrics read of a section at each scrape;
// they look the section up by port, as a reload may replace it.
func (s *Server) gauges(port int, section string) {
	name := func(metric string) string { return fmt.Sprintf(`%s{server=%q}`, metric, section) }
	read := func(f func(l *listener) float64) func() float64 {
		return func() float64 {
			if l := s.listener(port); l != nil {
				return f(l)
			}
			return 0
		}
	}
	telemetry.Gauge(name("emailproxy_prelogin_connections"), read(func(l *listener) float64 { return float64(l.preLogin.Load()) }))
	telemetry.Gauge(name("emailproxy_open_sessions"), read(func(l *listener) float64 { return float64(l.sessions.Load()) }))
	pool := func(f func(upstream.PoolStats, int) int) func() float64 {
		return read(func(l *listener) float64 { st, idle := l.up.Pool.Snapshot(); return float64(f(st, idle)) })
	}
	telemetry.Gauge(name("emailproxy_warm_pool_hits_total"), pool(func(st upstream.PoolStats, _ int) int { return st.Hits }))
	telemetry.Gauge(name("emailproxy_warm_pool_misses_total"), pool(func(st upstream.PoolStats, _ int) int { return st.Misses }))
	telemetry.Gauge(name("emailproxy_warm_pool_idle"), pool(func(_ upstream.PoolStats, idle int) int { return idle }))
}
