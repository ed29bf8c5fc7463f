package upstream

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/sasl"
)

// RefusedError is a server's refusal of the token; Text is what it said.
type RefusedError struct{ Text string }

func (e *RefusedError) Error() string { return "server rejected the token: " + e.Text }

// refusal is the error for a server's "no" to an authentication: a
// *Throttled when it says it throttles the mailbox, a *Failure when it
// says by a response code that it is busy (the mailbox has too many
// sessions, the server is unavailable): neither is a verdict on the
// token, and neither must make the proxy drop it; else a *RefusedError.
// codes are the protocol's busy codes.
func refusal(text string, codes ...string) error {
	if t := throttledSaid(text); t != nil {
		return t
	}
	upper := strings.ToUpper(strings.TrimSpace(text))
	for _, c := range codes {
		if strings.HasPrefix(upper, "["+c+"]") || strings.HasPrefix(upper, "["+c+" ") {
			return &Failure{"the server is busy: " + text}
		}
	}
	return &RefusedError{Text: text}
}

// Busy response codes: POP3 (RFC 2449, RFC 3206) and IMAP (RFC 5530).
var (
	pop3Busy = []string{"IN-USE", "SYS/TEMP", "LOGIN-DELAY"}
	imapBusy = []string{"INUSE", "UNAVAILABLE", "LIMIT"}
)

// mechanism is the SASL mechanism a login uses upstream.
type mechanism struct {
	name string // XOAUTH2 or OAUTHBEARER
	ir   []byte // the initial response (base64), holding the token
	// abort is the response to a SASL error challenge that ends the
	// exchange and gets the server's final answer.
	abort string
	// unoffered is what the server offers instead, when its list of
	// mechanisms leaves out both OAuth 2.0 ones ("": it names one, or
	// names none at all).
	unoffered string
}

// oauthMechanism picks XOAUTH2, which Exchange Online and Gmail take (and
// a server that names no mechanism is assumed to), or OAUTHBEARER (RFC
// 7628) when the server offers that and not XOAUTH2. offered is the
// server's list of SASL mechanisms (nil: it names none).
func oauthMechanism(offered []string, srv *config.Server, user, token string) mechanism {
	if hasWord(offered, "OAUTHBEARER") && !hasWord(offered, "XOAUTH2") {
		// A lone %x01 ends a failed exchange (RFC 7628 §3.2.3).
		return mechanism{name: "OAUTHBEARER", ir: sasl.OAUTHBEARER(user, srv.ServerAddress, srv.ServerPort, token), abort: "AQ==\r\n"}
	}
	m := mechanism{name: "XOAUTH2", ir: sasl.XOAUTH2(user, token), abort: "\r\n"}
	if len(offered) > 0 && !hasWord(offered, "XOAUTH2") {
		m.unoffered = strings.Join(offered, " ")
	}
	return m
}

// verdict is err, except that a refusal when the server offers no OAuth
// 2.0 mechanism says so: that is a server that takes no OAuth 2.0 login
// (server_address names the wrong server), not a bad token to replace.
func (m mechanism) verdict(err error) error {
	var rej *RefusedError
	if m.unoffered == "" || !errors.As(err, &rej) {
		return err
	}
	return &Failure{fmt.Sprintf("the server offers no OAuth 2.0 login (its SASL mechanisms: %s) and refused %s: %s; check that server_address is the provider's mail server",
		truncate([]byte(m.unoffered)), m.name, rej.Text)}
}

// Authenticate logs in on u with XOAUTH2 (or OAUTHBEARER, when that is
// all the server offers) as srv's protocol does it, and returns the
// server's answer to relay to the client; for IMAP it carries the
// client's tag.
func (u *Conn) Authenticate(srv *config.Server, tag, user, token string, pop3InitialResponse bool) ([]byte, error) {
	return dialectOf(srv.Protocol).authenticate(u, srv, tag, user, token, pop3InitialResponse)
}

// dialect is what differs between the protocols on the upstream side, one
// file each (imap.go, pop3.go, smtp.go).
type dialect interface {
	// upgrade runs the plaintext part of STARTTLS, the greeting line read.
	upgrade(u *Conn, raw net.Conn, greeting []byte) error
	// greet reads the greeting and the capabilities over TLS (after
	// STARTTLS: the capabilities only, asked again).
	greet(u *Conn, afterSTARTTLS bool) error
	authenticate(u *Conn, srv *config.Server, tag, user, token string, pop3InitialResponse bool) ([]byte, error)
}

func dialectOf(proto config.Protocol) dialect {
	switch proto {
	case config.IMAP:
		return imapDialect{}
	case config.POP:
		return popDialect{}
	}
	return smtpDialect{}
}

// maxAuthLines bounds the lines an upstream may send while authenticating.
const maxAuthLines = 64

// maxCapLines bounds the lines of an upstream's answer to CAPA or
// CAPABILITY (a dozen at the big providers): a server that never ends
// its list fails the connection instead of growing the proxy.
const maxCapLines = 256

var errTooManyCapLines = errors.New("the server's capability list does not end")
