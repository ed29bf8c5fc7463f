package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// maxUpstreamLine bounds one line from the upstream server before login.
const maxUpstreamLine = 64 << 10

// Conn is a TLS connection to the real server that has read its
// greeting (and capabilities) and is ready to authenticate.
type Conn struct {
	TLS *tls.Conn
	br  *bufio.Reader
	// greeting and caps as the server sent them.
	Greeting []byte
	Caps     []string
	// release gives back the mailbox slot an authenticated session holds.
	release func()
	// trace, if set, sees every line of the exchange before the relay
	// (dir "proxy->server" or "server->proxy"), secrets already redacted.
	trace     func(dir, line string)
	closeOnce sync.Once
	// known, if set before the greeting, are the capabilities to take
	// instead of asking the server; asked: the greeting asked for them.
	known *listed
	asked bool
}

// capsKnown takes the capabilities the dialer remembered, if any: true
// when there is no need to ask.
func (u *Conn) capsKnown() bool {
	if u.known == nil {
		return false
	}
	u.Caps = u.known.caps
	return true
}

// TakeReader hands over the login's buffered reader: the relay drains
// it once and then reads the TLS connection directly, so an idle
// session does not keep the reader's buffer.
func (u *Conn) TakeReader() *bufio.Reader {
	br := u.br
	u.br = nil
	return br
}

// Socket is the TCP socket under the TLS connection, for waiting until
// it is readable: a read of TLS that timed out has left nothing unread
// above it (nil where it cannot be waited on).
func (u *Conn) Socket() syscall.RawConn {
	rc, ok := u.TLS.NetConn().(*recordConn)
	if !ok {
		return nil
	}
	sc, ok := rc.Conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// Close closes the connection and gives back its mailbox slot.
func (u *Conn) Close() error {
	var err error
	u.closeOnce.Do(func() {
		err = u.TLS.Close()
		if u.release != nil {
			u.release()
		}
	})
	return err
}

// Dialer opens upstream connections for one server section.
type Dialer struct {
	// Trace, if set, is given to every connection (see Conn.trace).
	Trace   func(dir, line string)
	srv     *config.Server
	tls     *tls.Config
	timeout time.Duration // dial + handshake + greeting
	// TLS handshakes completed, and how many of them resumed a session
	// (no certificate sent or verified).
	handshakes, resumed atomic.Int64
	// learned is d.tls without the post-quantum hybrids, once the server
	// chose a classical key exchange over them (see learnGroup); nil: none.
	learned   atomic.Pointer[tls.Config]
	learnedAt atomic.Int64 // UnixNano
	// lastAddr is the address the last dial by name reached (see connect).
	lastAddr atomic.Pointer[reached]
	// caps are the capabilities the server listed when last asked (see
	// capsFor).
	caps atomic.Pointer[listed]
}

// capsFor is how long the capabilities a server listed are taken for
// its next connections instead of asking each (POP3 CAPA; IMAP
// CAPABILITY where the greeting carries none): the warm pool opens a
// connection per session, and the answer is the same each time. The
// section's client-facing profile is learned once anyway; what each
// connection uses them for (IMAP SASL-IR, UNSELECT for session reuse)
// follows a server's change within this long.
const capsFor = 10 * time.Minute

// listed is a server's capability list and when it was read.
type listed struct {
	caps []string
	at   time.Time
}

// relearnAfter is how long the hybrids stay off before they are offered
// again (the server may have gained one).
const relearnAfter = time.Hour

// config is the TLS configuration for the next dial.
func (d *Dialer) config() *tls.Config {
	if c := d.learned.Load(); c != nil && time.Since(time.Unix(0, d.learnedAt.Load())) < relearnAfter {
		return c
	}
	return d.tls
}

// learnGroup stops offering the post-quantum hybrids to a server that
// chose a classical key exchange (X25519, P-256...) when offered them. Go
// offers X25519MLKEM768 by default, which costs every handshake an ML-KEM
// key generation, about a tenth of the proxy's CPU per session, even with
// a server that never picks it. The server's choice is covered by the
// handshake's transcript, so nobody between can steer it; every hour the
// full list is offered again, in case the server has gained a hybrid, and
// a server that picks one keeps being offered them.
func (d *Dialer) learnGroup(group tls.CurveID) {
	switch group {
	case 0, tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024:
		d.learned.Store(nil) // a hybrid (or unknown): the full list
		return
	}
	if d.learned.Load() != nil && time.Since(time.Unix(0, d.learnedAt.Load())) < relearnAfter {
		return
	}
	c := d.tls.Clone()
	// Every classical group (Go ignores the order): a server that has
	// changed to another answers with a HelloRetryRequest, and the
	// handshake still succeeds.
	c.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}
	d.learnedAt.Store(time.Now().UnixNano())
	d.learned.Store(c)
}

// lastAddrFor is how long the address a dial reached is dialled again
// directly, without asking DNS: a fleet opens an upstream connection per
// session, and a lookup each (a query to the resolver, and on Linux the
// files of nsswitch read) is CPU and latency for the same answer.
const lastAddrFor = 30 * time.Second

