package engine

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/engine/upstream"
)

// proxyCert writes a certificate for the proxy's own listeners, signed by
// a CA the clients trust.
type proxyCert struct {
	ca                *mock.CA
	certPath, keyPath string
}

func newProxyCert(t *testing.T) *proxyCert {
	t.Helper()
	ca, err := mock.NewCA("proxy test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pc := &proxyCert{ca: ca, certPath: filepath.Join(dir, "cert.pem"), keyPath: filepath.Join(dir, "key.pem")}
	pc.rotate(t)
	return pc
}

// rotate writes a new certificate and key to the same files.
func (pc *proxyCert) rotate(t *testing.T) {
	cert, key, err := pc.ca.LeafPEM()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pc.certPath, cert, 0o600)
	os.WriteFile(pc.keyPath, key, 0o600)
}

func (pc *proxyCert) keys(starttls bool) string {
	s := "local_certificate_path = " + pc.certPath + "\nlocal_key_path = " + pc.keyPath
	if starttls {
		s += "\nlocal_starttls = True"
	}
	return s
}

func (pc *proxyCert) client() *tls.Config {
	return &tls.Config{RootCAs: pc.ca.Pool, ServerName: "localhost"}
}

func tlsServers(pc *proxyCert) []serverSpec {
	imapUp := func(up *mock.Upstream) string { return up.IMAPAddr }
	popUp := func(up *mock.Upstream) string { return up.POPAddr }
	smtpUp := func(up *mock.Upstream) string { return up.SMTPAddr }
	return []serverSpec{
		{name: "imaps", proto: "IMAP", upstream: imapUp, keys: pc.keys(false)},
		{name: "imap-starttls", proto: "IMAP", upstream: imapUp, keys: pc.keys(true)},
		{name: "pop3s", proto: "POP", upstream: popUp, keys: pc.keys(false)},
		{name: "pop3-stls", proto: "POP", upstream: popUp, keys: pc.keys(true)},
		{name: "smtps", proto: "SMTP", upstream: smtpUp, keys: pc.keys(false)},
		{name: "smtp-starttls", proto: "SMTP", upstream: smtpUp, keys: pc.keys(true)},
		// Upstream STARTTLS for IMAP and POP3, which emailproxy.py cannot do.
		{name: "imap-up-starttls", proto: "IMAP", upstream: func(up *mock.Upstream) string { return up.IMAPStartTLSAddr }, keys: "server_starttls = True"},
		{name: "pop-up-stls", proto: "POP", upstream: func(up *mock.Upstream) string { return up.POPStartTLSAddr }, keys: "server_starttls = True"},
	}
}

