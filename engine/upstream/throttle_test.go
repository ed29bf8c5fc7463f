package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

func TestThrottleFor(t *testing.T) {
	for _, c := range []struct {
		text string
		want time.Duration
		ok   bool
	}{
		{"Request is throttled. Suggested Backoff Time: 299910 milliseconds", 299910 * time.Millisecond, true},
		{"request is THROTTLED. suggested backoff time:42 milliseconds", 42 * time.Millisecond, true},
		{"Request is throttled.", throttleHoldDefault, true},
		{"Request is throttled. Suggested Backoff Time: 0 milliseconds", throttleHoldDefault, true},
		{"Request is throttled. Suggested Backoff Time: 99999999999999999999 milliseconds", throttleHoldDefault, true},
		{"Request is throttled. Suggested Backoff Time: 86400000 milliseconds", throttleHoldMax, true},
		{"[THROTTLED] Request is throttled. Suggested Backoff Time: 5000 milliseconds", 5 * time.Second, true},
		{"421 4.7.0 Request is throttled. Suggested Backoff Time: 5000 milliseconds", 5 * time.Second, true},
		{"4.7.0 Request is throttled.", throttleHoldDefault, true},
		{"Unknown command: Request is throttled. Suggested Backoff Time: 900000 milliseconds", 0, false},
		{"AUTHENTICATE failed.", 0, false},
		{"[UNAVAILABLE] try later", 0, false},
	} {
		got, ok := throttleFor(c.text)
		if got != c.want || ok != c.ok {
			t.Errorf("throttleFor(%q) = %v, %v; want %v, %v", c.text, got, ok, c.want, c.ok)
		}
	}
}

func TestThrottleAtEnd(t *testing.T) {
	const said = "Request is throttled. Suggested Backoff Time: 89117 milliseconds"
	long := strings.Repeat("x", 10_000)
	for _, c := range []struct {
		name  string
		chunk string
		want  bool
	}{
		{"IMAP BAD then BYE (as Exchange ends a session)", "a5 BAD " + said + "\r\n* BYE Connection closed. 14\r\n", true},
		{"IMAP NO, at the end of a large chunk", long + "\r\na6 NO " + said + "\r\n", true},
		{"untagged BAD", "* BAD " + said + "\r\n", true},
		{"POP3", "-ERR " + said + "\r\n", true},
		{"SMTP", "421 4.3.2 " + said + "\r\n", true},
		{"no line end yet", "a5 NO " + said, true},
		{"a message body quoting it", "Subject: fw\r\n\r\nThe server said: " + said + "\r\n", false},
		{"a refusal that echoes a command", "-ERR unknown command: " + said + "\r\n", false},
		{"a body line that looks like a refusal", "x NOT " + said + "\r\n", false},
		{"a line that starts before the tail", long + " a5 NO " + said + "\r\n", false},
		{"OK", "a5 OK " + said + "\r\n", false},
		{"nothing", "* 3 EXISTS\r\n", false},
	} {
		got := ThrottleAtEnd([]byte(c.chunk))
		if (got != nil) != c.want {
			t.Errorf("%s: %v, want found=%v", c.name, got, c.want)
			continue
		}
		if got != nil {
			if !strings.Contains(got.Said, said) {
				t.Errorf("%s: said %q", c.name, got.Said)
			}
			if d := got.Until.Sub(got.Since); d != 89117*time.Millisecond {
				t.Errorf("%s: hold %v", c.name, d)
			}
		}
	}
}

