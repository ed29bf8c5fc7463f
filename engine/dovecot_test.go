package engine

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

// A real Dovecot (Debian's dovecot-imapd, dovecot-pop3d and
// dovecot-submissiond; .ci/run installs them) checks the proxy's XOAUTH2
// tokens against the mock identity provider through OAuth 2.0 token
// introspection, as a real deployment does.
type dovecot struct {
	imaps, pop3s string
	// Dovecot's SMTP submission server (dovecot-submissiond): STARTTLS
	// (as on port 587) and implicit TLS (465). It relays what it accepts
	// to relay, which keeps it.
	submission, submissions string
	relay                   *relaySink
	introspected            atomic.Int32
	// Set by startDovecotWithIdP: the CA of its certificate, the token
	// endpoint whose tokens it accepts.
	ca       *mock.CA
	tokenURL string
	logPath  string // Dovecot's log
}

const dovecotUser = "app@example.test"

// startDovecot starts Dovecot with mechs (its auth_mechanisms: "xoauth2
// oauthbearer", or one of them).
func startDovecot(t *testing.T, ca *mock.CA, authority *mock.Authority, mechs string) *dovecot {
	t.Helper()
	bin, err := exec.LookPath("dovecot")
	if err != nil {
		t.Fatal("this test needs Dovecot: apt-get install dovecot-imapd dovecot-pop3d dovecot-submissiond (bash .ci/run does)")
	}
	d := &dovecot{}
	// Token introspection (RFC 7662), as Dovecot's oauth2 passdb asks it.
	intro := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.introspected.Add(1)
		r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		active := authority.Valid(r.PostForm.Get("token"))
		json.NewEncoder(w).Encode(map[string]any{"active": active, "username": dovecotUser})
	}))
	t.Cleanup(intro.Close)
	// Short paths: Dovecot's UNIX sockets live under base_dir.
	dir, err := os.MkdirTemp("/tmp", "dv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	d.logPath = filepath.Join(dir, "dovecot.log")
	mail := filepath.Join(dir, "mail")
	os.MkdirAll(mail, 0o777)
	os.Chmod(mail, 0o777)
	certPEM, keyPEM, err := ca.LeafPEM()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600)
	d.relay = startRelaySink(t)
	os.WriteFile(filepath.Join(dir, "oauth2.conf"), []byte(fmt.Sprintf(`introspection_mode = post
introspection_url = %s/introspect
username_attribute = username
active_attribute = active
active_value = true
force_introspection = yes
`, intro.URL)), 0o644)
	// The ports are picked free, but a test running beside this one in
	// another process may bind one before Dovecot does: then Dovecot
	// fails to start, and it is tried again on other ports.
	var cmd *exec.Cmd
	var out *syncbuf.Buffer
	for attempt := 1; ; attempt++ {
		imapPort, popPort := freePort(t), freePort(t)
		d.imaps, d.pop3s = fmt.Sprintf("127.0.0.1:%d", imapPort), fmt.Sprintf("127.0.0.1:%d", popPort)
		subPort, subsPort := freePort(t), freePort(t)
		d.submission, d.submissions = fmt.Sprintf("127.0.0.1:%d", subPort), fmt.Sprintf("127.0.0.1:%d", subsPort)
		conf := filepath.Join(dir, "dovecot.conf")
		os.WriteFile(conf, []byte(fmt.Sprintf(`protocols = imap pop3 submission
listen = 127.0.0.1
hostname = mail.example.test
submission_relay_host = 127.0.0.1
submission_relay_port = %[4]d
submission_relay_trusted = yes
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
ssl = required
ssl_cert = <%[1]s/cert.pem
ssl_key = <%[1]s/key.pem
auth_mechanisms = %[7]s
passdb {
  driver = oauth2
  mechanisms = %[7]s
  args = %[1]s/oauth2.conf
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=%[1]s/mail/%%u
}
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = 1 secs
pop3_uidl_format = %%08Xu%%08Xv
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = %[2]d
    ssl = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
  inet_listener pop3s {
    port = %[3]d
    ssl = yes
  }
}
service submission-login {
  inet_listener submission {
    port = %[5]d
  }
  inet_listener submissions {
    port = %[6]d
    ssl = yes
  }
}
`, dir, imapPort, popPort, d.relay.port, subPort, subsPort, mechs)), 0o644)
		cmd = exec.Command(bin, "-F", "-c", conf)
		out = &syncbuf.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		if dovecotListens(t, out, exited, d.imaps, d.pop3s, d.submission, d.submissions) {
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-exited
			})
			break
		}
		cmd.Process.Kill()
		<-exited
		if attempt == 3 {
			t.Fatalf("Dovecot did not start:\n%s", out.String())
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
			t.Logf("dovecot output:\n%s\ndovecot.log:\n%s", out.String(), log)
		}
	})
	return d
}

