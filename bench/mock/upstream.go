package mock

import (
	"bytes"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-smtp"
)

// Message is one seeded message.
type Message struct {
	UID  string
	Body []byte
	// stuffed is Body dot-stuffed for POP3, made once: a RETR of a large
	// message must not cost the mock a copy of it each time, or the mock,
	// not what is measured, sets the pace.
	stuffed []byte
}

// Options configure a mock provider.
type Options struct {
	ClientID, ClientSecret, Scope string
	// Mailboxes maps a mailbox address to its messages.
	Mailboxes map[string][]Message
	// CA signs the servers' certificates (default: a new one).
	CA *CA
	// SMTPOAuthBearerOnly makes the SMTP servers offer OAUTHBEARER and not
	// XOAUTH2.
	SMTPOAuthBearerOnly bool
	// RTT simulates a distant provider: the first write after a read (an
	// answer to a request, on every protocol, TLS handshake included) waits
	// this long; a connection's first write waits half of it more, for
	// the TCP handshake (0: none).
	RTT time.Duration
	// DropRate closes this fraction of accepted connections at once, at
	// random, like a provider shedding load (0: none).
	DropRate float64
	// PreAuthTimeout makes the POP3 servers say -ERR and close a
	// connection that has not authenticated for this long (0: never).
	PreAuthTimeout time.Duration
	// MailboxLimit refuses a mailbox's authenticated IMAP or POP3 session
	// beyond this many open at once, like Exchange Online's 16 (0: none).
	MailboxLimit int
	// ClassicalKeyExchange makes the servers' TLS choose classical key
	// exchanges only (X25519, P-256), as servers without post-quantum
	// support do (default: Go's, the X25519MLKEM768 hybrid first).
	ClassicalKeyExchange bool
	// QuitCloseDelay makes the POP3 servers keep a session, and its place
	// under MailboxLimit, this long after answering QUIT before closing
	// it, like a server that tears a session down after its goodbye
	// (0: none).
	QuitCloseDelay time.Duration
	// TokenLifetime is the token endpoint's expires_in (0: an hour).
	TokenLifetime time.Duration
	// OnMessage, if set, is called with each message the SMTP servers
	// accept (the demo prints it).
	OnMessage func(SMTPMessage)
}

// Upstream is a running mock provider on 127.0.0.1: a token endpoint
// (plain HTTP), and IMAP, POP3 and SMTP servers both with implicit TLS and
// with STARTTLS (STLS for POP3) that is required before authentication.
type Upstream struct {
	Authority     *Authority
	CA            *CA
	TokenURL      string
	AuthorizeURL  string // permission_url of the authorization_code flow
	DeviceCodeURL string // permission_url of the device flow
	IMAPAddr      string // implicit TLS, like port 993
	POPAddr       string // implicit TLS, like 995
	SMTPAddr      string // implicit TLS, like 465

	IMAPStartTLSAddr string // plaintext + STARTTLS, like 143
	POPStartTLSAddr  string // plaintext + STLS, like 110
	SMTPStartTLSAddr string // plaintext + STARTTLS, like 587

	opts      Options
	httpSrv   *http.Server
	imapSrv   *imapserver.Server
	imapSTLS  *imapserver.Server
	smtpSrv   *smtp.Server
	smtpSTLS  *smtp.Server
	listeners []net.Listener
	wg        sync.WaitGroup

	mu           sync.Mutex
	mailboxes    map[string][]Message
	imapUsers    map[string]*imapmemserver.User
	xoauth2      []string
	logins       int
	rejectTokens bool
	userFaults   map[string]Fault // by mailbox
	smtpMsgs     []SMTPMessage
	conns        map[net.Conn]struct{}
	closed       bool

	sessions      map[string]int // proto + user -> open authenticated sessions
	peak          map[string]int
	limitRefusals int

	popInitialResponses int
}

