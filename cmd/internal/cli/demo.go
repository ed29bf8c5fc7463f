package cli

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/emailproxy/emailproxy/bench/mock"
)

// The demo's account; the password is whatever the first login uses.
const (
	demoAccount = "demo@example.com"
	demoScope   = "https://outlook.office365.com/.default"
)

type demo struct {
	up         *mock.Upstream
	dir        string
	configPath string
}

func (d *demo) Close() {
	d.up.Close()
	os.RemoveAll(d.dir)
}

// startDemo runs the mock provider and writes a config pointing the proxy
// at it, in the same shape as a real Exchange Online client_credentials
// setup.
func startDemo(fl *flags, out io.Writer) (*demo, error) {
	body := []byte("From: Mock Sender <sender@example.com>\r\nTo: " + demoAccount +
		"\r\nSubject: Hello through emailproxy\r\n\r\nIf you can read this, the proxy fetched a token,\r\n" +
		"logged in upstream over TLS with XOAUTH2, and relayed the session.\r\n.A line that starts with a dot.\r\n")
	up, err := mock.Start(mock.Options{
		ClientID: "demo-client", ClientSecret: "demo-secret", Scope: demoScope,
		Mailboxes: map[string][]mock.Message{demoAccount: {{UID: "demo-1", Body: body}}},
		OnMessage: func(m mock.SMTPMessage) {
			fmt.Fprintf(out, "mock provider: accepted a message from %s to %s (%d bytes), sent as %s\n",
				m.From, strings.Join(m.To, ", "), len(m.Data), m.User)
		},
	})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "emailproxy-demo-")
	if err != nil {
		up.Close()
		return nil, err
	}
	d := &demo{up: up, dir: dir, configPath: filepath.Join(dir, "emailproxy.config")}
	imapPort, popPort, smtpPort := demoPort(1993), demoPort(1995), demoPort(1587)
	host := func(addr string) (string, string) { h, p, _ := net.SplitHostPort(addr); return h, p }
	ih, ip := host(up.IMAPAddr)
	ph, pp := host(up.POPAddr)
	sh, sp := host(up.SMTPStartTLSAddr)
	cfg := fmt.Sprintf(`[Email OAuth 2.0 Proxy configuration file]
documentation = Written by emailproxy --demo: a mock provider stands in for Exchange Online.

[IMAP-%d]
server_address = %s
server_port = %s
local_address = 127.0.0.1

[POP-%d]
server_address = %s
server_port = %s
local_address = 127.0.0.1

[SMTP-%d]
server_address = %s
server_port = %s
server_starttls = True
local_address = 127.0.0.1

[%s]
token_url = %s
oauth2_scope = %s
oauth2_flow = client_credentials
client_id = demo-client
client_secret = demo-secret
`, imapPort, ih, ip, popPort, ph, pp, smtpPort, sh, sp, demoAccount, up.TokenURL, demoScope)
	if err := os.WriteFile(d.configPath, []byte(cfg), 0o600); err != nil {
		d.Close()
		return nil, err
	}
	fmt.Fprintf(out, strings.TrimLeft(`
emailproxy demo
  mock provider: token endpoint %s, TLS IMAP %s, TLS POP3 %s,
                 SMTP %s (STARTTLS, like Exchange Online's port 587)
  config:        %s
  proxy:         IMAP on 127.0.0.1:%d, POP3 on 127.0.0.1:%d, SMTP on 127.0.0.1:%d
                 (plaintext, like a legacy app expects)

Try it with any plain client; the first password you use becomes the account's password:
  curl -v --user '%s:any-password' 'pop3://127.0.0.1:%d/1'
  curl -v --user '%s:any-password' 'imap://127.0.0.1:%d/INBOX;UID=1'
  echo 'Subject: hello' | curl -v --user '%s:any-password' --mail-from %s \
    --mail-rcpt someone@example.com --upload-file - 'smtp://127.0.0.1:%d'
or by hand:  nc 127.0.0.1 %d   then   USER %s / PASS any-password / STAT / RETR 1 / QUIT

Press Ctrl-C to stop.
`, "\n"), up.TokenURL, up.IMAPAddr, up.POPAddr, up.SMTPStartTLSAddr, d.configPath, imapPort, popPort, smtpPort,
		demoAccount, popPort, demoAccount, imapPort, demoAccount, demoAccount, smtpPort, popPort, demoAccount)
	return d, nil
}

// demoPort returns want if it is free on 127.0.0.1, else any free port.
func demoPort(want int) int {
	for _, p := range []int{want, 0} {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			return port
		}
	}
	return want
}
