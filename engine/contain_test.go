package engine

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/telemetry"
)

// panicSecret stands for a password that was in the bytes being handled
// when the code panicked: it must not reach the log.
const panicSecret = "hunter2-in-flight"

// panics reads emailproxy_panics_total{where=...} from the metrics.
func panics(t *testing.T, where string) int {
	t.Helper()
	var b bytes.Buffer
	telemetry.Write(&b)
	m := regexp.MustCompile(`(?m)^emailproxy_panics_total\{where="` + where + `"\} (\d+)$`).FindSubmatch(b.Bytes())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// checkPanicReported: emailproxy_panics_total{where} went up by want
// since before (0: by at least one), and the log holds the panic with its
// place and stack, and nothing of what the panicking code was given.
func checkPanicReported(t *testing.T, logs, where string, before, want int) {
	t.Helper()
	if got := panics(t, where) - before; got != want && (want != 0 || got < 1) {
		t.Errorf("emailproxy_panics_total{where=%s} went up by %d, want %d (0: at least one)", where, got, want)
	}
	if !strings.Contains(logs, `"where":"`+where+`"`) || !strings.Contains(logs, `"stack":"goroutine`) {
		t.Errorf("no %s panic with its stack in the log:\n%s", where, logs)
	}
	if strings.Contains(logs, panicSecret) {
		t.Errorf("the log holds what the panicking code was given")
	}
}

// panickyMachine is a client state machine with a bug: it panics on
// input that holds "BOOM", with that input in the panic's value.
type panickyMachine struct{ clientMachine }

func (m panickyMachine) Next(in []byte) (int, protocol.Action) {
	if bytes.Contains(in, []byte("BOOM")) {
		panic("cannot parse " + string(in))
	}
	return m.clientMachine.Next(in)
}

// A panic in the code that reads one client before login closes that
// client's connection; the loop (or goroutine) serving it goes on, and
// so do the other clients, logged in or not.
func TestPanicBeforeLoginEndsThatConnectionOnly(t *testing.T) {
	for _, fe := range []string{FrontEndGnet, FrontEndGoroutines} {
		t.Run(fe, func(t *testing.T) {
			orig := popDialect.newMachine
			popDialect.newMachine = func(p *profile, offered, active bool, o *Options) clientMachine {
				return panickyMachine{orig(p, offered, active, o)}
			}
			t.Cleanup(func() { popDialect.newMachine = orig })
			env := startEnv(t, envOptions{engine: Options{FrontEnd: fe, EventLoops: 1}})
			before := panics(t, "front_end")

			held := popLogin(t, env.popAddr, testAccount, testPassword)
			waiting := dialPOP(t, env.popAddr) // not logged in yet, on the same loop

			bad := dialRaw(t, env.popAddr)
			bad.line()
			bad.send("USER " + testAccount + "\r\nPASS BOOM " + panicSecret + "\r\n")
			bad.expectEOF()

			held.ok("STAT")
			waiting.ok("USER %s", testAccount)
			waiting.ok("PASS %s", testPassword)
			waiting.ok("QUIT")
			held.ok("QUIT")
			popLogin(t, env.popAddr, testAccount, testPassword).ok("QUIT")
			checkPanicReported(t, env.logs.String(), "front_end", before, 1)
		})
	}
}

// A panic during a login fails that login, with an answer the client
// can retry on; the same connection can then log in.
func TestPanicInALoginFailsThatLoginOnly(t *testing.T) {
	testHookLogin = func(user string) {
		if strings.HasPrefix(user, "BOOM") {
			panic(fmt.Errorf("no account %s (password %s)", user, panicSecret))
		}
	}
	t.Cleanup(func() { testHookLogin = nil })
	env := startEnv(t, envOptions{})
	before := panics(t, "login")

	p := dialPOP(t, env.popAddr)
	p.ok("USER BOOM%s", testAccount)
	if got := p.cmd("PASS %s", panicSecret); !strings.HasPrefix(got, "-ERR") || !strings.Contains(got, "internal error") {
		t.Fatalf("PASS answered %q, want -ERR internal error", got)
	}
	p.ok("USER %s", testAccount)
	p.ok("PASS %s", testPassword)
	p.ok("STAT")
	p.ok("QUIT")
	checkPanicReported(t, env.logs.String(), "login", before, 1)
}

// A panic while relaying ends that session: its client and its upstream
// session are closed (the mailbox's place given back), and other
// sessions relay on.
func TestPanicInARelayEndsThatSessionOnly(t *testing.T) {
	testHookRelayChunk = func(chunk []byte) {
		if bytes.Contains(chunk, []byte("BOOM")) {
			panic("cannot relay " + string(chunk))
		}
	}
	t.Cleanup(func() { testHookRelayChunk = nil })
	env := startEnv(t, envOptions{})
	before := panics(t, "relay")

	other := popLogin(t, env.popAddr, testAccount, testPassword)
	bad := popLogin(t, env.popAddr, testAccount, testPassword)
	waitFor(t, "two upstream sessions", func() bool { now, _ := env.up.Sessions("pop3", testAccount); return now == 2 })
	bad.send("NOOP BOOM %s", panicSecret)
	bad.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(bad.br); err != nil {
		t.Fatalf("the panicking session was not closed: %v (read %q)", err, rest)
	}
	waitFor(t, "the upstream session to end", func() bool { now, _ := env.up.Sessions("pop3", testAccount); return now == 1 })

	other.ok("STAT")
	other.ok("QUIT")
	checkPanicReported(t, env.logs.String(), "relay", before, 1)
}

// A panic while reading a new upstream connection's greeting (the code
// that learns what clients are shown) fails that connection only: the
// clients waiting for it are told the server is unavailable, not left
// waiting, and the next client is served.
func TestPanicLearningTheUpstreamFailsThatDialOnly(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	orig := popDialect.profile
	popDialect.profile = func(u *upstream.Conn) *profile {
		if broken.Load() {
			panic("cannot read greeting " + string(u.Greeting))
		}
		return orig(u)
	}
	t.Cleanup(func() { popDialect.profile = orig })
	env := startEnv(t, envOptions{})
	before := panics(t, "dial")

	c := dialRaw(t, env.popAddr)
	if g := c.line(); !strings.HasPrefix(g, "-ERR") || !strings.Contains(g, "unavailable") {
		t.Fatalf("greeting %q, want the upstream-unavailable answer", g)
	}
	c.expectEOF()
	broken.Store(false)
	popLogin(t, env.popAddr, testAccount, testPassword).ok("QUIT")
	checkPanicReported(t, env.logs.String(), "dial", before, 0)
}
