package engine

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/smtp"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/emailproxy/emailproxy/bench/mock"
)

// bigMail is a message with 8-bit text, lines starting with dots and a
// 10 MB base64 attachment, CRLF throughout.
func bigMail(attach int) []byte {
	blob := make([]byte, attach)
	rand.Read(blob)
	enc := base64.StdEncoding.EncodeToString(blob)
	var b bytes.Buffer
	b.WriteString("From: " + testAccount + "\r\nTo: someone@example.net\r\nSubject: Grüße\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnaïve café €\r\n--XX\r\n" +
		"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n--XX--\r\n")
	return b.Bytes()
}

var smtpServers = []serverSpec{
	{name: "smtp465", proto: "SMTP", upstream: func(up *mock.Upstream) string { return up.SMTPAddr }},
	{name: "smtp587", proto: "SMTP", upstream: func(up *mock.Upstream) string { return up.SMTPStartTLSAddr }, keys: "server_starttls = True"},
	{name: "smtpLegacy", proto: "SMTP", upstream: func(up *mock.Upstream) string { return up.SMTPStartTLSAddr }, keys: "starttls = True"},
}

// dialSMTPClient connects net/smtp's client to the proxy, says EHLO and
// checks what the proxy offers before login: PLAIN and LOGIN, and never
// the server's STARTTLS (the client's side is plaintext).
func dialSMTPClient(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Fatalf("AUTH advertised: %v %q", ok, mechs)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Fatal("upstream STARTTLS leaked to the client")
	}
	return c
}

// smtpSend sends body from from to each of to in one transaction.
func smtpSend(t *testing.T, c *smtp.Client, from string, body []byte, to ...string) {
	t.Helper()
	if err := c.Mail(from); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(body)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSMTPNetSMTPClient(t *testing.T) {
	env := startEnv(t, envOptions{servers: smtpServers})
	msg := bigMail(10 << 20)
	for _, name := range []string{"smtp465", "smtp587", "smtpLegacy"} {
		t.Run(name, func(t *testing.T) {
			before := len(env.up.SMTPMessages())
			c := dialSMTPClient(t, env.addrs[name])
			for _, ext := range []string{"8BITMIME", "PIPELINING", "CHUNKING", "SMTPUTF8", "SIZE", "ENHANCEDSTATUSCODES"} {
				if ok, _ := c.Extension(ext); !ok {
					t.Errorf("extension %s not kept", ext)
				}
			}
			if err := c.Auth(smtp.PlainAuth("", testAccount, testPassword, "127.0.0.1")); err != nil {
				t.Fatalf("auth: %v", err)
			}
			smtpSend(t, c, testAccount, msg, "someone@example.net")
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			got := env.up.SMTPMessages()
			if len(got) != before+1 {
				t.Fatalf("messages upstream: %d", len(got))
			}
			m := got[len(got)-1]
			if m.User != testAccount || m.From != testAccount || len(m.To) != 1 {
				t.Fatalf("envelope %+v", m)
			}
			if !bytes.Equal(m.Data, msg) {
				t.Fatalf("message differs upstream: %d bytes, want %d", len(m.Data), len(msg))
			}
		})
	}
	for _, s := range env.up.XOAUTH2Received() {
		if !strings.HasPrefix(s, "user="+testAccount+"\x01auth=Bearer mock-") {
			t.Fatalf("XOAUTH2 %q", s)
		}
	}
}

// emersion/go-smtp is a second, independent client; it logs in with AUTH
// LOGIN, and the upstream here offers only OAUTHBEARER.
func TestSMTPGoSMTPClientOAuthBearer(t *testing.T) {
	env := startEnv(t, envOptions{servers: smtpServers, oauthBearer: true})
	c, err := gosmtp.Dial(env.addrs["smtp587"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewLoginClient(testAccount, testPassword)); err != nil {
		t.Fatalf("auth: %v", err)
	}
	body := "Subject: x\r\n\r\n.dot\r\n"
	if err := c.SendMail(testAccount, []string{"a@example.net", "b@example.net"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	msgs := env.up.SMTPMessages()
	if len(msgs) != 1 || string(msgs[0].Data) != body || len(msgs[0].To) != 2 {
		t.Fatalf("upstream got %+v", msgs)
	}
}

// Raw session: HELO advertises nothing, AUTH before EHLO is refused, a
// wrong password is refused locally, then pipelined MAIL/RCPT/BDAT after a
// pipelined AUTH arrive in order.
func TestSMTPRawPipeliningAndBDAT(t *testing.T) {
	env := startEnv(t, envOptions{servers: smtpServers})
	r := dialRaw(t, env.addrs["smtp465"])
	if g := r.line(); !strings.HasPrefix(g, "220 smtp.mock.example") {
		t.Fatalf("greeting %q", g)
	}
	plain := func(pass string) string {
		return base64.StdEncoding.EncodeToString([]byte("\x00" + testAccount + "\x00" + pass))
	}
	r.send("AUTH PLAIN " + plain(testPassword) + "\r\n")
	if l := r.line(); l != "503 5.5.1 Send EHLO first" {
		t.Fatalf("AUTH before EHLO: %q", l)
	}
	r.send("HELO client.example\r\n")
	if l := r.line(); l != "250 smtp.mock.example" {
		t.Fatalf("HELO %q", l)
	}
	r.send("AUTH PLAIN " + plain(testPassword) + "\r\n")
	if l := r.line(); !strings.HasPrefix(l, "235 ") {
		t.Fatalf("AUTH after HELO %q", l)
	}
	r.send("QUIT\r\n")
	r.until("221")

	r = dialRaw(t, env.addrs["smtp465"])
	r.line()
	r.send("EHLO c\r\nAUTH PLAIN " + plain("wrong") + "\r\n")
	lines := r.until("535")
	if !strings.Contains(lines[len(lines)-1], "incorrect") {
		t.Fatalf("wrong password: %q", lines)
	}
	body := "Subject: bdat\r\n\r\nchunk one, "
	body2 := "chunk two\r\n"
	r.send("AUTH PLAIN " + plain(testPassword) + "\r\nMAIL FROM:<" + testAccount + ">\r\nRCPT TO:<x@example.net>\r\n" +
		fmt.Sprintf("BDAT %d\r\n%sBDAT %d LAST\r\n%sQUIT\r\n", len(body), body, len(body2), body2))
	want := []string{"235", "250", "250", "250", "250", "221"}
	for _, w := range want {
		if l := r.line(); !strings.HasPrefix(l, w) {
			t.Fatalf("want %s, got %q", w, l)
		}
	}
	msgs := env.up.SMTPMessages()
	if len(msgs) != 1 || string(msgs[0].Data) != body+body2 {
		t.Fatalf("BDAT message %+v", msgs)
	}
}

func TestSMTPTokenRefusedAndUnavailable(t *testing.T) {
	env := startEnv(t, envOptions{servers: smtpServers})
	waitTokens(t, env, 1)
	env.up.SetRejectTokens(true)
	r := dialRaw(t, env.addrs["smtp587"])
	r.line()
	r.send("EHLO c\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00pw")) + "\r\n")
	lines := r.until("454")
	if !strings.Contains(lines[len(lines)-1], "refused the OAuth 2.0 token") {
		t.Fatalf("%q", lines)
	}
	waitTokens(t, env, 2) // the fresh token for the next try
	env.up.SetRejectTokens(false)
	r.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testAccount+"\x00pw")) + "\r\n")
	if l := r.line(); !strings.HasPrefix(l, "235") {
		t.Fatalf("retry %q", l)
	}
}
