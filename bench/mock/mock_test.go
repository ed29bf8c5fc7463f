package mock

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The mock is what `emailproxy --demo` runs, so it is held to the
// proxy's standard: it answers what a real provider answers and stays
// bounded however long it runs.

func startMock(t *testing.T, o Options) *Upstream {
	t.Helper()
	o.ClientID, o.ClientSecret, o.Scope = "cid", "secret", "scope"
	if o.Mailboxes == nil {
		o.Mailboxes = map[string][]Message{"a@x": {{UID: "u1", Body: []byte("Subject: hi\r\n\r\nhello\r\n")}}}
	}
	up, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return up
}

func token(t *testing.T, up *Upstream, secret string) (string, int, string) {
	t.Helper()
	resp, err := http.PostForm(up.TokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {"cid"},
		"client_secret": {secret}, "scope": {"scope"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	tok, _ := body["access_token"].(string)
	code, _ := body["error"].(string)
	return tok, resp.StatusCode, code
}

func TestTokenEndpoint(t *testing.T) {
	up := startMock(t, Options{})
	tok, status, _ := token(t, up, "secret")
	if status != 200 || !up.Authority.Valid(tok) {
		t.Fatalf("good client: %d %q", status, tok)
	}
	if _, status, code := token(t, up, "wrong"); status != 401 || code != "invalid_client" {
		t.Fatalf("wrong secret: %d %q", status, code)
	}
	up.Authority.RevokeAll()
	if up.Authority.Valid(tok) {
		t.Fatal("a revoked token is still valid")
	}
	// Expired tokens are forgotten: a demo that runs for days does not grow.
	up.Authority.Lifetime = time.Millisecond
	for range 3000 {
		token(t, up, "secret")
	}
	up.Authority.mu.Lock()
	n := len(up.Authority.tokens)
	up.Authority.mu.Unlock()
	if n > 1100 {
		t.Fatalf("%d tokens kept", n)
	}
}

// pop3 opens a POP3 session over TLS and returns a line reader.
func pop3(t *testing.T, up *Upstream) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := tls.Dial("tcp", up.POPAddr, &tls.Config{RootCAs: up.CA.Pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting %q", l)
	}
	return c, br
}

func xoauth2(user, tok string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + tok + "\x01\x01"))
}

func cmd(t *testing.T, c net.Conn, br *bufio.Reader, line string) string {
	t.Helper()
	io.WriteString(c, line+"\r\n")
	l, err := br.ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimRight(l, "\r\n")
}

// POP3 checks the token and the mailbox, caps a mailbox's sessions, and
// applies per-mailbox faults.
func TestPOP3ChecksTokens(t *testing.T) {
	up := startMock(t, Options{MailboxLimit: 1})
	tok, _, _ := token(t, up, "secret")
	c, br := pop3(t, up)
	if got := cmd(t, c, br, "AUTH XOAUTH2 "+xoauth2("a@x", tok)); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("valid token: %q", got)
	}
	c2, br2 := pop3(t, up)
	if got := cmd(t, c2, br2, "AUTH XOAUTH2 "+xoauth2("a@x", tok)); !strings.HasPrefix(got, "-ERR [IN-USE]") {
		t.Fatalf("over the mailbox limit: %q", got)
	}
	c3, br3 := pop3(t, up)
	if got := cmd(t, c3, br3, "AUTH XOAUTH2 "+xoauth2("a@x", "forged")); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("forged token: %q (want the SASL error challenge)", got)
	}
	if got := cmd(t, c3, br3, "*"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("after the challenge: %q", got)
	}
	up.SetUserFault("a@x", ResetLogin)
	c4, br4 := pop3(t, up)
	got := cmd(t, c4, br4, "AUTH XOAUTH2 "+xoauth2("a@x", tok))
	if !strings.HasPrefix(got, "error:") {
		t.Fatalf("reset fault: %q", got)
	}
	if now, peak := up.Sessions("pop3", "a@x"); now != 1 || peak != 1 {
		t.Fatalf("sessions now %d peak %d", now, peak)
	}
}

// A client that sends an endless line is disconnected, not buffered.
func TestPOP3BoundsLines(t *testing.T) {
	up := startMock(t, Options{})
	c, _ := pop3(t, up)
	junk := []byte(strings.Repeat("x", 64<<10))
	var err error
	for range 1024 { // 64 MiB at most
		if _, err = c.Write(junk); err != nil {
			break
		}
	}
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the mock took an endless line: %v", err)
	}
}

// The recorded XOAUTH2 responses are capped.
func TestRecordedResponsesAreCapped(t *testing.T) {
	up := startMock(t, Options{})
	for range 3 * maxRecorded {
		up.checkXOAUTH2([]byte("user=a@x\x01auth=Bearer t\x01\x01"))
	}
	if n := len(up.XOAUTH2Received()); n > maxRecorded {
		t.Fatalf("%d responses kept", n)
	}
}

// An IDLE that a client ends with anything but DONE, followed at once by
// commands that change the selected mailbox, leaves the mock consistent.
// go-imap does not wait for its IDLE goroutine in that case; under
// `go test -race` this test fails if the mock does not serialise them.
func TestIMAPIdleEndedWithoutDone(t *testing.T) {
	up := startMock(t, Options{})
	tok, _, _ := token(t, up, "secret")
	c, err := tls.Dial("tcp", up.IMAPAddr, &tls.Config{RootCAs: up.CA.Pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	// until reads up to the tagged answer for tag and returns it.
	until := func(tag string) string {
		t.Helper()
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %s: %v", tag, err)
			}
			if strings.HasPrefix(l, tag+" ") {
				return strings.TrimRight(l, "\r\n")
			}
		}
	}
	until("*")
	io.WriteString(c, "a AUTHENTICATE XOAUTH2 "+xoauth2("a@x", tok)+"\r\n")
	if got := until("a"); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("login: %q", got)
	}
	for i := range 40 {
		// Written in one go: the IDLE, a line that is not DONE, then a
		// CLOSE, a SELECT and a CLOSE before the IDLE goroutine has run.
		io.WriteString(c, "s SELECT INBOX\r\ni IDLE\r\nnot-done\r\nc CLOSE\r\nt SELECT INBOX\r\nu CLOSE\r\n")
		if got := until("s"); !strings.HasPrefix(got, "s OK") {
			t.Fatalf("round %d: select: %q", i, got)
		}
		if got := until("i"); !strings.HasPrefix(got, "i BAD") {
			t.Fatalf("round %d: an IDLE ended by a line other than DONE: %q", i, got)
		}
		until("c")
		if got := until("t"); !strings.HasPrefix(got, "t OK") {
			t.Fatalf("round %d: select after the IDLE: %q", i, got)
		}
		until("u")
	}
	io.WriteString(c, "z LOGOUT\r\n")
	until("z")
}