func TestLocalTLSIMAP(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{servers: tlsServers(pc)})

	c, err := imapclient.DialTLS(env.addrs["imaps"], &imapclient.Options{TLSConfig: pc.client()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(testAccount, testPassword).Wait(); err != nil {
		t.Fatalf("implicit TLS login: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	c.Close()

	// Plaintext LOGIN on the STARTTLS listener is refused.
	r := dialRaw(t, env.addrs["imap-starttls"])
	if g := r.line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting %q", g)
	}
	r.send("a CAPABILITY\r\nb LOGIN " + testAccount + " pw\r\n")
	if l := r.line(); !strings.Contains(l, "STARTTLS") || !strings.Contains(l, "LOGINDISABLED") || strings.Contains(l, "AUTH=PLAIN") {
		t.Fatalf("pre-TLS capabilities %q", l)
	}
	r.line()
	if l := r.line(); !strings.HasPrefix(l, "b NO [PRIVACYREQUIRED]") {
		t.Fatalf("plaintext login %q", l)
	}

	c, err = imapclient.DialStartTLS(env.addrs["imap-starttls"], &imapclient.Options{TLSConfig: pc.client()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testAccount, testPassword).Wait(); err != nil {
		t.Fatalf("STARTTLS login: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	// A client that does not trust the proxy's certificate fails its handshake.
	if _, err := tls.Dial("tcp", env.addrs["imaps"], &tls.Config{ServerName: "localhost", RootCAs: x509.NewCertPool()}); err == nil {
		t.Fatal("handshake succeeded with an untrusted certificate")
	}
}

func TestLocalTLSPOP3(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{servers: tlsServers(pc)})

	tc, err := tls.Dial("tcp", env.addrs["pop3s"], pc.client())
	if err != nil {
		t.Fatal(err)
	}
	p := popOver(t, tc)
	p.ok("USER %s", testAccount)
	p.ok("PASS %s", testPassword)
	p.ok("STAT")
	p.ok("QUIT")

	raw, err := net.Dial("tcp", env.addrs["pop3-stls"])
	if err != nil {
		t.Fatal(err)
	}
	p = popOver(t, raw)
	if s := p.cmd("USER %s", testAccount); s != "-ERR Use STLS first" {
		t.Fatalf("plaintext USER %q", s)
	}
	p.ok("CAPA")
	if l := string(p.multi()); !strings.Contains(l, "STLS\r\n") || strings.Contains(l, "USER") {
		t.Fatalf("pre-TLS CAPA %q", l)
	}
	p.ok("STLS")
	tc = tls.Client(raw, pc.client())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	p = &popClient{t: t, c: tc, br: bufio.NewReader(tc)}
	p.ok("USER %s", testAccount)
	p.ok("PASS %s", testPassword)
	if s := p.ok("STAT"); !strings.HasPrefix(s, "+OK 1 ") {
		t.Fatalf("STAT %q", s)
	}
}

func TestLocalTLSSMTP(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{servers: tlsServers(pc)})
	send := func(c *smtp.Client, host string) {
		t.Helper()
		if err := c.Auth(smtp.PlainAuth("", testAccount, testPassword, host)); err != nil {
			t.Fatalf("auth: %v", err)
		}
		if err := c.Mail(testAccount); err != nil {
			t.Fatal(err)
		}
		c.Rcpt("x@example.net")
		w, _ := c.Data()
		w.Write([]byte("Subject: tls\r\n\r\nhi\r\n"))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		c.Quit()
	}
	tc, err := tls.Dial("tcp", env.addrs["smtps"], pc.client())
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClient(tc, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	send(c, "localhost")

	// Plaintext AUTH on the STARTTLS listener is refused.
	r := dialRaw(t, env.addrs["smtp-starttls"])
	r.line()
	r.send("EHLO c\r\nAUTH PLAIN AGFAYgBj\r\n")
	lines := r.until("530")
	if lines[len(lines)-1] != "530 5.7.0 Must issue a STARTTLS command first" {
		t.Fatalf("%q", lines)
	}
	for _, l := range lines {
		if strings.Contains(l, "AUTH") {
			t.Fatalf("AUTH advertised before TLS: %q", lines)
		}
	}

	c, err = smtp.Dial(env.addrs["smtp-starttls"])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(pc.client()); err != nil {
		t.Fatal(err)
	}
	send(c, "127.0.0.1")
	if n := len(env.up.SMTPMessages()); n != 2 {
		t.Fatalf("messages upstream %d", n)
	}
}

func TestUpstreamSTARTTLS(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{servers: tlsServers(pc)})
	c, err := imapclient.DialInsecure(env.addrs["imap-up-starttls"], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(testAccount, testPassword).Wait(); err != nil {
		t.Fatalf("IMAP via upstream STARTTLS: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	p := dialPOP(t, env.addrs["pop-up-stls"])
	p.ok("USER %s", testAccount)
	p.ok("PASS %s", testPassword)
	p.ok("STAT")
}

// SIGHUP's certificate reload: new connections get the new certificate,
// an authenticated session keeps going.
func TestCertificateReload(t *testing.T) {
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{servers: tlsServers(pc)})
	serial := func() string {
		tc, err := tls.Dial("tcp", env.addrs["pop3s"], pc.client())
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		return tc.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	tc, err := tls.Dial("tcp", env.addrs["pop3s"], pc.client())
	if err != nil {
		t.Fatal(err)
	}
	p := popOver(t, tc)
	p.ok("USER %s", testAccount)
	p.ok("PASS %s", testPassword)

	time.Sleep(2 * time.Millisecond) // serials are timestamps
	pc.rotate(t)
	if err := env.srv.ReloadCertificates(); err != nil {
		t.Fatal(err)
	}
	if second := serial(); second == first {
		t.Fatal("certificate not reloaded")
	}
	p.ok("STAT") // the old session is untouched
	os.WriteFile(pc.keyPath, []byte("garbage"), 0o600)
	if err := env.srv.ReloadCertificates(); err == nil {
		t.Fatal("a bad key file was accepted")
	}
	serial() // still served with the last good certificate
}

func popOver(t *testing.T, c net.Conn) *popClient {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	p := &popClient{t: t, c: c, br: bufio.NewReader(c)}
	if g := p.status(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	return p
}

// Upstream TLS sessions are resumed: the second connection to a server
// skips the full handshake.
func TestUpstreamTLSResumption(t *testing.T) {
	env := startEnv(t, envOptions{})
	d := env.srv.listener(portOfAddr(t, env.imapAddr)).up.Dialer
	for i, want := range []bool{false, true} {
		u, err := d.Dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got := u.TLS.ConnectionState().DidResume
		u.Close()
		if got != want {
			t.Fatalf("connection %d: resumed = %v", i+1, got)
		}
	}
}

func portOfAddr(t *testing.T, addr string) int {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return a.Port
}

// Over local TLS, the client watched while its login waits (see
// clientWatch) keeps its TLS session: the watch's read, cut short when
// the login ends, is resumed by the next, and the commands sent meanwhile
// are answered; a close_notify after them is an end of sending, not a
// hang-up.
func TestCommandsSentDuringLoginOverTLS(t *testing.T) {
	defer func(d time.Duration) { watchAfter = d }(watchAfter)
	watchAfter = time.Millisecond
	pc := newProxyCert(t)
	env := startEnv(t, envOptions{servers: tlsServers(pc)[2:3], mailboxCap: 1, engine: Options{MailboxLimit: 1}})
	key := upstream.MailboxKey(env.listenerFor(env.addrs["pop3s"]).srv, testAccount)
	for _, shut := range []bool{false, true} {
		first := popLogin(t, env.popAddr, testAccount, testPassword) // the same mailbox, in plaintext
		tc, err := tls.Dial("tcp", env.addrs["pop3s"], pc.client())
		if err != nil {
			t.Fatal(err)
		}
		p := popOver(t, tc)
		p.ok("USER %s", testAccount)
		p.send("PASS %s", testPassword)
		waitFor(t, "the login to wait for the slot", func() bool { _, waiting := env.srv.gates.Held(key); return waiting == 1 })
		time.Sleep(20 * time.Millisecond) // for the watch to be reading: its read is the one cut short
		p.send("STAT")
		p.send("QUIT")
		if shut {
			tc.CloseWrite()
		}
		time.Sleep(50 * time.Millisecond) // for the watch to read them (either way, they are answered)
		first.ok("QUIT")
		for _, want := range []string{"+OK", "+OK 1 ", "+OK"} {
			if got := p.status(); !strings.HasPrefix(got, want) {
				t.Fatalf("close_notify %v: %q, want %s (PASS, STAT, QUIT)", shut, got, want)
			}
		}
	}
}
