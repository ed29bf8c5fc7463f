package engine

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/telemetry"
)

// throttlingIMAP is a scripted TLS IMAP server that throttles a mailbox
// as Exchange Online does: the first command after the login is refused
// with a backoff time, "* BYE" follows and the connection is closed.
// logins counts the AUTHENTICATEs it answers.
func throttlingIMAP(t *testing.T, env *proxyEnv, backoff time.Duration, logins *atomic.Int32) string {
	return scriptedUpstream(t, env, func(c net.Conn, br *bufio.Reader) {
		fmt.Fprint(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] The Microsoft Exchange IMAP4 service is ready.\r\n")
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			switch {
			case strings.HasPrefix(strings.ToUpper(cmd), "AUTHENTICATE XOAUTH2"):
				logins.Add(1)
				fmt.Fprintf(c, "%s OK AUTHENTICATE completed.\r\n", tag)
			case strings.EqualFold(cmd, "LOGOUT"):
				fmt.Fprintf(c, "* BYE signing off.\r\n%s OK LOGOUT completed.\r\n", tag)
				return
			default:
				fmt.Fprintf(c, "%s BAD Request is throttled. Suggested Backoff Time: %d milliseconds\r\n* BYE Connection closed. 14\r\n", tag, backoff.Milliseconds())
				return
			}
		}
	})
}

// A server that throttles a mailbox in the middle of a session (the
// answer emailproxy.py passes on, issue #191 there) has the mailbox's
// next logins answered by the proxy, without the server, until the time
// it asked for has passed; the token is kept.
func TestThrottledMailboxIsLeftAlone(t *testing.T) {
	// Not in parallel: the harness's free ports are free only until
	// another test in the process binds one.
	eachFrontEnd(t, func(t *testing.T, fe string) {
		t.Run("relay", func(t *testing.T) { testThrottledMailboxIsLeftAlone(t, Options{FrontEnd: fe}) })
		t.Run("reuse relay", func(t *testing.T) {
			testThrottledMailboxIsLeftAlone(t, Options{FrontEnd: fe, IMAPSessionReuse: time.Minute})
		})
	})
}

func testThrottledMailboxIsLeftAlone(t *testing.T, opts Options) {
	base := startEnv(t, envOptions{})
	var logins atomic.Int32
	// Long enough for two logins on a loaded machine, under -race.
	const backoff = 3 * time.Second
	addr := throttlingIMAP(t, base, backoff, &logins)
	env := startEnv(t, envOptions{imapServer: addr, ca: base.up.CA, engine: opts})
	section := env.listenerFor(env.imapAddr).srv.Section
	throttledLogins := telemetry.Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_logins_total{proto="IMAP",server=%q,result="throttled"}`, section))
	before := throttledLogins.Get()

	r := dialRaw(t, env.imapAddr)
	r.line()
	r.send("a LOGIN " + testAccount + " pw\r\n")
	if l := r.line(); l != "a OK AUTHENTICATE completed." {
		t.Fatalf("login: %q", l)
	}
	throttledAt := time.Now()
	r.send("b SELECT INBOX\r\n")
	if l := r.line(); !strings.HasPrefix(l, "b BAD Request is throttled.") {
		t.Fatalf("the server's answer: %q", l)
	}
	if l := r.line(); l != "* BYE Connection closed. 14" {
		t.Fatalf("after it: %q", l)
	}
	r.expectEOF()

	// The next logins: answered by the proxy, with how long to wait.
	for i := range 2 {
		r = dialRaw(t, env.imapAddr)
		r.line()
		r.send("c LOGIN " + testAccount + " pw\r\n")
		l := r.line()
		if !strings.HasPrefix(l, "c NO [UNAVAILABLE] emailproxy: the server throttled this mailbox") || !strings.Contains(l, "try again in") {
			t.Fatalf("login %d while throttled: %q", i, l)
		}
	}
	if n := logins.Load(); n != 1 {
		t.Fatalf("%d logins reached the server, want 1", n)
	}
	if n := throttledLogins.Get() - before; n != 2 {
		t.Fatalf("throttled logins counted: %d, want 2", n)
	}
	logs := env.logs.String()
	if !strings.Contains(logs, "the server throttles this mailbox") || !strings.Contains(logs, `"said":"b BAD Request is throttled. Suggested Backoff Time: 3000 milliseconds"`) {
		t.Fatalf("no warning with the server's words:\n%s", logs)
	}
	if strings.Contains(logs, "refused the token") {
		t.Fatalf("throttling taken for a refused token:\n%s", logs)
	}

	// Once the time asked for has passed, the server has the logins again.
	time.Sleep(time.Until(throttledAt.Add(backoff + 50*time.Millisecond)))
	r = dialRaw(t, env.imapAddr)
	r.line()
	r.send("d LOGIN " + testAccount + " pw\r\n")
	if l := r.line(); l != "d OK AUTHENTICATE completed." {
		t.Fatalf("login after the backoff: %q", l)
	}
	if n := logins.Load(); n != 2 {
		t.Fatalf("%d logins reached the server, want 2", n)
	}
	r.send("e LOGOUT\r\n")
	r.until("e OK")
}