// With a real Dovecot: IMAP and POP3 logins through the proxy work; when
// the server refuses a revoked token, the client is answered within
// Dovecot's own failure delay (no hang, no second refusal), a fresh token
// is fetched at once, and the next login uses it.
//
// The same with a Dovecot that offers OAUTHBEARER (RFC 7628) only: the
// proxy logs in with that, and ends a refused exchange as it says.
func TestDovecotTokenRefusal(t *testing.T) {
	t.Run("XOAUTH2", func(t *testing.T) { testDovecotTokenRefusal(t, "xoauth2 oauthbearer", "XOAUTH2") })
	t.Run("OAUTHBEARER only", func(t *testing.T) { testDovecotTokenRefusal(t, "oauthbearer", "OAUTHBEARER") })
}

func testDovecotTokenRefusal(t *testing.T, mechs, used string) {
	dv, authority := startDovecotWithIdPMechs(t, mechs)
	px := startProxyFor(t, dv, Options{})
	imapAddr, popAddr, logs := px.imap, px.pop, px.logs

	r, l := imapLogin(t, imapAddr, dovecotUser, "pw")
	if !strings.HasPrefix(l, "L1 OK") {
		t.Fatalf("IMAP login through the proxy to Dovecot: %q\n%s", l, logs.String())
	}
	r.send("S SELECT INBOX\r\n")
	if got := r.until("S "); !strings.HasPrefix(got[len(got)-1], "S OK") {
		t.Fatalf("SELECT: %q", got)
	}
	r.send("Q LOGOUT\r\n")
	r.until("Q ")
	p := popLogin(t, popAddr, dovecotUser, "pw")
	p.ok("STAT")
	p.ok("QUIT")
	c := dialSMTPClient(t, px.smtp465)
	if err := c.Auth(smtp.PlainAuth("", dovecotUser, "pw", "127.0.0.1")); err != nil {
		t.Fatalf("SMTP login through the proxy to Dovecot: %v\n%s", err, logs.String())
	}
	smtpSend(t, c, dovecotUser, []byte("Subject: hi\r\n\r\nhello\r\n"), "someone@example.net")
	c.Quit()
	for _, proto := range []string{"imap", "pop3", "submission"} {
		waitFor(t, "Dovecot's "+proto+" login line", func() bool {
			log, _ := os.ReadFile(dv.logPath)
			for _, l := range strings.Split(string(log), "\n") {
				if strings.Contains(l, proto+"-login:") && strings.Contains(l, "Login: user=<"+dovecotUser+">, method="+used+",") {
					return true
				}
			}
			return false
		})
	}

	requests := authority.Requests()
	authority.RevokeAll()
	for _, proto := range []string{"POP3", "IMAP"} {
		// A bound, not a speed: far below the login timeout (30 s), well
		// above Dovecot's failure delay (2 s) and one token fetch.
		start := time.Now()
		deadline := start.Add(10 * time.Second)
		var answer string
		if proto == "POP3" {
			p := dialPOP(t, popAddr)
			p.c.SetDeadline(deadline)
			p.ok("USER %s", dovecotUser)
			answer = p.cmd("PASS pw")
			if !strings.HasPrefix(answer, "-ERR [SYS/TEMP]") {
				t.Fatalf("POP3 after the revocation: %q", answer)
			}
		} else {
			r := dialRaw(t, imapAddr)
			r.c.SetDeadline(deadline)
			r.line()
			r.send("L1 LOGIN " + dovecotUser + " pw\r\n")
			got := r.until("L1 ")
			answer = got[len(got)-1]
			if !strings.HasPrefix(answer, "L1 NO [UNAVAILABLE]") {
				t.Fatalf("IMAP after the revocation: %q", answer)
			}
		}
		if !strings.Contains(answer, "refused the OAuth 2.0 token") {
			t.Fatalf("%s: %q", proto, answer)
		}
		t.Logf("%s: refusal answered after %v", proto, time.Since(start).Round(time.Millisecond))
		// The fresh token was fetched in the background; the next login
		// takes it.
		waitFor(t, "a fresh token", func() bool { return authority.Requests() > requests })
		requests = authority.Requests()
		time.Sleep(50 * time.Millisecond) // the provider stores it
		if proto == "POP3" {
			p := popLogin(t, popAddr, dovecotUser, "pw")
			p.ok("QUIT")
		} else {
			r, l := imapLogin(t, imapAddr, dovecotUser, "pw")
			if !strings.HasPrefix(l, "L1 OK") {
				t.Fatalf("IMAP with the fresh token: %q", l)
			}
			r.send("Q LOGOUT\r\n")
			r.until("Q ")
		}
		if authority.Requests() != requests {
			t.Fatalf("%s: the login after the refusal fetched another token", proto)
		}
		authority.RevokeAll()
	}
	if dv.introspected.Load() == 0 {
		t.Fatal("Dovecot never asked the identity provider")
	}
}

