package engine

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
)

// With a real SMTP server, Dovecot's submission service, on both kinds
// of port: a message sent through the proxy with net/smtp arrives whole
// (dot-stuffing, 8-bit text, a megabyte attachment), a second message
// follows in the same session after RSET, BDAT chunks sent in one write
// arrive as one message, and when the server refuses the token the
// client gets a temporary failure and the next login a fresh token.
func TestDovecotSubmission(t *testing.T) {
	dv, authority := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{})
	msg := bigMail(1 << 20)
	for _, port := range []struct{ name, addr string }{{"starttls", px.smtpStartTLS}, {"implicit-tls", px.smtp465}} {
		t.Run(port.name, func(t *testing.T) {
			before := len(dv.relay.messages())
			c := dialSMTPClient(t, port.addr)
			if err := c.Auth(smtp.PlainAuth("", dovecotUser, "pw", "127.0.0.1")); err != nil {
				t.Fatalf("auth: %v\n%s", err, px.logs.String())
			}
			smtpSend(t, c, dovecotUser, msg, "someone@example.net")
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
			second := []byte("From: " + dovecotUser + "\r\nSubject: second\r\n\r\n.\r\n..\r\nend\r\n")
			smtpSend(t, c, dovecotUser, second, "a@example.net", "b@example.net")
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			got := dv.relay.messages()[before:]
			if len(got) != 2 {
				t.Fatalf("messages relayed by Dovecot: %d, want 2", len(got))
			}
			// Dovecot puts its Received header first; the rest is the
			// message as the client wrote it.
			for i, want := range [][]byte{msg, second} {
				if !bytes.HasPrefix(got[i].data, []byte("Received: ")) || !bytes.HasSuffix(got[i].data, want) {
					t.Fatalf("message %d relayed differs: %d bytes, sent %d", i+1, len(got[i].data), len(want))
				}
			}
			if got[0].from != dovecotUser || strings.Join(got[1].to, ",") != "a@example.net,b@example.net" {
				t.Fatalf("envelopes: %+v / %+v", got[0].from, got[1].to)
			}
		})
	}

	t.Run("bdat", func(t *testing.T) {
		before := len(dv.relay.messages())
		r := dialRaw(t, px.smtp465)
		r.c.SetDeadline(time.Now().Add(20 * time.Second))
		r.line()
		r.send("EHLO c\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+dovecotUser+"\x00pw")) + "\r\n")
		if got := r.until("235"); len(got) == 0 {
			t.Fatal("no login")
		}
		head, body := "Subject: chunks\r\n\r\n", "first\r\nsecond\r\n"
		r.send(fmt.Sprintf("MAIL FROM:<%s>\r\nRCPT TO:<c@example.net>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%s",
			dovecotUser, len(head), head, len(body), body))
		for i := 0; i < 4; i++ {
			if l := r.line(); !strings.HasPrefix(l, "250") {
				t.Fatalf("answer %d to the pipelined BDAT transaction: %q", i+1, l)
			}
		}
		r.send("QUIT\r\n")
		r.until("221")
		got := dv.relay.messages()[before:]
		if len(got) != 1 || !bytes.HasSuffix(got[0].data, []byte(head+body)) {
			t.Fatalf("relayed: %+v", got)
		}
	})

	t.Run("token-refused", func(t *testing.T) {
		requests := authority.Requests()
		authority.RevokeAll()
		login := func() string {
			r := dialRaw(t, px.smtpStartTLS)
			// A bound, not a speed: far below the login timeout (30 s),
			// above Dovecot's failure delay (2 s) and one token fetch.
			r.c.SetDeadline(time.Now().Add(10 * time.Second))
			r.line()
			r.send("EHLO c\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+dovecotUser+"\x00pw")) + "\r\n")
			answer := r.line()
			for strings.HasPrefix(answer, "250") { // EHLO's
				answer = r.line()
			}
			r.send("QUIT\r\n")
			return answer
		}
		if answer := login(); !strings.HasPrefix(answer, "454") || !strings.Contains(answer, "refused the OAuth 2.0 token") {
			t.Fatalf("AUTH with a revoked token: %q", answer)
		}
		waitFor(t, "a fresh token", func() bool { return authority.Requests() > requests })
		time.Sleep(50 * time.Millisecond) // the provider stores it
		if answer := login(); !strings.HasPrefix(answer, "235") {
			t.Fatalf("AUTH with the fresh token: %q\n%s", answer, px.logs.String())
		}
	})
}

// relaySink is the SMTP server Dovecot's submission service relays to:
// it takes every message and keeps it.
type relaySink struct {
	port int
	mu   sync.Mutex
	msgs []relayed
}

type relayed struct {
	from string
	to   []string
	data []byte
}

func startRelaySink(t *testing.T) *relaySink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relaySink{port: ln.Addr().(*net.TCPAddr).Port}
	srv := gosmtp.NewServer(r)
	srv.Domain = "relay.example.test"
	srv.MaxMessageBytes = 64 << 20
	srv.ErrorLog = discardLog{}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return r
}

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}

