package engine

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

const (
	testAccount  = "app@yourdomain.com"
	testClientID = "client-XXXXX"
	testSecret   = "client-secret-YYYYY-do-not-log"
	testScope    = "https://outlook.office365.com/.default"
)

type proxyEnv struct {
	t        *testing.T
	up       *mock.Upstream
	provider *auth.Provider
	srv      *Server
	imapAddr string
	popAddr  string
	logs     *syncbuf.Buffer
	cfg      *config.Config
	addrs    map[string]string
}

type envOptions struct {
	mailboxes   map[string][]mock.Message
	extraConfig string
	tokenURL    string // override (e.g. a dead endpoint)
	imapServer  string // override upstream host:port
	popServer   string
	tokenTO     time.Duration
	engine      Options
	noCA        bool          // do not trust the mock CA
	ca          *mock.CA      // sign the mock's certificates with this CA
	oauthBearer bool          // mock SMTP offers OAUTHBEARER only
	mailboxCap  int           // the mock refuses sessions of a mailbox beyond this many
	quitDelay   time.Duration // the mock's POP3 sessions end this long after their QUIT is answered
	preAuthTO   time.Duration
	tokenLife   time.Duration // the mock's token lifetime (0: an hour)
	store       auth.Store    // the token cache (default: in memory)
	// servers are extra server sections, by name; each gets a free local
	// port, reachable as env.addrs[name].
	servers []serverSpec
}

// serverSpec is one extra server section.
type serverSpec struct {
	name     string                         // key in env.addrs
	proto    string                         // IMAP, POP or SMTP
	upstream func(up *mock.Upstream) string // host:port
	keys     string                         // more "key = value" lines
}

var (
	portsMu sync.Mutex
	given   = map[int]bool{}
)

// freePort finds a port on 127.0.0.1 that is free right now and was not
// handed out before in this process (the kernel may offer a just-closed
// port again).
func freePort(t *testing.T) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !given[port] {
			given[port] = true
			return port
		}
	}
}

// startEnv runs a mock provider and the proxy in front of it, configured
// with the Exchange Online client_credentials file (addresses
// pointed at the mock).
func startEnv(t *testing.T, o envOptions) *proxyEnv {
	t.Helper()
	if o.mailboxes == nil {
		o.mailboxes = map[string][]mock.Message{testAccount: {{UID: "u1", Body: []byte("Subject: hi\r\n\r\nhello\r\n")}}}
	}
	up, err := mock.Start(mock.Options{ClientID: testClientID, ClientSecret: testSecret, Scope: testScope, Mailboxes: o.mailboxes, CA: o.ca, SMTPOAuthBearerOnly: o.oauthBearer, MailboxLimit: o.mailboxCap, PreAuthTimeout: o.preAuthTO, QuitCloseDelay: o.quitDelay, TokenLifetime: o.tokenLife})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	tokenURL := up.TokenURL
	if o.tokenURL != "" {
		tokenURL = o.tokenURL
	}
	imapUp, popUp := up.IMAPAddr, up.POPAddr
	if o.imapServer != "" {
		imapUp = o.imapServer
	}
	if o.popServer != "" {
		popUp = o.popServer
	}
	ih, ip, _ := net.SplitHostPort(imapUp)
	ph, pp, _ := net.SplitHostPort(popUp)
	imapPort, popPort := freePort(t), freePort(t)
	addrs := map[string]string{}
	var extra strings.Builder
	for _, sp := range o.servers {
		port := freePort(t)
		addrs[sp.name] = fmt.Sprintf("127.0.0.1:%d", port)
		h, p, _ := net.SplitHostPort(sp.upstream(up))
		fmt.Fprintf(&extra, "[%s-%d]\nserver_address = %s\nserver_port = %s\nlocal_address = 127.0.0.1\n%s\n\n", sp.proto, port, h, p, sp.keys)
	}
	text := extra.String() + fmt.Sprintf(`[Email OAuth 2.0 Proxy configuration file]

[Server setup]

[POP-%d]
server_address = %s
server_port = %s
local_address = 127.0.0.1

[IMAP-%d]
server_address = %s
server_port = %s
local_address = 127.0.0.1

[%s]
documentation = *** note: this is an advanced O365 account example; in most cases you want the version above instead ***
token_url = %s
oauth2_scope = %s
oauth2_flow = client_credentials
redirect_uri = http://localhost
client_id = %s
client_secret = %s

[Advanced proxy configuration]

[emailproxy]
delete_account_token_on_password_error = True
encrypt_client_secret_on_first_use = False
%s`, popPort, ph, pp, imapPort, ih, ip, testAccount, tokenURL, testScope, testClientID, testSecret, strings.ReplaceAll(o.extraConfig, "{TOKEN}", tokenURL))
	cfg := writeConfig(t, filepath.Join(t.TempDir(), "emailproxy.config"), text)
	logs := &syncbuf.Buffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	provider := auth.NewProvider(cfg, auth.Options{TokenTimeout: o.tokenTO, Logger: log, MaxBackoff: 200 * time.Millisecond,
		Store: o.store, Iterations: 1000})
	provider.Start()
	t.Cleanup(provider.Close)
	eo := o.engine
	eo.Logger = log
	if !o.noCA {
		eo.RootCAs = up.CA.Pool
	}
	if eo.EventLoops == 0 {
		eo.EventLoops = 2
	}
	srv := startServer(t, cfg, provider, eo)
	return &proxyEnv{t: t, up: up, provider: provider, srv: srv, logs: logs, cfg: cfg, addrs: addrs,
		imapAddr: fmt.Sprintf("127.0.0.1:%d", imapPort), popAddr: fmt.Sprintf("127.0.0.1:%d", popPort)}
}

