package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// The mechanism follows what the server offers: XOAUTH2, OAUTHBEARER when
// that is the only OAuth 2.0 one, and XOAUTH2 when the server names none.
// A server that names mechanisms but no OAuth 2.0 one and refuses the
// login is a wrong server_address, not a refused token.
func TestMechanismFollowsTheServer(t *testing.T) {
	ca, leaf := testCA(t)
	var handlers sync.WaitGroup
	t.Cleanup(handlers.Wait)
	type script struct {
		proto    config.Protocol
		caps     string // what the server says before AUTH
		refuse   string // its answer to the login
		wantMech string // the mechanism the proxy must use
		want     string // "ok", "refused" or "failure"
		wantText string // in the error
	}
	for _, c := range []script{
		{config.IMAP, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2] hi\r\n", "", "XOAUTH2", "ok", ""},
		{config.IMAP, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=OAUTHBEARER] hi\r\n", "", "OAUTHBEARER", "ok", ""},
		{config.IMAP, "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", "", "XOAUTH2", "ok", ""},
		{config.IMAP, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hi\r\n", "NO [AUTHENTICATIONFAILED] Invalid token", "XOAUTH2", "refused", ""},
		{config.IMAP, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN] hi\r\n", "NO Unsupported authentication mechanism.", "XOAUTH2", "failure",
			"the server offers no OAuth 2.0 login (its SASL mechanisms: PLAIN LOGIN) and refused XOAUTH2: Unsupported authentication mechanism."},
		{config.POP, "+OK hi\r\n|+OK\r\nSASL OAUTHBEARER\r\n.\r\n", "", "OAUTHBEARER", "ok", ""},
		{config.POP, "+OK hi\r\n|+OK\r\nSASL PLAIN\r\nUSER\r\n.\r\n", "-ERR Unknown mechanism", "XOAUTH2", "failure", "(its SASL mechanisms: PLAIN)"},
		{config.SMTP, "220 hi\r\n|250-x\r\n250 AUTH PLAIN LOGIN\r\n", "504 5.5.4 Unrecognized authentication type", "XOAUTH2", "failure", "(its SASL mechanisms: PLAIN LOGIN)"},
		{config.SMTP, "220 hi\r\n|250-x\r\n250 AUTH PLAIN XOAUTH2\r\n", "535 5.7.3 Authentication unsuccessful", "XOAUTH2", "refused", ""},
	} {
		greeting, capa, _ := strings.Cut(c.caps, "|")
		got := make(chan string, 1)
		addr := serveTLS(t, &tls.Config{Certificates: []tls.Certificate{leaf}}, func(tc *tls.Conn) {
			handlers.Add(1)
			defer handlers.Done()
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(tc)
			tc.Write([]byte(greeting))
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				words := strings.Fields(line)
				switch {
				case len(words) == 0:
				case words[0] == "CAPA" || words[0] == "EHLO":
					tc.Write([]byte(capa))
				case c.proto == config.POP && words[0] == "AUTH" && len(words) == 2:
					got <- words[1]
					tc.Write([]byte("+ \r\n"))
					br.ReadString('\n')
				case c.proto != config.POP && (words[0] == "AUTH" || len(words) > 2 && words[1] == "AUTHENTICATE"):
					mech := words[1]
					if words[0] != "AUTH" {
						mech = words[2]
					}
					got <- mech
				default:
					return
				}
				if len(got) == 1 {
					answer := map[config.Protocol]string{config.IMAP: "L1 OK done", config.POP: "+OK done", config.SMTP: "235 done"}[c.proto]
					if c.refuse != "" {
						answer = c.refuse
						if c.proto == config.IMAP {
							answer = "L1 " + answer
						}
					}
					tc.Write([]byte(answer + "\r\n"))
				}
			}
		})
		_, port, _ := net.SplitHostPort(addr)
		cs := &config.Server{Protocol: c.proto, ServerAddress: "localhost", ServerPort: atoi(t, port)}
		side := &Side{Srv: cs, Dialer: NewDialer(cs, ca.Pool, 5*time.Second), Gates: NewGates(0), Learn: func(*Conn) {}}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		sess, err := side.Open(ctx, Request{Tag: "L1", User: "u@example.test", Token: "t"})
		cancel()
		name := string(c.proto) + " " + strings.TrimSpace(strings.ReplaceAll(c.caps, "\r\n", " "))
		var f *Failure
		var rej *RefusedError
		switch {
		case c.want == "ok" && err == nil:
			sess.Conn.Close()
		case c.want == "refused" && errors.As(err, &rej):
		case c.want == "failure" && errors.As(err, &f) && strings.Contains(f.Text, c.wantText):
		default:
			t.Errorf("%s: %v, want %s %q", name, err, c.want, c.wantText)
		}
		select {
		case m := <-got:
			if m != c.wantMech {
				t.Errorf("%s: the proxy used %s, want %s", name, m, c.wantMech)
			}
		default:
			t.Errorf("%s: no login reached the server", name)
		}
	}
}
