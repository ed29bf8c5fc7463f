package engine

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
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
// reads nothing (TCP backpressure), a write that makes no progress for
// SendTimeout fails, and the idle timeout runs from the last whole
// command.

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
		if raw, remote, ok = s.readProxyHeader(l, raw); !ok {
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
	// reads wait at most IdleTimeout; a login in flight reads nothing, so
	// TCP flow control bounds what the client can send meanwhile.
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
				ctx, cancel := context.WithTimeout(s.ctx, s.opts.LoginTimeout)
				res := s.runLogin(ctx, l, log, act, hostOf(remote))
				cancel()
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

// readProxyHeader reads the PROXY protocol header a balancer sends before
// anything else (and before TLS) on a goroutine-served connection, within
// the dial timeout. It returns the connection to go on with (holding what
// came after the header) and the client's address.
func (s *Server) readProxyHeader(l *listener, raw net.Conn) (net.Conn, string, bool) {
	peer := raw.RemoteAddr().String()
	if a, ok := raw.RemoteAddr().(*net.TCPAddr); !ok || !l.srv.ProxyAllowed(a.AddrPort().Addr()) {
		l.log.Warn().Str("peer", peer).Msg("PROXY protocol header refused: not from proxy_protocol_from; closing without a greeting")
		return raw, peer, false
	}
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
