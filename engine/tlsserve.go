package engine

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol"
)

// gnet has no TLS, so listeners with a local certificate (implicit TLS, or
// STARTTLS / STLS offered) run on goroutines with crypto/tls. They drive the
// same protocol state machines as the event loop; plaintext listeners stay
// on gnet.

// certStore holds a listener's certificate; Reload swaps it without
// touching connections that already did their handshake.
type certStore struct {
	certPath, keyPath string
	cur               atomic.Pointer[tls.Certificate]
}

func (c *certStore) load() error {
	cert, err := tls.LoadX509KeyPair(c.certPath, c.keyPath)
	if err != nil {
		return fmt.Errorf("cannot load local_certificate_path %s / local_key_path %s: %w", c.certPath, c.keyPath, err)
	}
	c.cur.Store(&cert)
	return nil
}

func (c *certStore) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.cur.Load(), nil }

// setupTLS prepares a listener's local TLS; nothing to do for plaintext.
func (l *listener) setupTLS() error {
	if l.srv.LocalCertPath == "" || l.srv.LocalKeyPath == "" {
		return nil
	}
	l.certs = &certStore{certPath: l.srv.LocalCertPath, keyPath: l.srv.LocalKeyPath}
	if err := l.certs.load(); err != nil {
		return fmt.Errorf("[%s]: %w", l.srv.Section, err)
	}
	l.tlsCfg = &tls.Config{GetCertificate: l.certs.get, MinVersion: tls.VersionTLS12}
	l.startTLS = l.srv.LocalStartTLS
	return nil
}

// ReloadCertificates re-reads every local certificate and key (SIGHUP). A
// listener whose files fail to load keeps its current certificate.
func (s *Server) ReloadCertificates() error {
	var first error
	for _, l := range s.listeners {
		if l.certs == nil {
			continue
		}
		if err := l.certs.load(); err != nil {
			l.log.Error().Err(err).Msg("certificate reload failed; keeping the current certificate")
			if first == nil {
				first = err
			}
			continue
		}
		l.log.Info().Msg("certificate reloaded")
	}
	return first
}

func (s *Server) acceptTLS(l *listener, ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			l.log.Error().Err(err).Msg("accept failed")
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !s.track(c) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go s.serveTLSConn(l, c)
	}
}

// track remembers a pre-login connection so Stop can close it.
func (s *Server) track(c net.Conn) bool {
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	if s.ctx.Err() != nil {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.relayMu.Lock()
	delete(s.conns, c)
	s.relayMu.Unlock()
}

// serveTLSConn runs one client of a TLS-capable listener up to its login,
// then hands it to a relay.
func (s *Server) serveTLSConn(l *listener, raw net.Conn) {
	defer s.wg.Done()
	remote := raw.RemoteAddr().String()
	log := l.log.With().Str("client", remote).Logger()
	opened := time.Now()
	log.Info().Str("proto", string(l.srv.Protocol)).Bool("tls", !l.startTLS).Msg("connection opened")
	var c net.Conn = raw
	handedOff := false
	reason := "closed"
	defer func() {
		s.untrack(raw)
		if !handedOff {
			c.Close()
			log.Info().Str("reason", reason).Dur("duration", time.Since(opened)).Msg("connection closed")
		}
	}()
	handshake := func() bool {
		tc := tls.Server(c, l.tlsCfg)
		tc.SetDeadline(time.Now().Add(s.opts.DialTimeout))
		if err := tc.Handshake(); err != nil {
			reason = "TLS handshake failed: " + upstream.ShortNetErr(err)
			return false
		}
		tc.SetDeadline(time.Time{})
		c = tc
		return true
	}
	active := false
	if !l.startTLS {
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
		if isTimeout(err) {
			reason = "send timeout: the client stopped reading"
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
	buf := make([]byte, 0, 1024)
	rbuf := make([]byte, 4096)
	for {
		for len(buf) > 0 {
			n, act := m.Next(buf)
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
		if err != nil && n == 0 {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				c.Write(l.d.idleBye) // best effort: the client is silent
				reason = "idle before login"
			}
			return
		}
	}
}