// messages returns what the sink has taken so far.
func (r *relaySink) messages() []relayed {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]relayed(nil), r.msgs...)
}

func (r *relaySink) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &sinkSession{sink: r}, nil
}

type sinkSession struct {
	sink *relaySink
	msg  relayed
}

func (s *sinkSession) Mail(from string, _ *gosmtp.MailOptions) error {
	s.msg = relayed{from: from}
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.msg.to = append(s.msg.to, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		return err
	}
	s.msg.data = b.Bytes()
	s.sink.mu.Lock()
	s.sink.msgs = append(s.sink.msgs, s.msg)
	s.sink.mu.Unlock()
	return nil
}

func (s *sinkSession) Reset()        { s.msg = relayed{} }
func (s *sinkSession) Logout() error { return nil }

// SMTP session reuse against a real server: each port's first session
// logs in to Dovecot, the next ones take the session its QUIT left, with
// a DATA message holding command-like lines and a BDAT one; Dovecot
// relays every message whole.
func TestDovecotSubmissionSessionReuse(t *testing.T) {
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{SMTPSessionReuse: time.Minute})
	body := "From: " + dovecotUser + "\r\nSubject: reuse\r\n\r\nQUIT\r\nRSET\r\n.\r\n..\r\n"
	for _, port := range []struct{ name, addr string }{{"starttls", px.smtpStartTLS}, {"implicit-tls", px.smtp465}} {
		t.Run(port.name, func(t *testing.T) {
			before, reuse := len(dv.relay.messages()), px.srv.linger.Snapshot()
			for i := range 3 {
				r := dialRaw(t, port.addr)
				r.line()
				r.send("EHLO c\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+dovecotUser+"\x00pw")) + "\r\n")
				r.until("235")
				msg := fmt.Sprintf("%s%d\r\n", body, i)
				r.send("MAIL FROM:<" + dovecotUser + ">\r\nRCPT TO:<r@example.net>\r\n")
				if i == 1 {
					r.send(fmt.Sprintf("BDAT %d LAST\r\n%sQUIT\r\n", len(msg), msg))
				} else {
					r.send("DATA\r\n")
					r.until("354")
					r.send(strings.ReplaceAll(msg, "\r\n.", "\r\n..") + ".\r\nQUIT\r\n")
				}
				if l := r.until("221"); !strings.HasPrefix(l[len(l)-2], "250") {
					t.Fatalf("session %d: %q", i, l)
				}
				waitFor(t, "the session to be kept", func() bool { return px.srv.linger.Snapshot().Parked == reuse.Parked+i+1 })
			}
			if got := px.srv.linger.Snapshot().Reused - reuse.Reused; got != 2 {
				t.Fatalf("%d sessions reused, want 2", got)
			}
			got := dv.relay.messages()[before:]
			if len(got) != 3 {
				t.Fatalf("Dovecot relayed %d messages, want 3", len(got))
			}
			for i, m := range got {
				if !bytes.HasSuffix(m.data, []byte(fmt.Sprintf("%s%d\r\n", body, i))) {
					t.Fatalf("message %d relayed as %q", i, m.data)
				}
			}
		})
	}
}
