package engine

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/pop3"
)

// maxUpstreamLine bounds one line from the upstream server before login.
const maxUpstreamLine = 64 << 10

// upstreamConn is a TLS connection to the real server that has read its
// greeting (and capabilities) and is ready to authenticate.
type upstreamConn struct {
	conn *tls.Conn
	br   *bufio.Reader
	// greeting and caps as the server sent them.
	greeting []byte
	caps     []string
}

func (u *upstreamConn) Close() error { return u.conn.Close() }

// dialer opens upstream connections for one server section.
type dialer struct {
	srv     *config.Server
	tls     *tls.Config
	timeout time.Duration // dial + handshake + greeting
}

func newDialer(srv *config.Server, roots *x509.CertPool, timeout time.Duration) *dialer {
	return &dialer{
		srv: srv,
		tls: &tls.Config{
			ServerName:         srv.ServerAddress,
			RootCAs:            roots, // nil: system roots (SSL_CERT_FILE honoured)
			MinVersion:         tls.VersionTLS12,
			ClientSessionCache: tls.NewLRUClientSessionCache(64),
		},
		timeout: timeout,
	}
}

// upstreamError describes a failure to reach the upstream server in terms
// an operator can act on.
type upstreamError struct {
	msg   string
	cause error
}

func (e *upstreamError) Error() string { return e.msg }
func (e *upstreamError) Unwrap() error { return e.cause }

// dial connects, does the TLS handshake (certificate and host name checked
// against server_address) and reads the greeting and capabilities.
func (d *dialer) dial(ctx context.Context) (*upstreamConn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	addr := d.srv.UpstreamAddr()
	nd := &net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &upstreamError{fmt.Sprintf("cannot connect to %s: %s", addr, shortNetErr(err)), err}
	}
	conn := tls.Client(raw, d.tls)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return nil, &upstreamError{fmt.Sprintf("TLS certificate of %s is not trusted: %v", addr, verr.Err), err}
		}
		return nil, &upstreamError{fmt.Sprintf("TLS handshake with %s failed: %s", addr, shortNetErr(err)), err}
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	u := &upstreamConn{conn: conn, br: bufio.NewReaderSize(conn, 4096)}
	if err := u.readGreeting(d.srv.Protocol); err != nil {
		conn.Close()
		return nil, &upstreamError{fmt.Sprintf("%s did not greet as an %s server: %s", addr, d.srv.Protocol, shortNetErr(err)), err}
	}
	conn.SetDeadline(time.Time{})
	return u, nil
}

func shortNetErr(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out"
	}
	return err.Error()
}

// readLine returns one line without CRLF; the slice is only valid until the
// next read.
func (u *upstreamConn) readLine() ([]byte, error) {
	line, err := u.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// A long line: gather it, up to the limit.
		buf := append([]byte{}, line...)
		for err == bufio.ErrBufferFull && len(buf) < maxUpstreamLine {
			line, err = u.br.ReadSlice('\n')
			buf = append(buf, line...)
		}
		if err == bufio.ErrBufferFull {
			return nil, errors.New("upstream line too long")
		}
		line = buf
	}
	if err != nil {
		return nil, err
	}
	return trimCRLF(line), nil
}

func trimCRLF(b []byte) []byte {
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b
}

func (u *upstreamConn) readGreeting(proto config.Protocol) error {
	line, err := u.readLine()
	if err != nil {
		return err
	}
	u.greeting = append([]byte{}, line...)
	switch proto {
	case config.IMAP:
		st, _, _ := imap.ParseResponse(line)
		if st != imap.Untagged || !strings.HasPrefix(strings.ToUpper(string(line)), "* OK") {
			return fmt.Errorf("unexpected greeting %q", truncate(line))
		}
		if caps, ok := imap.GreetingCapabilities(line); ok {
			u.caps = caps
			return nil
		}
		return u.imapCapability()
	case config.POP:
		if !strings.HasPrefix(string(line), "+OK") {
			return fmt.Errorf("unexpected greeting %q", truncate(line))
		}
		return u.popCapa()
	}
	return fmt.Errorf("protocol %s is not supported", proto)
}

func (u *upstreamConn) imapCapability() error {
	if _, err := u.conn.Write([]byte("C0 CAPABILITY\r\n")); err != nil {
		return err
	}
	for {
		line, err := u.readLine()
		if err != nil {
			return err
		}
		if caps, ok := imap.ParseCapabilityLine(line); ok {
			u.caps = caps
			continue
		}
		if st, tag, _ := imap.ParseResponse(line); string(tag) == "C0" {
			if st != imap.OK {
				return fmt.Errorf("CAPABILITY failed: %q", truncate(line))
			}
			return nil
		}
	}
}

// popCapa reads CAPA; a server without CAPA leaves caps empty.
func (u *upstreamConn) popCapa() error {
	if _, err := u.conn.Write([]byte("CAPA\r\n")); err != nil {
		return err
	}
	line, err := u.readLine()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(line), "+OK") {
		return nil
	}
	for {
		line, err := u.readLine()
		if err != nil {
			return err
		}
		if string(line) == "." {
			return nil
		}
		u.caps = append(u.caps, string(line))
	}
}

func truncate(b []byte) string {
	if len(b) > 120 {
		b = b[:120]
	}
	return string(b)
}

// profile is what clients are shown before login: the upstream's greeting
// and capabilities, rewritten for the proxy.
type profile struct {
	greeting []byte // sent on connect
	caps     []byte // IMAP: "* CAPABILITY ...\r\n"; POP3: the full CAPA response
	saslIR   bool   // IMAP upstream accepts an initial response
}

func profileOf(proto config.Protocol, u *upstreamConn) *profile {
	switch proto {
	case config.IMAP:
		caps := imap.ProxyCapabilities(u.caps)
		return &profile{
			greeting: imap.ProxyGreeting(u.greeting, caps),
			caps:     imap.CapabilityLine(caps),
			saslIR:   imap.HasCapability(u.caps, "SASL-IR"),
		}
	default:
		return &profile{
			greeting: pop3.ProxyGreeting(u.greeting),
			caps:     pop3.CapaResponse(pop3.ProxyCapa(u.caps)),
		}
	}
}
