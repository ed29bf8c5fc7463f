package upstream

// IMAP's upstream side: greeting, STARTTLS, CAPABILITY, and
// AUTHENTICATE XOAUTH2 (or OAUTHBEARER) with the client's tag.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/imap"
)

// expectIMAPOK sends a command and waits for its tagged OK.
func (u *Conn) expectIMAPOK(w io.Writer, cmd, tag string) error {
	if err := u.send(w, []byte(cmd), -1); err != nil {
		return err
	}
	for i := 0; i < maxAuthLines; i++ {
		line, err := u.readLine()
		if err != nil {
			return err
		}
		if st, t, _ := imap.ParseResponse(line); string(t) == tag {
			if st != imap.OK {
				return fmt.Errorf("%s refused: %q", strings.Fields(cmd)[1], truncate(line))
			}
			return nil
		}
	}
	return errors.New("no answer")
}

func (u *Conn) imapCapability() error {
	if u.capsKnown() {
		return nil
	}
	u.Caps = nil
	if err := u.send(u.TLS, []byte("C0 CAPABILITY\r\n"), -1); err != nil {
		return err
	}
	for range maxCapLines {
		line, err := u.readLine()
		if err != nil {
			return err
		}
		if caps, ok := imap.ParseCapabilityLine(line); ok {
			u.Caps = caps
			continue
		}
		if st, tag, _ := imap.ParseResponse(line); string(tag) == "C0" {
			if st != imap.OK {
				return fmt.Errorf("CAPABILITY failed: %q", truncate(line))
			}
			u.asked = true
			return nil
		}
	}
	return errTooManyCapLines
}

// authIMAP sends AUTHENTICATE XOAUTH2 (or OAUTHBEARER) with the client's
// tag and returns what to relay to the client on success: the untagged
// lines and the tagged OK, in the order the server sent them.
func (u *Conn) authIMAP(srv *config.Server, tag, user, token string) ([]byte, error) {
	mech := oauthMechanism(imapMechanisms(u.Caps), srv, user, token)
	saslIR := imap.HasCapability(u.Caps, "SASL-IR")
	ir := mech.ir
	cmd := make([]byte, 0, len(tag)+len(ir)+32)
	cmd = append(cmd, tag...)
	cmd = append(cmd, " AUTHENTICATE "...)
	cmd = append(cmd, mech.name...)
	secretAt := -1
	if saslIR {
		cmd = append(cmd, ' ')
		secretAt = len(cmd)
		cmd = append(cmd, ir...)
	}
	cmd = append(cmd, "\r\n"...)
	if err := u.send(u.TLS, cmd, secretAt); err != nil {
		return nil, err
	}
	sentIR := saslIR
	var reply []byte
	for i := 0; i < maxAuthLines; i++ {
		line, err := u.readLine()
		if err != nil {
			return nil, err
		}
		st, rtag, text := imap.ParseResponse(line)
		switch {
		case st == imap.Continuation && !sentIR:
			sentIR = true
			if err := u.send(u.TLS, append(ir, '\r', '\n'), 0); err != nil {
				return nil, err
			}
		case st == imap.Continuation:
			// A SASL error challenge (base64 JSON, as Gmail and Exchange send):
			// answer as the mechanism says to get the final result.
			if err := u.send(u.TLS, []byte(mech.abort), -1); err != nil {
				return nil, err
			}
		case st == imap.Untagged && len(line) >= 5 && strings.EqualFold(string(line[:5]), "* BYE"):
			// The server is closing (a warm connection it timed out, or a
			// mailbox it throttles): not a verdict on the token.
			if t := throttledSaid(string(line[5:])); t != nil {
				return nil, t
			}
			return nil, fmt.Errorf("server said %q", truncate(line))
		case st == imap.Untagged:
			reply = append(append(reply, line...), '\r', '\n')
		case string(rtag) == tag && st == imap.OK:
			return append(append(reply, line...), '\r', '\n'), nil
		case string(rtag) == tag:
			return nil, mech.verdict(refusal(string(text), imapBusy...))
		default:
			return nil, fmt.Errorf("unexpected response %q", truncate(line))
		}
	}
	return nil, errors.New("too many lines while authenticating")
}

// imapMechanisms are the SASL mechanisms a capability list names (AUTH=).
func imapMechanisms(caps []string) []string {
	var out []string
	for _, c := range caps {
		if len(c) > 5 && strings.EqualFold(c[:5], "AUTH=") {
			out = append(out, c[5:])
		}
	}
	return out
}

type imapDialect struct{}

func (imapDialect) upgrade(u *Conn, raw net.Conn, greeting []byte) error {
	if !strings.HasPrefix(strings.ToUpper(string(greeting)), "* OK") {
		return fmt.Errorf("unexpected greeting %q", truncate(greeting))
	}
	return u.expectIMAPOK(raw, "S0 STARTTLS\r\n", "S0")
}

func (imapDialect) greet(u *Conn, afterSTARTTLS bool) error {
	if afterSTARTTLS {
		return u.imapCapability() // no new greeting after TLS
	}
	line, err := u.readLine()
	if err != nil {
		return err
	}
	u.Greeting = append([]byte{}, line...)
	st, _, _ := imap.ParseResponse(line)
	if st != imap.Untagged || !strings.HasPrefix(strings.ToUpper(string(line)), "* OK") {
		return fmt.Errorf("unexpected greeting %q", truncate(line))
	}
	if caps, ok := imap.GreetingCapabilities(line); ok {
		u.Caps = caps
		return nil
	}
	return u.imapCapability()
}

func (imapDialect) authenticate(u *Conn, srv *config.Server, tag, user, token string, _ bool) ([]byte, error) {
	return u.authIMAP(srv, tag, user, token)
}
