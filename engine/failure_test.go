package engine

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/emailproxy/emailproxy/bench/mock"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// gnet's package-level worker pool lives for the whole process.
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	)
}

// imapLogin logs in on a raw connection and returns the tagged answer.
func imapLogin(t *testing.T, addr, user, pass string) (*rawConn, string) {
	t.Helper()
	r := dialRaw(t, addr)
	if g := r.line(); !strings.HasPrefix(g, "* OK") {
		return r, g
	}
	r.send("L1 LOGIN \"" + user + "\" \"" + pass + "\"\r\n")
	lines := r.until("L1 ")
	return r, lines[len(lines)-1]
}

// stillServes proves the proxy keeps serving other clients after a failure.
func stillServes(t *testing.T, env *proxyEnv) {
	t.Helper()
	r, l := imapLogin(t, env.imapAddr, testAccount, "pw")
	if !strings.HasPrefix(l, "L1 OK") {
		t.Fatalf("a good login after the failure: %q", l)
	}
	r.send("L2 LOGOUT\r\n")
	r.until("L2 ")
}

func TestFailuresEndToEnd(t *testing.T) {
	t.Run("wrong password", func(t *testing.T) {
		env := startEnv(t, envOptions{})
		stillServes(t, env) // "pw" becomes the password
		r, l := imapLogin(t, env.imapAddr, testAccount, "not-pw")
		if !strings.HasPrefix(l, "L1 NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("IMAP: %q", l)
		}
		// The connection stays open for a retry.
		r.send("L2 LOGIN " + testAccount + " pw\r\n")
		if lines := r.until("L2 "); !strings.HasPrefix(lines[len(lines)-1], "L2 OK") {
			t.Fatalf("retry: %q", lines)
		}
		p := dialPOP(t, env.popAddr)
		p.ok("USER %s", testAccount)
		if s := p.cmd("PASS nope"); !strings.HasPrefix(s, "-ERR [AUTH]") {
			t.Fatalf("POP3: %q", s)
		}
		p.ok("USER %s", testAccount)
		p.ok("PASS pw")
	})
	t.Run("unknown account", func(t *testing.T) {
		env := startEnv(t, envOptions{})
		_, l := imapLogin(t, env.imapAddr, "stranger@yourdomain.com", "pw")
		// Answered like a wrong password: the reply does not tell which
		// accounts exist; the log tells the operator what to add.
		if !strings.HasPrefix(l, "L1 NO [AUTHENTICATIONFAILED]") || !strings.Contains(l, "password for account stranger@yourdomain.com is incorrect") {
			t.Fatalf("%q", l)
		}
		if !strings.Contains(env.logs.String(), "add a [stranger@yourdomain.com] section") {
			t.Fatal("the log lacks the hint")
		}
		stillServes(t, env)
	})
	t.Run("empty password", func(t *testing.T) {
		env := startEnv(t, envOptions{})
		_, l := imapLogin(t, env.imapAddr, testAccount, "")
		if !strings.HasPrefix(l, "L1 NO") || !strings.Contains(l, "no password") {
			t.Fatalf("%q", l)
		}
	})
	t.Run("token endpoint down", func(t *testing.T) {
		dead := "http://127.0.0.1:" + itoa(freePort(t)) + "/token"
		env := startEnv(t, envOptions{tokenURL: dead})
		_, l := imapLogin(t, env.imapAddr, testAccount, "pw")
		if !strings.HasPrefix(l, "L1 NO [UNAVAILABLE]") || !strings.Contains(l, "could not get an OAuth 2.0 token") {
			t.Fatalf("IMAP: %q", l)
		}
		p := dialPOP(t, env.popAddr)
		p.ok("USER %s", testAccount)
		if s := p.cmd("PASS pw"); !strings.HasPrefix(s, "-ERR [SYS/TEMP]") {
			t.Fatalf("POP3: %q", s)
		}
		if !strings.Contains(env.logs.String(), "token request failed") {
			t.Fatal("no log line says the token request failed")
		}
	})
	t.Run("token endpoint never answers", func(t *testing.T) {
		env := startEnv(t, envOptions{tokenTO: 300 * time.Millisecond, engine: Options{LoginTimeout: 10 * time.Second}})
		env.up.Authority.SetHang(true)
		env.up.Authority.RevokeAll()
		// Force a new fetch: the cached token is dropped as if rejected.
		env.up.SetRejectTokens(true)
		start := time.Now()
		_, l := imapLogin(t, env.imapAddr, testAccount, "pw")
		if !strings.HasPrefix(l, "L1 NO") {
			t.Fatalf("%q", l)
		}
		if d := time.Since(start); d > 8*time.Second {
			t.Fatalf("a hanging token endpoint held the login for %v", d)
		}
		env.up.Authority.SetHang(false)
		env.up.Authority.Release()
	})
	t.Run("upstream refuses every token", func(t *testing.T) {
		env := startEnv(t, envOptions{})
		waitTokens(t, env, 1)
		env.up.SetRejectTokens(true)
		// The first refusal is answered at once as temporary, and a fresh
		// token is fetched in the background, without waiting for a login.
		_, l := imapLogin(t, env.imapAddr, testAccount, "pw")
		if !strings.HasPrefix(l, "L1 NO [UNAVAILABLE]") || !strings.Contains(l, "refused the OAuth 2.0 token") {
			t.Fatalf("%q", l)
		}
		waitTokens(t, env, 2)
		// The fresh token is refused too: that is not the token's fault.
		p := dialPOP(t, env.popAddr)
		p.ok("USER %s", testAccount)
		if s := p.cmd("PASS pw"); !strings.HasPrefix(s, "-ERR [AUTH]") || !strings.Contains(s, "again, after a fresh one") {
			t.Fatalf("POP3: %q", s)
		}
		waitTokens(t, env, 3)
		env.up.SetRejectTokens(false)
		stillServes(t, env)
		if n := env.up.Authority.Requests(); n != 3 {
			t.Fatalf("token requests %d: want the start-up one and one per refusal", n)
		}
	})
	t.Run("revoked token is replaced for the next login", func(t *testing.T) {
		env := startEnv(t, envOptions{})
		waitTokens(t, env, 1)
		env.up.Authority.RevokeAll()
		_, l := imapLogin(t, env.imapAddr, testAccount, "pw")
		if !strings.HasPrefix(l, "L1 NO [UNAVAILABLE]") {
			t.Fatalf("%q", l)
		}
		waitTokens(t, env, 2)
		stillServes(t, env)
		if n := env.up.Authority.Requests(); n != 2 {
			t.Fatalf("token requests %d", n)
		}
	})
	t.Run("upstream unreachable", func(t *testing.T) {
		closed := "127.0.0.1:" + itoa(freePort(t))
		env := startEnv(t, envOptions{imapServer: closed, popServer: closed})
		r := dialRaw(t, env.imapAddr)
		if l := r.line(); !strings.HasPrefix(l, "* BYE [UNAVAILABLE]") {
			t.Fatalf("IMAP: %q", l)
		}
		r.expectEOF()
		r = dialRaw(t, env.popAddr)
		if l := r.line(); !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
			t.Fatalf("POP3: %q", l)
		}
		if !strings.Contains(env.logs.String(), "cannot connect to "+closed) {
			t.Fatalf("log does not say what failed:\n%s", env.logs.String())
		}
		// Each client that arrives while the server is away tries to
		// reach it; the error is logged once (per section and minute),
		// not once per client, and the server's return once.
		for range 5 {
			r := dialRaw(t, env.imapAddr)
			r.line()
			r.expectEOF()
		}
		if n := strings.Count(env.logs.String(), `"level":"error"`); n != 2 { // IMAP's and POP3's
			t.Fatalf("%d error lines for one unreachable server per section:\n%s", n, env.logs.String())
		}
		ln, err := net.Listen("tcp", closed)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() { // the server is back (through a forwarder on its address)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					up, err := net.Dial("tcp", env.up.IMAPAddr)
					if err != nil {
						return
					}
					defer up.Close()
					go io.Copy(up, c)
					io.Copy(c, up)
				}()
			}
		}()
		r = dialRaw(t, env.imapAddr)
		if l := r.line(); !strings.HasPrefix(l, "* OK") {
			t.Fatalf("IMAP once the server is back: %q", l)
		}
		r.c.Close()
		failed := -1
		if m := regexp.MustCompile(`"failed_dials":(\d+)[^}]*"message":"upstream server reachable again"`).FindStringSubmatch(env.logs.String()); m != nil {
			failed, _ = strconv.Atoi(m[1])
		}
		if failed < 6 {
			t.Fatalf("the server's return is not logged with the failed dials (the six clients' at least):\n%s", env.logs.String())
		}
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		env := startEnv(t, envOptions{noCA: true})
		r := dialRaw(t, env.imapAddr)
		if l := r.line(); !strings.HasPrefix(l, "* BYE [UNAVAILABLE]") {
			t.Fatalf("%q", l)
		}
		if !strings.Contains(env.logs.String(), "is not trusted") {
			t.Fatalf("log does not name the certificate problem:\n%s", env.logs.String())
		}
	})
	t.Run("client disconnects mid-login", func(t *testing.T) {
		env := startEnv(t, envOptions{tokenTO: 2 * time.Second})
		waitTokens(t, env, 1)
		env.up.Authority.SetHang(true)
		env.up.SetRejectTokens(true) // the retry needs a fresh token, which hangs
		r := dialRaw(t, env.imapAddr)
		r.line()
		r.send("x LOGIN " + testAccount + " pw\r\n")
		time.Sleep(100 * time.Millisecond)
		r.c.Close()
		env.up.Authority.SetHang(false)
		env.up.Authority.Release()
		env.up.SetRejectTokens(false)
		// The released request failed; the provider retries in the
		// background after its backoff (200 ms here).
		deadline := time.Now().Add(5 * time.Second)
		for {
			r, l := imapLogin(t, env.imapAddr, testAccount, "pw")
			r.c.Close()
			if strings.HasPrefix(l, "L1 OK") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("never recovered: %q", l)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("idle before login", func(t *testing.T) {
		pc := newProxyCert(t)
		env := startEnv(t, envOptions{engine: Options{IdleTimeout: 300 * time.Millisecond},
			servers: []serverSpec{{name: "pop3s", proto: "POP", upstream: func(up *mock.Upstream) string { return up.POPAddr }, keys: pc.keys(false)}}})
		r := dialRaw(t, env.imapAddr)
		r.line()
		if l := r.line(); l != "* BYE Autologout; idle for too long" {
			t.Fatalf("gnet path: %q", l)
		}
		r.expectEOF()
		tc, err := tls.Dial("tcp", env.addrs["pop3s"], pc.client())
		if err != nil {
			t.Fatal(err)
		}
		p := popOver(t, tc)
		if l := p.status(); l != "-ERR Idle for too long, closing" {
			t.Fatalf("TLS path: %q", l)
		}
		stillServes(t, env)
	})
	t.Run("overlong line", func(t *testing.T) {
		env := startEnv(t, envOptions{})
		r := dialRaw(t, env.imapAddr)
		r.line()
		r.send("a1 LOGIN " + strings.Repeat("x", 20000) + " pw\r\na2 NOOP\r\n")
		if l := r.line(); l != "* BAD Command line too long" {
			t.Fatalf("%q", l)
		}
		if l := r.line(); l != "a2 OK NOOP completed" {
			t.Fatalf("%q", l)
		}
		// Still sending with no end of line: disconnected.
		junk := strings.Repeat("y", 32<<10)
		for i := 0; i < 8; i++ {
			if _, err := r.c.Write([]byte(junk)); err != nil {
				break
			}
		}
		lines := r.until("* BYE")
		if !strings.HasPrefix(lines[len(lines)-1], "* BYE") {
			t.Fatalf("%q", lines)
		}
		r.expectEOF()
		stillServes(t, env)
	})
}

func waitTokens(t *testing.T, env *proxyEnv, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for env.up.Authority.Requests() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// Let the provider store the answer.
	time.Sleep(50 * time.Millisecond)
}

func itoa(n int) string { return strconv.Itoa(n) }

// Secrets never reach the log, at debug level, through success and failure.
func TestNoSecretsInLogs(t *testing.T) {
	env := startEnv(t, envOptions{})
	const pass = "Sup3r-Secret-Pass"
	_, l := imapLogin(t, env.imapAddr, testAccount, pass)
	if !strings.HasPrefix(l, "L1 OK") {
		t.Fatal(l)
	}
	imapLogin(t, env.imapAddr, testAccount, pass+"-wrong")
	p := dialPOP(t, env.popAddr)
	p.ok("AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00"+pass)))
	// POP3 AUTH LOGIN: the password alone, base64, on its own line.
	pl := dialRaw(t, env.popAddr)
	pl.line()
	pl.send("AUTH LOGIN " + base64.StdEncoding.EncodeToString([]byte(testAccount)) + "\r\n")
	pl.line()
	pl.send(base64.StdEncoding.EncodeToString([]byte(pass)) + "\r\n")
	if l := pl.line(); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("POP3 AUTH LOGIN: %q", l)
	}
	// The password as an IMAP literal (synchronising and not), and as a
	// SASL response after a continuation.
	lit := dialRaw(t, env.imapAddr)
	lit.line()
	lit.send(fmt.Sprintf("A LOGIN %s {%d}\r\n", testAccount, len(pass)))
	lit.line()
	lit.send(pass + "\r\n")
	lit.until("A ")
	plus := dialRaw(t, env.imapAddr)
	plus.line()
	plus.send("C LOGIN " + testAccount + fmt.Sprintf(" {%d+}\r\n", len(pass)) + pass + "\r\n")
	plus.until("C ")
	sasl := dialRaw(t, env.imapAddr)
	sasl.line()
	sasl.send("S AUTHENTICATE PLAIN\r\n")
	sasl.line()
	sasl.send(base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00"+pass)) + "\r\n")
	sasl.until("S ")
	env.up.SetRejectTokens(true)
	imapLogin(t, env.imapAddr, testAccount, pass)

	logs := env.logs.String()
	// The --debug protocol trace is there, with the secrets redacted.
	for _, want := range []string{`"dir":"client->proxy","line":"L1 LOGIN [redacted]"`, `"line":"A LOGIN [redacted]"`,
		`"line":"[credentials redacted]"`, `"line":"S AUTHENTICATE PLAIN"`, `"line":"C LOGIN [redacted]"`, `"line":"[literal redacted]"`, `"dir":"proxy->server","line":"L1 AUTHENTICATE XOAUTH2 [redacted]"`,
		`"dir":"server->proxy"`, `"dir":"proxy->client"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the trace lacks %s", want)
		}
	}
	if !strings.Contains(logs, `"level":"debug"`) && !strings.Contains(logs, "login") {
		t.Fatal("no log output captured")
	}
	tokenRE := regexp.MustCompile(`mock-[0-9a-f]{48}`)
	var tokens []string
	for _, s := range env.up.XOAUTH2Received() {
		tokens = append(tokens, tokenRE.FindAllString(s, -1)...)
	}
	if len(tokens) == 0 {
		t.Fatal("no token seen upstream")
	}
	for _, secret := range append(tokens, pass, testSecret, base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00"+pass)),
		base64.StdEncoding.EncodeToString([]byte(pass))) {
		if strings.Contains(logs, secret) {
			t.Fatalf("secret %q found in the log", secret)
		}
	}
	if !strings.Contains(logs, `"account":"`+testAccount+`"`) {
		t.Fatal("login lines do not name the account")
	}
}
