package upstream

// POP3's upstream side: greeting, STLS, CAPA, and AUTH XOAUTH2 (or
// OAUTHBEARER).

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/emailproxy/emailproxy/config"
)

// popCapa reads CAPA (or takes what the dialer remembers); a server
// without CAPA leaves caps empty.
func (u *Conn) popCapa() error {
	if u.capsKnown() {
		return nil
	}
	u.Caps = nil
	if err := u.send(u.TLS, []byte("CAPA\r\n"), -1); err != nil {
		return err
	}
	line, err := u.readLine()
	if err != nil {
		return err
	}
	u.asked = true
	if !strings.HasPrefix(string(line), "+OK") {
		return nil
	}
	for range maxCapLines {
		line, err := u.readLine()
		if err != nil {
			return err
		}
		if string(line) == "." {
			return nil
		}
		u.Caps = append(u.Caps, string(line))
	}
	return errTooManyCapLines
}

// authPOP sends AUTH XOAUTH2 (or OAUTHBEARER) and returns the +OK line to
// relay: in two steps (RFC 5034), the form Exchange Online documents, or
// with the response on the AUTH line (initialResponse), which saves a
// round trip on servers that take it.
func (u *Conn) authPOP(srv *config.Server, user, token string, initialResponse bool) ([]byte, error) {
	mech := oauthMechanism(popMechanisms(u.Caps), srv, user, token)
	cmd := []byte("AUTH " + mech.name + "\r\n")
	secretAt := -1
	if initialResponse {
		cmd = append(append([]byte("AUTH "+mech.name+" "), mech.ir...), '\r', '\n')
		secretAt = len("AUTH " + mech.name + " ")
	}
	if err := u.send(u.TLS, cmd, secretAt); err != nil {
		return nil, err
	}
	sent := initialResponse
	for i := 0; i < maxAuthLines; i++ {
		line, err := u.readLine()
		if err != nil {
			return nil, err
		}
		s := string(line)
		switch {
		case strings.HasPrefix(s, "+OK"):
			return append(append([]byte{}, line...), '\r', '\n'), nil
		case strings.HasPrefix(s, "-ERR") && !sent:
			// Refused before the token was sent (a warm connection the
			// server timed out, a mailbox it throttles): not a verdict on
			// the token.
			if t := throttledSaid(strings.TrimSpace(s[4:])); t != nil {
				return nil, t
			}
			return nil, fmt.Errorf("server refused AUTH: %q", truncate(line))
		case strings.HasPrefix(s, "-ERR"):
			return nil, mech.verdict(refusal(strings.TrimSpace(s[4:]), pop3Busy...))
		case strings.HasPrefix(s, "+") && !sent:
			sent = true
			if err := u.send(u.TLS, append(mech.ir, '\r', '\n'), 0); err != nil {
				return nil, err
			}
		case strings.HasPrefix(s, "+"):
			// A SASL error challenge: cancel (RFC 5034 §4), which every
			// server must answer with -ERR at once; some wait for more
			// than an empty line.
			if err := u.send(u.TLS, []byte("*\r\n"), -1); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unexpected response %q", truncate(line))
		}
	}
	return nil, errors.New("too many lines while authenticating")
}

type popDialect struct{}

func (popDialect) upgrade(u *Conn, raw net.Conn, greeting []byte) error {
	if !strings.HasPrefix(string(greeting), "+OK") {
		return fmt.Errorf("unexpected greeting %q", truncate(greeting))
	}
	if err := u.send(raw, []byte("STLS\r\n"), -1); err != nil {
		return err
	}
	line, err := u.readLine()
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(line), "+OK") {
		return fmt.Errorf("STLS refused: %q", truncate(line))
	}
	return nil
}

func (popDialect) greet(u *Conn, afterSTARTTLS bool) error {
	if afterSTARTTLS {
		return u.popCapa() // no new greeting after TLS
	}
	line, err := u.readLine()
	if err != nil {
		return err
	}
	u.Greeting = append([]byte{}, line...)
	if !strings.HasPrefix(string(line), "+OK") {
		return fmt.Errorf("unexpected greeting %q", truncate(line))
	}
	return u.popCapa()
}

func (popDialect) authenticate(u *Conn, srv *config.Server, _, user, token string, initialResponse bool) ([]byte, error) {
	return u.authPOP(srv, user, token, initialResponse)
}

// popMechanisms are the SASL mechanisms a CAPA answer names (its SASL
// line).
func popMechanisms(caps []string) []string {
	for _, c := range caps {
		if words := strings.Fields(c); len(words) > 0 && strings.EqualFold(words[0], "SASL") {
			return words[1:]
		}
	}
	return nil
}
