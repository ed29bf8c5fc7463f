package engine

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// exchangeIMAP is a scripted TLS IMAP server that behaves like Exchange
// Online: a greeting without capabilities, no SASL-IR, two-step
// AUTHENTICATE XOAUTH2, and untagged lines before the tagged OK.
func exchangeIMAP(t *testing.T, env *proxyEnv, seen chan<- string) string {
	return scriptedUpstream(t, env, func(c net.Conn, br *bufio.Reader) {
		fmt.Fprint(c, "* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADEAMgBDAEEAMAAwADEAMgAuAG4AYQBtAHAAcgBkADEAMgAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]\r\n")
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			switch {
			case strings.EqualFold(cmd, "CAPABILITY"):
				fmt.Fprintf(c, "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\n%s OK CAPABILITY completed.\r\n", tag)
			case strings.EqualFold(cmd, "AUTHENTICATE XOAUTH2"):
				fmt.Fprint(c, "+ \r\n")
				resp, _ := br.ReadString('\n')
				raw, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(resp))
				seen <- string(raw)
				fmt.Fprintf(c, "* CAPABILITY IMAP4 IMAP4rev1 IDLE\r\n%s OK AUTHENTICATE completed.\r\n", tag)
			case strings.EqualFold(cmd, "LOGOUT"):
				fmt.Fprintf(c, "* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n%s OK LOGOUT completed.\r\n", tag)
				return
			default:
				fmt.Fprintf(c, "%s BAD Command Error. 12\r\n", tag)
			}
		}
	})
}

// scriptedUpstream runs serve for each connection to a TLS server with a
// certificate of env's mock CA (for 10 s at most), and returns its address.
func scriptedUpstream(t *testing.T, env *proxyEnv, serve func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	leaf, err := env.up.CA.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf}})
	if err != nil {
		t.Fatal(err)
	}
	acceptEach(t, ln, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		serve(c, bufio.NewReader(c))
	})
	return ln.Addr().String()
}

func TestExchangeStyleUpstream(t *testing.T) {
	// Start once to get a CA and token endpoint, then point IMAP at the script.
	base := startEnv(t, envOptions{})
	seen := make(chan string, 4)
	addr := exchangeIMAP(t, base, seen)
	env := startEnv(t, envOptions{imapServer: addr, ca: base.up.CA})

	r := dialRaw(t, env.imapAddr)
	g := r.line()
	if g != "* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADEAMgBDAEEAMAAwADEAMgAuAG4AYQBtAHAAcgBkADEAMgAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]" {
		t.Fatalf("greeting %q", g)
	}
	r.send("a CAPABILITY\r\n")
	if l := r.line(); l != "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+" {
		t.Fatalf("capabilities %q", l)
	}
	r.line()
	r.send("b LOGIN " + testAccount + " pw\r\n")
	if l := r.line(); l != "* CAPABILITY IMAP4 IMAP4rev1 IDLE" {
		t.Fatalf("untagged line before OK not relayed: %q", l)
	}
	if l := r.line(); l != "b OK AUTHENTICATE completed." {
		t.Fatalf("login answer %q", l)
	}
	select {
	case s := <-seen:
		if !strings.HasPrefix(s, "user="+testAccount+"\x01auth=Bearer mock-") {
			t.Fatalf("XOAUTH2 %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no XOAUTH2 upstream")
	}
	r.send("c LOGOUT\r\n")
	if l := r.line(); !strings.HasPrefix(l, "* BYE Microsoft Exchange") {
		t.Fatalf("relay %q", l)
	}
}