// reloadWith writes text as the proxy's config file and reloads it, as
// SIGHUP does; it returns the configuration loaded.
func (e *proxyEnv) reloadWith(text string) *config.Config {
	e.t.Helper()
	cfg := writeConfig(e.t, e.cfg.Path, text)
	if err := e.srv.Reload(cfg); err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

// writeConfig writes text as the configuration file at path and loads it.
func writeConfig(t *testing.T, path, text string) *config.Config {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startServer starts the proxy with cfg, provider and opts, and stops it
// when the test ends.
func startServer(t *testing.T, cfg *config.Config, provider *auth.Provider, opts Options) *Server {
	t.Helper()
	srv := New(cfg, provider, opts)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Stop(ctx)
	})
	return srv
}

// rawConn is a line-level client for exact protocol checks.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bytes.Buffer
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: &bytes.Buffer{}}
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	if _, err := r.c.Write([]byte(s)); err != nil {
		r.t.Fatal(err)
	}
}

// line reads one CRLF line.
func (r *rawConn) line() string {
	r.t.Helper()
	for {
		if i := bytes.Index(r.r.Bytes(), []byte("\r\n")); i >= 0 {
			l := string(r.r.Next(i + 2))
			return strings.TrimSuffix(l, "\r\n")
		}
		buf := make([]byte, 64<<10)
		n, err := r.c.Read(buf)
		r.r.Write(buf[:n])
		if err != nil {
			if r.r.Len() > 0 {
				continue
			}
			r.t.Fatalf("read: %v", err)
		}
	}
}

// until reads lines until one starts with prefix, returning them all.
func (r *rawConn) until(prefix string) []string {
	r.t.Helper()
	var lines []string
	for {
		l := r.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, prefix) {
			return lines
		}
	}
}

// expectEOF checks that the proxy closed the connection.
func (r *rawConn) expectEOF() {
	r.t.Helper()
	buf := make([]byte, 1024)
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := r.c.Read(buf)
	if err == nil {
		r.t.Fatalf("expected close, got %q", buf[:n])
	}
}

// acceptEach runs handle on its own goroutine for each connection ln
// accepts, until the test ends: ln is closed then, and the handlers are
// waited for.
func acceptEach(t *testing.T, ln net.Listener, handle func(c net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
			}()
		}
	}()
}
