package engine

// Local TLS: listeners with local_certificate_path and local_key_path,
// served by the goroutine front end (goroutines.go).

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
)

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
	oldest := l.srv.LocalTLSMin
	if oldest == 0 {
		oldest = tls.VersionTLS12
	}
	l.tlsCfg = &tls.Config{GetCertificate: l.certs.get, MinVersion: oldest}
	if oldest < tls.VersionTLS12 {
		l.log.Warn().Str("local_tls_min_version", tls.VersionName(oldest)).
			Msg("clients may use TLS older than 1.2 on this section: for legacy apps on this machine or a trusted network only")
	}
	l.startTLS = l.srv.LocalStartTLS
	return nil
}

// ReloadCertificates re-reads every local certificate and key (SIGHUP). A
// listener whose files fail to load keeps its current certificate.
func (s *Server) ReloadCertificates() error {
	var first error
	for _, l := range s.listenerList() {
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