// Start runs a mock provider on 127.0.0.1 with fresh ports.
func Start(opts Options) (*Upstream, error) {
	ca := opts.CA
	if ca == nil {
		var err error
		if ca, err = NewCA("emailproxy mock CA"); err != nil {
			return nil, err
		}
	}
	leaf, err := ca.Leaf()
	if err != nil {
		return nil, err
	}
	up := &Upstream{
		Authority: NewAuthority(opts.ClientID, opts.ClientSecret, opts.Scope),
		CA:        ca, opts: opts,
		mailboxes: map[string][]Message{},
		imapUsers: map[string]*imapmemserver.User{},
		conns:     map[net.Conn]struct{}{},
		sessions:  map[string]int{},
		peak:      map[string]int{},
	}
	if opts.TokenLifetime > 0 {
		up.Authority.Lifetime = opts.TokenLifetime
	}
	for addr, msgs := range opts.Mailboxes {
		up.mailboxes[addr] = append([]Message(nil), msgs...)
		for i := range up.mailboxes[addr] {
			m := &up.mailboxes[addr][i]
			m.stuffed = DotStuff(m.Body)
		}
		u := imapmemserver.NewUser(addr, "")
		if err := u.Create("INBOX", nil); err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if _, err := u.Append("INBOX", literal{bytes.NewReader(m.Body), int64(len(m.Body))}, &imap.AppendOptions{}); err != nil {
				return nil, err
			}
		}
		up.imapUsers[addr] = u
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12}
	if opts.ClassicalKeyExchange {
		tlsCfg.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256}
	}

	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	up.listeners = append(up.listeners, httpLn)
	base := "http://" + httpLn.Addr().String() + "/oauth2/v2.0/"
	up.TokenURL, up.AuthorizeURL, up.DeviceCodeURL = base+"token", base+"authorize", base+"devicecode"
	mux := http.NewServeMux()
	mux.Handle("/oauth2/v2.0/token", up.Authority)
	mux.HandleFunc("/oauth2/v2.0/authorize", up.Authority.serveAuthorize)
	mux.HandleFunc("/oauth2/v2.0/devicecode", up.Authority.serveDeviceCode)
	up.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	up.goServe(func() { up.httpSrv.Serve(httpLn) })

	listen := func() (net.Listener, string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			up.Close()
			return nil, "", err
		}
		up.listeners = append(up.listeners, ln)
		return &trackingListener{Listener: ln, up: up}, ln.Addr().String(), nil
	}
	var ln net.Listener
	if ln, up.IMAPAddr, err = listen(); err != nil {
		return nil, err
	}
	up.imapSrv = newIMAPServer(up, nil)
	tlsLn := tls.NewListener(ln, tlsCfg)
	up.goServe(func() { up.imapSrv.Serve(tlsLn) })
	if ln, up.IMAPStartTLSAddr, err = listen(); err != nil {
		return nil, err
	}
	up.imapSTLS = newIMAPServer(up, tlsCfg)
	imapPlain := ln
	up.goServe(func() { up.imapSTLS.Serve(imapPlain) })

	for _, stls := range []bool{false, true} {
		var addr string
		if ln, addr, err = listen(); err != nil {
			return nil, err
		}
		popLn := ln
		if stls {
			up.POPStartTLSAddr = addr
		} else {
			up.POPAddr = addr
			popLn = tls.NewListener(ln, tlsCfg)
		}
		up.goServe(func() {
			for {
				c, err := popLn.Accept()
				if err != nil {
					return
				}
				up.goServe(func() { up.servePOP3(c, stls, tlsCfg) })
			}
		})
	}

	if ln, up.SMTPAddr, err = listen(); err != nil {
		return nil, err
	}
	up.smtpSrv = newSMTPServer(up)
	smtpTLS := tls.NewListener(ln, tlsCfg)
	up.goServe(func() { up.smtpSrv.Serve(smtpTLS) })
	if ln, up.SMTPStartTLSAddr, err = listen(); err != nil {
		return nil, err
	}
	up.smtpSTLS = newSMTPServer(up)
	up.smtpSTLS.TLSConfig = tlsCfg
	smtpPlain := ln
	up.goServe(func() { up.smtpSTLS.Serve(smtpPlain) })
	return up, nil
}

func (up *Upstream) goServe(f func()) {
	up.wg.Add(1)
	go func() { defer up.wg.Done(); f() }()
}

// Close stops every server and closes every connection.
func (up *Upstream) Close() error {
	up.Authority.Release()
	up.mu.Lock()
	up.closed = true
	up.mu.Unlock()
	up.DropConnections()
	if up.httpSrv != nil {
		up.httpSrv.Close()
	}
	for _, srv := range []*imapserver.Server{up.imapSrv, up.imapSTLS} {
		if srv != nil {
			srv.Close()
		}
	}
	for _, srv := range []*smtp.Server{up.smtpSrv, up.smtpSTLS} {
		if srv != nil {
			srv.Close()
		}
	}
	for _, l := range up.listeners {
		l.Close()
	}
	up.wg.Wait()
	return nil
}