// startDovecotWithIdP starts the mock identity provider's token
// endpoint and a Dovecot that checks its tokens.
func startDovecotWithIdP(t *testing.T) (*dovecot, *mock.Authority) {
	t.Helper()
	return startDovecotWithIdPMechs(t, "xoauth2 oauthbearer")
}

// startDovecotWithIdPMechs is startDovecotWithIdP with Dovecot offering
// the SASL mechanisms mechs.
func startDovecotWithIdPMechs(t *testing.T, mechs string) (*dovecot, *mock.Authority) {
	t.Helper()
	ca, err := mock.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	authority := mock.NewAuthority(testClientID, testSecret, testScope)
	tokens := httptest.NewServer(authority)
	t.Cleanup(func() {
		tokens.Close()
		authority.Release()
	})
	dv := startDovecot(t, ca, authority, mechs)
	dv.ca, dv.tokenURL = ca, tokens.URL
	return dv, authority
}

// proxiedDovecot is the proxy in front of Dovecot: its local addresses
// for Dovecot's IMAP, POP3 and both SMTP submission ports.
type proxiedDovecot struct {
	srv                              *Server
	imap, pop, smtpStartTLS, smtp465 string
	logs                             *syncbuf.Buffer
}

// startProxyFor runs the proxy in front of Dovecot (IMAP, POP3 and two
// SMTP sections: STARTTLS and implicit TLS) with opts.
func startProxyFor(t *testing.T, dv *dovecot, opts Options) proxiedDovecot {
	ca, tokenURL := dv.ca, dv.tokenURL
	t.Helper()
	ports := [4]int{freePort(t), freePort(t), freePort(t), freePort(t)}
	upPort := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	text := fmt.Sprintf(`[IMAP-%d]
server_address = localhost
server_port = %s
local_address = 127.0.0.1

[POP-%d]
server_address = localhost
server_port = %s
local_address = 127.0.0.1

[SMTP-%d]
server_address = localhost
server_port = %s
server_starttls = True
local_address = 127.0.0.1

[SMTP-%d]
server_address = localhost
server_port = %s
local_address = 127.0.0.1

[%s]
token_url = %s
oauth2_scope = %s
oauth2_flow = client_credentials
client_id = %s
client_secret = %s
`, ports[0], upPort(dv.imaps), ports[1], upPort(dv.pop3s), ports[2], upPort(dv.submission), ports[3], upPort(dv.submissions),
		dovecotUser, tokenURL, testScope, testClientID, testSecret)
	cfg := writeConfig(t, filepath.Join(t.TempDir(), "emailproxy.config"), text)
	p := proxiedDovecot{logs: &syncbuf.Buffer{}}
	log := zerolog.New(p.logs).Level(zerolog.DebugLevel)
	provider := auth.NewProvider(cfg, auth.Options{Logger: log})
	provider.Start()
	t.Cleanup(provider.Close)
	opts.RootCAs, opts.Logger, opts.EventLoops = ca.Pool, log, 2
	p.srv = startServer(t, cfg, provider, opts)
	local := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
	p.imap, p.pop, p.smtpStartTLS, p.smtp465 = local(ports[0]), local(ports[1]), local(ports[2]), local(ports[3])
	return p
}

// dovecotListens waits until Dovecot accepts on every addr, and reports
// false if it could not bind them all: it exits, or says so, having
// perhaps bound some first (and another process may hold a port it
// wanted, and answer there).
func dovecotListens(t *testing.T, out *syncbuf.Buffer, exited <-chan struct{}, addrs ...string) bool {
	t.Helper()
	failed := func() bool {
		select {
		case <-exited:
			return true
		default:
			return strings.Contains(out.String(), "Failed to start listeners")
		}
	}
	for _, addr := range addrs {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if failed() {
				return false
			}
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Dovecot does not listen on %s:\n%s", addr, out.String())
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // a failure to bind a later listener shows by now
	return !failed()
}
