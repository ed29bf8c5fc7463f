package mock

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// Message is one seeded message.
type Message struct {
	UID  string
	Body []byte
}

// Options configure a mock provider.
type Options struct {
	ClientID, ClientSecret, Scope string
	// Mailboxes maps a mailbox address to its messages.
	Mailboxes map[string][]Message
	// CA signs the servers' certificates (default: a new one).
	CA *CA
	// RTT is added before every POP3 answer, like a distant provider
	// (0: none).
	RTT time.Duration
}

// Upstream is a running mock provider: token endpoint (plain HTTP on
// 127.0.0.1), TLS IMAP and TLS POP3 servers.
type Upstream struct {
	Authority *Authority
	CA        *CA
	TokenURL  string
	IMAPAddr  string
	POPAddr   string

	opts      Options
	httpSrv   *http.Server
	imapSrv   *imapserver.Server
	listeners []net.Listener
	wg        sync.WaitGroup

	mu           sync.Mutex
	mailboxes    map[string][]Message
	imapUsers    map[string]*imapmemserver.User
	xoauth2      []string
	logins       int
	rejectTokens bool
	conns        map[net.Conn]struct{}
	closed       bool
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
	}
	for addr, msgs := range opts.Mailboxes {
		up.mailboxes[addr] = append([]Message(nil), msgs...)
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

	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	up.listeners = append(up.listeners, httpLn)
	up.TokenURL = "http://" + httpLn.Addr().String() + "/oauth2/v2.0/token"
	mux := http.NewServeMux()
	mux.Handle("/oauth2/v2.0/token", up.Authority)
	up.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	up.goServe(func() { up.httpSrv.Serve(httpLn) })

	imapLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		up.Close()
		return nil, err
	}
	up.IMAPAddr = imapLn.Addr().String()
	up.imapSrv = newIMAPServer(up)
	tracked := &trackingListener{Listener: imapLn, up: up}
	up.goServe(func() { up.imapSrv.Serve(tls.NewListener(tracked, tlsCfg)) })

	popLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		up.Close()
		return nil, err
	}
	up.listeners = append(up.listeners, popLn)
	up.POPAddr = popLn.Addr().String()
	up.goServe(func() {
		ln := tls.NewListener(&trackingListener{Listener: popLn, up: up}, tlsCfg)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up.goServe(func() { up.servePOP3(c) })
		}
	})
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
	for c := range up.conns {
		c.Close()
	}
	up.mu.Unlock()
	if up.httpSrv != nil {
		up.httpSrv.Close()
	}
	if up.imapSrv != nil {
		up.imapSrv.Close()
	}
	for _, l := range up.listeners {
		l.Close()
	}
	up.wg.Wait()
	return nil
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

// SetRejectTokens makes the servers refuse every token.
func (up *Upstream) SetRejectTokens(r bool) { up.mu.Lock(); up.rejectTokens = r; up.mu.Unlock() }

// Mailbox returns the messages POP3 currently holds for addr.
func (up *Upstream) Mailbox(addr string) []Message {
	up.mu.Lock()
	defer up.mu.Unlock()
	return append([]Message(nil), up.mailboxes[addr]...)
}

func (up *Upstream) delayRTT() {
	if up.opts.RTT > 0 {
		time.Sleep(up.opts.RTT)
	}
}

// trackingListener remembers connections so Close can end them all.
type trackingListener struct {
	net.Listener
	up *Upstream
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, up: l.up}
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
	up   *Upstream
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.up.mu.Lock()
		delete(c.up.conns, c)
		c.up.mu.Unlock()
	})
	return c.Conn.Close()
}