// DropConnections closes every connection the servers hold, as a
// provider restart or a network fault would.
func (up *Upstream) DropConnections() {
	up.mu.Lock()
	conns := make([]net.Conn, 0, len(up.conns))
	for c := range up.conns {
		conns = append(conns, c)
	}
	up.mu.Unlock()
	for _, c := range conns { // outside the lock: Close takes it too
		c.Close()
	}
}

// POP3InitialResponses counts POP3 AUTH commands that carried their
// response on the same line.
func (up *Upstream) POP3InitialResponses() int {
	up.mu.Lock()
	defer up.mu.Unlock()
	return up.popInitialResponses
}

// XOAUTH2Received lists every decoded XOAUTH2 response the servers got.
func (up *Upstream) XOAUTH2Received() []string {
	up.mu.Lock()
	defer up.mu.Unlock()
	return append([]string(nil), up.xoauth2...)
}

// Logins counts successful XOAUTH2 authentications.
func (up *Upstream) Logins() int {
	up.mu.Lock()
	defer up.mu.Unlock()
	return up.logins
}

// Fault is what the servers do to one mailbox's logins.
type Fault int

const (
	NoFault     Fault = iota
	RefuseToken       // every token is refused
	ResetLogin        // POP3: the connection is reset when the token arrives (IMAP, SMTP: refused)
	StallLogin        // POP3: no answer to the token until the connection closes (IMAP, SMTP: refused)
)

// SetUserFault makes the servers treat user's logins with f.
func (up *Upstream) SetUserFault(user string, f Fault) {
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.userFaults == nil {
		up.userFaults = map[string]Fault{}
	}
	if f == NoFault {
		delete(up.userFaults, user)
		return
	}
	up.userFaults[user] = f
}

// OpenSessions counts the authenticated IMAP and POP3 sessions open now,
// over every mailbox.
func (up *Upstream) OpenSessions() int {
	up.mu.Lock()
	defer up.mu.Unlock()
	n := 0
	for _, v := range up.sessions {
		n += v
	}
	return n
}

// SetRejectTokens makes the servers refuse every token.
func (up *Upstream) SetRejectTokens(r bool) { up.mu.Lock(); up.rejectTokens = r; up.mu.Unlock() }

// Mailbox returns the messages POP3 currently holds for addr.
func (up *Upstream) Mailbox(addr string) []Message {
	up.mu.Lock()
	defer up.mu.Unlock()
	return append([]Message(nil), up.mailboxes[addr]...)
}

// trackingListener remembers connections so Close can end them all.
type trackingListener struct {
	net.Listener
	up *Upstream
}

// Accept waits and tries again while accepting fails for want of file
// descriptors (the demo shares the proxy's limit), as a real server
// does; it fails only once the listener is closed.
func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	for delay := 5 * time.Millisecond; err != nil; delay = min(2*delay, time.Second) {
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		time.Sleep(delay)
		c, err = l.Listener.Accept()
	}
	// The connection's first answer also carries half a round trip for
	// the TCP handshake (SYN / SYN-ACK); paid on the connection's own
	// goroutine, so that accepting never queues connections.
	tc := &trackedConn{Conn: c, up: l.up, connect: l.up.opts.RTT / 2}
	if l.up.opts.DropRate > 0 && rand.Float64() < l.up.opts.DropRate {
		c.Close() // the client sees the connection reset or closed
	}
	l.up.mu.Lock()
	if l.up.closed {
		l.up.mu.Unlock()
		c.Close()
		return nil, errors.New("closed")
	}
	l.up.conns[tc] = struct{}{}
	l.up.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	up      *Upstream
	once    sync.Once
	mu      sync.Mutex
	pending bool          // a read happened since the last write: the next write is an answer
	connect time.Duration // extra delay of the first write
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.up.opts.RTT > 0 {
		c.mu.Lock()
		c.pending = true
		c.mu.Unlock()
	}
	return n, err
}

// Write delays the first write after a read by one RTT.
func (c *trackedConn) Write(p []byte) (int, error) {
	if c.up.opts.RTT > 0 {
		c.mu.Lock()
		var wait time.Duration
		if c.pending {
			wait = c.up.opts.RTT
		}
		wait += c.connect
		c.pending, c.connect = false, 0
		c.mu.Unlock()
		if wait > 0 {
			time.Sleep(wait)
		}
	}
	return c.Conn.Write(p)
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.up.mu.Lock()
		delete(c.up.conns, c)
		c.up.mu.Unlock()
	})
	return c.Conn.Close()
}