// A login the server refuses because it throttles the mailbox is no
// verdict on the token, and the mailbox's next logins do not reach the
// server until the time it asked for has passed; a transient SMTP
// failure is no verdict on the token either.
func TestOpenHoldsOffAThrottledMailbox(t *testing.T) {
	ca, leaf := testCA(t)
	var answer atomic.Value // what the server says to the next login
	var logins atomic.Int32
	var handlers sync.WaitGroup
	t.Cleanup(handlers.Wait)
	serve := func(proto config.Protocol) string {
		return serveTLS(t, &tls.Config{Certificates: []tls.Certificate{leaf}}, func(tc *tls.Conn) {
			handlers.Add(1)
			defer handlers.Done()
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(tc)
			greeting := map[config.Protocol]string{config.IMAP: "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n",
				config.POP: "+OK ready\r\n", config.SMTP: "220 ready\r\n"}[proto]
			tc.Write([]byte(greeting))
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				tag, cmd, _ := strings.Cut(strings.TrimSpace(line), " ")
				switch {
				case proto == config.POP && tag == "CAPA":
					tc.Write([]byte("+OK\r\nSASL XOAUTH2\r\n.\r\n"))
				case proto == config.POP && line == "AUTH XOAUTH2\r\n":
					tc.Write([]byte("+ \r\n"))
					br.ReadString('\n')
					logins.Add(1)
					tc.Write([]byte(answer.Load().(string)))
				case proto == config.SMTP && tag == "EHLO":
					tc.Write([]byte("250-test\r\n250 AUTH XOAUTH2\r\n"))
				case proto == config.SMTP && tag == "AUTH":
					logins.Add(1)
					tc.Write([]byte(answer.Load().(string)))
				case proto == config.IMAP && strings.HasPrefix(cmd, "AUTHENTICATE"):
					logins.Add(1)
					tc.Write([]byte(strings.ReplaceAll(answer.Load().(string), "TAG", tag)))
				default:
					return
				}
			}
		})
	}
	const said = "Request is throttled. Suggested Backoff Time: 300 milliseconds"
	for _, c := range []struct {
		proto     config.Protocol
		throttled string // the server's answer to a throttled login
		ok        string
	}{
		{config.IMAP, "TAG NO " + said + "\r\n", "TAG OK done\r\n"},
		{config.IMAP, "* BYE " + said + "\r\n", "TAG OK done\r\n"},
		{config.POP, "-ERR " + said + "\r\n", "+OK done\r\n"},
		{config.SMTP, "421 4.7.0 " + said + "\r\n", "235 done\r\n"},
		{config.SMTP, "535 5.7.3 " + said + "\r\n", "235 done\r\n"},
	} {
		addr := serve(c.proto)
		_, port, _ := net.SplitHostPort(addr)
		cs := &config.Server{Protocol: c.proto, ServerAddress: "localhost", ServerPort: atoi(t, port)}
		side := &Side{Srv: cs, Dialer: NewDialer(cs, ca.Pool, 5*time.Second), Gates: NewGates(0), Learn: func(*Conn) {}}
		login := func() (*Session, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			return side.Open(ctx, Request{Tag: "L1", User: "u@example.test", Token: "t"})
		}
		name := string(c.proto) + " " + strings.TrimSpace(c.throttled)
		logins.Store(0)
		answer.Store(c.throttled)
		_, err := login()
		var th *Throttled
		if !errors.As(err, &th) || !strings.Contains(th.Error(), "(it said: ") || !strings.Contains(th.Error(), said) {
			t.Fatalf("%s: %v, want the server's throttling", name, err)
		}
		// The next login is answered without the server.
		answer.Store(c.ok)
		_, err = login()
		if !errors.As(err, &th) || th.Said != "" || !strings.Contains(err.Error(), "the server throttled this mailbox") {
			t.Fatalf("%s: the next login: %v, want it held off", name, err)
		}
		if n := logins.Load(); n != 1 {
			t.Fatalf("%s: %d logins reached the server, want 1", name, n)
		}
		// Once the time asked for has passed, logins go to the server again.
		time.Sleep(time.Until(th.Until) + 10*time.Millisecond)
		sess, err := login()
		if err != nil {
			t.Fatalf("%s: after the hold: %v", name, err)
		}
		sess.Conn.Close()
		if n := logins.Load(); n != 2 {
			t.Fatalf("%s: %d logins reached the server, want 2", name, n)
		}
	}

	// A transient SMTP failure is the server being busy, a permanent one a
	// refused token.
	addr := serve(config.SMTP)
	_, port, _ := net.SplitHostPort(addr)
	cs := &config.Server{Protocol: config.SMTP, ServerAddress: "localhost", ServerPort: atoi(t, port)}
	side := &Side{Srv: cs, Dialer: NewDialer(cs, ca.Pool, 5*time.Second), Gates: NewGates(0), Learn: func(*Conn) {}}
	for answerText, want := range map[string]string{
		"454 4.7.0 Too many login attempts, please try again later.\r\n": "*upstream.Failure",
		"535 5.7.3 Authentication unsuccessful\r\n":                      "*upstream.RefusedError",
	} {
		answer.Store(answerText)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := side.Open(ctx, Request{User: "u@example.test", Token: "t"})
		cancel()
		var f *Failure
		var rej *RefusedError
		got := "other"
		switch {
		case errors.As(err, &f):
			got = "*upstream.Failure"
		case errors.As(err, &rej):
			got = "*upstream.RefusedError"
		}
		if got != want {
			t.Errorf("SMTP %q: %v (%s), want %s", strings.TrimSpace(answerText), err, got, want)
		}
	}
}

// The relay calls ThrottleAtEnd for every chunk from the server: it must
// cost the same for a 16 KiB chunk as for a line.
func BenchmarkThrottleAtEnd(b *testing.B) {
	for _, size := range []int{40, 16 << 10} {
		chunk := []byte(strings.Repeat("* 1 FETCH (FLAGS (\\Seen))\r\n", size/27+1)[:size])
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if ThrottleAtEnd(chunk) != nil {
					b.Fatal("found")
				}
			}
		})
	}
}

func TestThrottledSaysWhenToComeBack(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		until time.Duration
		want  string
	}{{400 * time.Millisecond, "try again in 1s"}, {1500 * time.Millisecond, "try again in 2s"}, {5 * time.Minute, "try again in 5m0s"}} {
		e := &Throttled{Since: now.Add(-time.Second), Until: now.Add(c.until)}
		if got := e.Error(); !strings.HasSuffix(got, c.want) {
			t.Errorf("%v left: %q, want it to end %q", c.until, got, c.want)
		}
	}
}

// Whatever a server sends, reading it for throttling neither panics nor
// finds a hold outside the bounds, and finds one only in a refusal line.
func FuzzThrottleAtEnd(f *testing.F) {
	for _, s := range []string{
		"a5 BAD Request is throttled. Suggested Backoff Time: 89117 milliseconds\r\n* BYE Connection closed. 14\r\n",
		"-ERR Request is throttled.", "421 4.7.0 Request is throttled. Suggested Backoff Time: 1 milliseconds",
		"is throttled", "\nis throttled\n", "x NO is throttled", "* 1 FETCH (BODY[] {12}\r\nis throttled)\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, chunk []byte) {
		th := ThrottleAtEnd(chunk)
		if th == nil {
			return
		}
		if d := th.Until.Sub(th.Since); d <= 0 || d > throttleHoldMax {
			t.Fatalf("hold %v from %q", d, chunk)
		}
		if _, ok := refusalText([]byte(th.Said)); !ok && len(th.Said) < 120 {
			t.Fatalf("said %q is not a refusal line (from %q)", th.Said, chunk)
		}
	})
}
