package upstream

// SMTP's upstream side: greeting, EHLO, STARTTLS, and AUTH XOAUTH2 or
// OAUTHBEARER.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// smtpGreetingFrom reads the rest of a 220 greeting that starts with line.
func (u *Conn) smtpGreetingFrom(line []byte) error {
	lines, err := u.smtpReplyFrom(line, 220)
	if err != nil {
		return err
	}
	u.Greeting = []byte(lines[0])
	return nil
}

// smtpCommand sends cmd and reads a reply that must have code want; it
// returns the text of each line.
func (u *Conn) smtpCommand(w io.Writer, cmd string, want int) ([]string, error) {
	if err := u.send(w, []byte(cmd), -1); err != nil {
		return nil, err
	}
	line, err := u.readLine()
	if err != nil {
		return nil, err
	}
	return u.smtpReplyFrom(line, want)
}

// smtpReplyFrom reads a (multi-line) reply starting with line.
func (u *Conn) smtpReplyFrom(line []byte, want int) ([]string, error) {
	var texts []string
	for i := 0; ; i++ {
		code, more, text, ok := smtp.ParseReply(line)
		if !ok || code != want {
			return nil, fmt.Errorf("unexpected reply %q", truncate(line))
		}
		texts = append(texts, text)
		if !more {
			return texts, nil
		}
		if i > maxAuthLines {
			return nil, errors.New("reply too long")
		}
		var err error
		if line, err = u.readLine(); err != nil {
			return nil, err
		}
	}
}

// ehloName is the name the proxy gives itself in EHLO.
func ehloName() string {
	if h, err := os.Hostname(); err == nil && h != "" && !strings.ContainsAny(h, " \r\n") {
		return h
	}
	return "localhost"
}

// authSMTP authenticates with XOAUTH2, or OAUTHBEARER when that is all the
// server offers, and returns the 235 reply to relay.
func (u *Conn) authSMTP(srv *config.Server, user, token string) ([]byte, error) {
	mech := oauthMechanism(smtp.AuthMechanisms(u.Caps), srv, user, token)
	cmd := append(append([]byte("AUTH "+mech.name+" "), mech.ir...), '\r', '\n')
	if err := u.send(u.TLS, cmd, len("AUTH "+mech.name+" ")); err != nil {
		return nil, err
	}
	cancel := mech.abort
	for i := 0; i < maxAuthLines; i++ {
		line, err := u.readLine()
		if err != nil {
			return nil, err
		}
		code, more, text, ok := smtp.ParseReply(line)
		switch {
		case !ok:
			return nil, fmt.Errorf("unexpected reply %q", truncate(line))
		case code == 334:
			// A SASL error challenge: answer it to get the final reply.
			if err := u.send(u.TLS, []byte(cancel), -1); err != nil {
				return nil, err
			}
		case code == 235:
			if more {
				continue
			}
			return append(append([]byte{}, line...), '\r', '\n'), nil
		case more:
			continue
		case code >= 400 && code < 500:
			// A transient failure (RFC 4954: "454 4.7.0 Temporary
			// authentication failure"; Gmail's "too many login attempts"):
			// no verdict on the token.
			said := fmt.Sprintf("%d %s", code, text)
			if t := throttledSaid(said); t != nil {
				return nil, t
			}
			return nil, &Failure{"the server is busy: " + said}
		default:
			return nil, mech.verdict(refusal(fmt.Sprintf("%d %s", code, text)))
		}
	}
	return nil, errors.New("too many lines while authenticating")
}

func hasWord(list []string, w string) bool {
	for _, x := range list {
		if strings.EqualFold(x, w) {
			return true
		}
	}
	return false
}

type smtpDialect struct{}

func (smtpDialect) upgrade(u *Conn, raw net.Conn, greeting []byte) error {
	if err := u.smtpGreetingFrom(greeting); err != nil {
		return err
	}
	if _, err := u.smtpCommand(raw, "EHLO "+ehloName()+"\r\n", 250); err != nil {
		return err
	}
	_, err := u.smtpCommand(raw, "STARTTLS\r\n", 220)
	return err
}

// greet reads the 220 greeting (unless STARTTLS did) and the EHLO reply,
// whose lines after the first are the extensions.
func (smtpDialect) greet(u *Conn, afterSTARTTLS bool) error {
	if !afterSTARTTLS {
		line, err := u.readLine()
		if err != nil {
			return err
		}
		if err := u.smtpGreetingFrom(line); err != nil {
			return err
		}
	}
	lines, err := u.smtpCommand(u.TLS, "EHLO "+ehloName()+"\r\n", 250)
	if err != nil {
		return err
	}
	u.Caps = lines[1:]
	return nil
}

func (smtpDialect) authenticate(u *Conn, srv *config.Server, _, user, token string, _ bool) ([]byte, error) {
	return u.authSMTP(srv, user, token)
}