// connect dials addr: the address the last dial reached if it was
// reached less than lastAddrFor ago, else by name (DNS, both address
// families raced). A direct dial that fails falls back to the name.
func (d *Dialer) connect(ctx context.Context, addr string) (net.Conn, error) {
	nd := &net.Dialer{KeepAlive: 30 * time.Second}
	if last := d.lastAddr.Load(); last != nil && time.Since(last.at) < lastAddrFor {
		// At most half the time left, so that a silent address leaves the
		// dial by name time to work.
		direct, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok {
			direct, cancel = context.WithTimeout(ctx, time.Until(dl)/2)
		}
		c, err := nd.DialContext(direct, "tcp", last.addr)
		cancel()
		if err == nil {
			return c, nil
		}
		d.lastAddr.CompareAndSwap(last, nil)
	}
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err == nil {
		d.lastAddr.Store(&reached{addr: c.RemoteAddr().String(), at: time.Now()})
	}
	return c, err
}

// reached is an address a dial connected to, and when.
type reached struct {
	addr string
	at   time.Time
}

// Handshakes reports the TLS handshakes completed and how many resumed a
// session.
func (d *Dialer) Handshakes() (total, resumed int64) { return d.handshakes.Load(), d.resumed.Load() }

func NewDialer(srv *config.Server, roots *x509.CertPool, timeout time.Duration) *Dialer {
	return &Dialer{
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

// Error describes a failure to reach the upstream server in terms
// an operator can act on.
type Error struct {
	msg   string
	cause error
}

func (e *Error) Error() string { return e.msg }
func (e *Error) Unwrap() error { return e.cause }

// Dial connects, gets to TLS (implicit, or STARTTLS when server_starttls
// is set: no credential ever crosses a connection that is not yet TLS),
// checks the certificate and host name against server_address, and reads
// the greeting and capabilities (SMTP: the EHLO reply after TLS).
func (d *Dialer) Dial(ctx context.Context) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	addr := d.srv.UpstreamAddr()
	raw, err := d.connect(ctx, addr)
	if err != nil {
		return nil, &Error{fmt.Sprintf("cannot connect to %s: %s", addr, ShortNetErr(err)), err}
	}
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	u := &Conn{br: bufio.NewReaderSize(raw, 4096), trace: d.Trace}
	if d.srv.ServerStartTLS {
		if err := u.startTLS(dialectOf(d.srv.Protocol), raw); err != nil {
			raw.Close()
			return nil, &Error{fmt.Sprintf("STARTTLS with %s failed: %s", addr, ShortNetErr(err)), err}
		}
	}
	conn := tls.Client(newRecordConn(raw), d.config())
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return nil, &Error{fmt.Sprintf("TLS certificate of %s is not trusted: %v", addr, verr.Err), err}
		}
		return nil, &Error{fmt.Sprintf("TLS handshake with %s failed: %s", addr, ShortNetErr(err)), err}
	}
	d.handshakes.Add(1)
	state := conn.ConnectionState()
	if state.DidResume {
		d.resumed.Add(1)
	}
	d.learnGroup(state.CurveID)
	u.TLS = conn
	u.br.Reset(conn)
	if k := d.caps.Load(); k != nil && time.Since(k.at) < capsFor {
		u.known = k
	}
	if err := dialectOf(d.srv.Protocol).greet(u, d.srv.ServerStartTLS); err != nil {
		conn.Close()
		server := "an " + string(d.srv.Protocol) // an IMAP, an SMTP
		if d.srv.Protocol == config.POP {
			server = "a POP3"
		}
		return nil, &Error{fmt.Sprintf("%s did not greet as %s server: %s", addr, server, ShortNetErr(err)), err}
	}
	if u.asked {
		d.caps.Store(&listed{caps: u.Caps, at: time.Now()})
	}
	u.known = nil
	conn.SetDeadline(time.Time{})
	return u, nil
}

// startTLS runs the plaintext part of a STARTTLS upstream: greeting, the
// protocol's upgrade command and its positive answer. Nothing else is sent.
func (u *Conn) startTLS(d dialect, raw net.Conn) error {
	line, err := u.readLine()
	if err != nil {
		return err
	}
	u.Greeting = append([]byte{}, line...)
	if err := d.upgrade(u, raw, line); err != nil {
		return err
	}
	if u.br.Buffered() > 0 {
		// Bytes after the upgrade answer could be injected plaintext.
		return errors.New("data after the STARTTLS answer")
	}
	return nil
}

// ShortNetErr says what went wrong with a connection in a few words
// (the system's reason, or "timed out").
func ShortNetErr(err error) string {
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
func (u *Conn) readLine() ([]byte, error) {
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
	line = trimCRLF(line)
	if u.trace != nil {
		u.trace("server->proxy", string(line))
	}
	return line, nil
}

// send writes b to w (the TLS connection, or the socket before STARTTLS)
// and traces it; a secret from byte secretAt on (-1: none) is redacted in
// the trace.
func (u *Conn) send(w io.Writer, b []byte, secretAt int) error {
	_, err := w.Write(b)
	if u.trace != nil {
		line := string(trimCRLFString(b))
		if secretAt >= 0 && secretAt <= len(line) {
			line = line[:secretAt] + "[redacted]"
		}
		u.trace("proxy->server", line)
	}
	return err
}

func trimCRLFString(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func trimCRLF(b []byte) []byte {
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return b
}

func truncate(b []byte) string {
	if len(b) > 120 {
		b = b[:120]
	}
	return string(b)
}
