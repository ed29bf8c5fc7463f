package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/internal/contain"
	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/proxyproto"
	"github.com/emailproxy/emailproxy/telemetry"
)

// The goroutine front end: a goroutine per connection with blocking reads
// and writes. It serves the listeners with a local certificate (gnet has
// no TLS: implicit TLS, or STARTTLS / STLS offered, with crypto/tls) and,
// with FrontEndGoroutines, the plaintext ones. It drives the same state
// machines as the event loop, under the same bounds: a login in flight
// reads at most PendingLimit (then TCP backpressure), a write that makes
// no progress for SendTimeout fails, and the idle timeout runs from the
// last whole command.

// track remembers a pre-login connection so Stop can close it.
func (s *Server) track(c net.Conn, l *listener) bool {
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	if s.ctx.Err() != nil || s.draining.Load() {
		return false
	}
	s.conns[c] = l
	l.preLogin.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.relayMu.Lock()
	if l, ok := s.conns[c]; ok {
		l.preLogin.Add(-1)
		delete(s.conns, c)
	}
	s.relayMu.Unlock()
}

// serveConn runs one client of a goroutine-served listener (local TLS,
// or plaintext with FrontEndGoroutines) up to its login, then hands it to
// a relay. accepted is zero for a client accepted here; for one the event
// loop hands over (see session.handOver), when the loop accepted it and
// logged its opening.
func (s *Server) serveConn(l *listener, raw net.Conn, accepted time.Time) {
	defer s.wg.Done()
	// A panic in this client's code closes this connection only (the
	// deferred close below runs first).
	defer func() {
		if v := recover(); v != nil {
			contain.Recovered(s.log, "front_end", v)
		}
	}()
	tracked := raw // as accept tracked it, for Stop and Drain
	remote := raw.RemoteAddr().String()
	if l.srv.ProxyProtocol {
		var ok bool
		if raw, remote, ok = s.readProxyHeader(l, raw); !ok || !l.admitsClient(remote) {
			s.untrack(tracked)
			raw.Close()
			return
		}
	}
	log := connLog{base: l.log, client: remote}
	opened := accepted
	implicitTLS := l.tlsCfg != nil && !l.startTLS
	if opened.IsZero() {
		opened = time.Now()
		log.Info().Str("proto", string(l.srv.Protocol)).Bool("tls", implicitTLS).Msg("connection opened")
	}
	var c net.Conn = raw
	handedOff := false
	reason := "closed"
	defer func() {
		s.untrack(tracked)
		if !handedOff {
			c.Close()
			log.Info().Str("reason", reason).Dur("duration_ms", time.Since(opened)).Msg("connection closed")
		}
	}()
	handshake := func() bool {
		tc := tls.Server(c, l.tlsCfg)
		tc.SetDeadline(time.Now().Add(s.opts.DialTimeout))
		if err := tc.Handshake(); err != nil {
			reason = "TLS handshake failed: " + upstream.ShortNetErr(err) + oldTLSHint(err)
			return false
		}
		tc.SetDeadline(time.Time{})
		c = tc
		return true
	}
	active := false
	if implicitTLS {
		if !handshake() {
			return
		}
		active = true
	}
	// Every write to a client that does not read fails after SendTimeout;
	// reads wait at most IdleTimeout; a login in flight reads at most the
	// pending limit (clientWatch), so TCP flow control bounds what the
	// client can send meanwhile.
	send := func(b []byte) error {
		c.SetWriteDeadline(time.Now().Add(s.opts.SendTimeout))
		_, err := c.Write(b)
		if upstream.IsTimeout(err) {
			reason = "send timeout: the client stopped reading"
			telemetry.Ended("send_timeout")
		}
		return err
	}
	prof := l.waitProfile(s)
	if prof == nil {
		send(l.d.unavailableBye)
		reason = "upstream unavailable"
		return
	}
	m := l.d.newMachine(prof, l.startTLS, active, &s.opts)
	if err := send(l.d.greeting(prof, l.startTLS, active)); err != nil {
		return
	}
	// Most clients send a command or two before login, and many are
	// silent for long: the read buffer starts small (a goroutine holds it
	// while it waits) and grows once a read fills it.
	var buf []byte
	rbuf := make([]byte, 256)
	for {
		for len(buf) > 0 {
			confidential := m.Confidential()
			n, act := m.Next(buf)
			if n > 0 {
				l.traceClient(remote, buf[:n], confidential)
			}
			if len(act.Out) > 0 {
				l.traceProxy(remote, act.Out)
			}
			buf = buf[n:]
			if len(act.Out) > 0 {
				if err := send(act.Out); err != nil {
					return
				}
			}
			switch act.Kind {
			case protocol.Close:
				return
			case protocol.StartTLS:
				// Anything sent after the STARTTLS command came in plaintext
				// and could be injected: it is dropped (RFC 3207, RFC 2595).
				buf = buf[:0]
				if !handshake() {
					return
				}
				m.TLSStarted()
			case protocol.Login:
				clientCtx, hangUp := context.WithCancelCause(s.ctx)
				ctx, cancel := context.WithTimeout(clientCtx, s.opts.LoginTimeout)
				w := watchClient(c, s.opts.PendingLimit, len(buf) > 0, hangUp)
				res := s.runLogin(ctx, l, log, act, hostOf(remote))
				cancel()
				hangUp(nil)
				// The idle timeout runs again from this answer.
				buf = append(buf, w.stop(time.Now().Add(s.opts.IdleTimeout))...)
				if res.err != nil {
					if err := send(m.loginFailed(act.Tag, "emailproxy: "+res.err.Message, res.err.Temporary)); err != nil {
						return
					}
					continue
				}
				handedOff = true
				c.SetDeadline(time.Time{})
				s.startRelay(c, res, append([]byte(nil), buf...), log, opened)
				return
			}
			if act.Kind == protocol.NeedMore {
				break
			}
		}
		if len(buf) == 0 {
			// The idle timeout runs from the last whole command: bytes
			// trickled one at a time (slowloris) do not extend it.
			c.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		}
		n, err := c.Read(rbuf)
		if n > 0 {
			buf = append(buf, rbuf[:n]...)
		}
		if n == len(rbuf) && n < 4096 {
			rbuf = make([]byte, 4096) // a pipeline: fewer, larger reads
		}
		if err != nil && n == 0 {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				c.Write(l.d.idleBye) // best effort: the client is silent
				reason = "idle before login"
				telemetry.Ended("idle_before_login")
			}
			return
		}
	}
}

// clientWatch reads from a client whose login is slow (past watchAfter),
// as the event loop does for every login: a client that hangs up stops
// its login (its mailbox slot and upstream connection are not held until
// the login's timeout), and what it sends meanwhile is kept for after the
// login, up to the pending limit; past that it is not read (TCP
// backpressure). A client that ends its sending with commands after its
// login (a script piping them) is still served: only an end with nothing
// after the login, or a reset, counts as hanging up. A fast login is not
// watched: a reader woken and stopped for each would cost every session
// two goroutine wake-ups.
type clientWatch struct {
	c      net.Conn
	limit  int
	more   bool // the client sent something after its login command
	hangUp context.CancelCauseFunc
	timer  *time.Timer

	mu      sync.Mutex
	stopped bool          // the login is over: do not start
	done    chan struct{} // non-nil once started; closed when reading ends
	got     []byte        // owned by the reader until done is closed
}

// watchAfter is how long a login runs before its client is watched. The
// logins of clients that hung up pile up for this long: in the abuse
// scenario's hang-up storm (4,000 connections a second, logins queued
// for their mailboxes' slots) the proxy grew by 28 MB with 150 ms, 51 MB
// with 250 ms and 82 MB with 500 ms (300 MB, and out of file descriptors,
// when nothing watched). Logins faster than this (most, over a warm
// connection) pay nothing for the watch.
var watchAfter = 150 * time.Millisecond // a variable for tests

func watchClient(c net.Conn, limit int, more bool, hangUp context.CancelCauseFunc) *clientWatch {
	w := &clientWatch{c: c, limit: limit, more: more, hangUp: hangUp}
	w.timer = time.AfterFunc(watchAfter, w.read)
	return w
}

// read runs on the timer's goroutine.
func (w *clientWatch) read() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	w.done = make(chan struct{})
	defer close(w.done)
	w.c.SetReadDeadline(time.Time{}) // before stop can set its own
	w.mu.Unlock()
	var rbuf [512]byte
	for len(w.got) < w.limit {
		n, err := w.c.Read(rbuf[:])
		w.got = append(w.got, rbuf[:n]...)
		switch {
		case err == nil:
		case upstream.IsTimeout(err): // stop's doing
			return
		case errors.Is(err, io.EOF) && (w.more || len(w.got) > 0):
			return // the rest of its session is here: the login goes on
		default:
			w.hangUp(errClientGone)
			return
		}
	}
}

// stop ends the watch once the login is over, sets the client's read
// deadline to next, and returns what the client sent meanwhile. A read the
// watch left unfinished is resumed by the next one: an interrupted read of
// a TLS record keeps what it had.
func (w *clientWatch) stop(next time.Time) []byte {
	w.timer.Stop()
	w.mu.Lock()
	w.stopped = true
	done := w.done
	w.mu.Unlock()
	if done != nil {
		w.c.SetReadDeadline(time.Now())
		<-done
	}
	w.c.SetReadDeadline(next)
	return w.got
}

// readProxyHeader reads the PROXY protocol header a balancer sends before
// anything else (and before TLS) on a goroutine-served connection, within
// the dial timeout. It returns the connection to go on with (holding what
// came after the header) and the client's address.
func (s *Server) readProxyHeader(l *listener, raw net.Conn) (net.Conn, string, bool) {
	peer := raw.RemoteAddr().String() // from proxy_protocol_from: see accept
	raw.SetReadDeadline(time.Now().Add(s.opts.DialTimeout))
	defer raw.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 256)
	chunk := make([]byte, 256)
	for len(buf) <= proxyproto.MaxHeader {
		n, src, done, err := proxyproto.Parse(buf)
		if err != nil {
			break
		}
		if done {
			remote := peer
			if src.IsValid() {
				remote = src.String()
			}
			return &prefixConn{Conn: raw, pre: buf[n:]}, remote, true
		}
		m, rerr := raw.Read(chunk)
		buf = append(buf, chunk[:m]...)
		if rerr != nil && m == 0 {
			break
		}
	}
	l.log.Warn().Str("peer", peer).Msg("no valid PROXY protocol header; closing without a greeting")
	return raw, peer, false
}

// prefixConn is a connection whose first bytes were already read.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// oldTLSHint says what to do about a client that offered only TLS 1.0
// or 1.1 (PHP's c-client does on STARTTLS): crypto/tls's own words name
// the versions in hexadecimal.
func oldTLSHint(err error) string {
	if strings.Contains(err.Error(), "client offered only unsupported versions") {
		return " (the client offers only TLS versions older than this section takes, local_tls_min_version, default 1.2: " +
			"configure the client for TLS 1.2 or plaintext on a trusted network, or set local_tls_min_version = 1.0 for a legacy app that can do no better)"
	}
	return ""
}
