package upstream

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// RefusedError is a server's refusal of the token; Text is what it said.
type RefusedError struct{ Text string }

func (e *RefusedError) Error() string { return "server rejected the token: " + e.Text }

// Authenticate logs in on u with XOAUTH2 (SMTP: or OAUTHBEARER, when that
// is all the server offers) as srv's protocol does it, and returns the
// server's answer to relay to the client; for IMAP it carries the
// client's tag.
func (u *Conn) Authenticate(srv *config.Server, tag, user, token string, pop3InitialResponse bool) ([]byte, error) {
	switch srv.Protocol {
	case config.IMAP:
		return u.authIMAP(tag, user, token, imap.HasCapability(u.Caps, "SASL-IR"))
	case config.POP:
		return u.authPOP(user, token, pop3InitialResponse)
	}
	return u.authSMTP(srv.ServerAddress, srv.ServerPort, user, token)
}

// maxAuthLines bounds the lines an upstream may send while authenticating.
const maxAuthLines = 64

// authIMAP sends AUTHENTICATE XOAUTH2 with the client's tag and returns
// what to relay to the client on success: the untagged lines and the
// tagged OK, in the order the server sent them.
func (u *Conn) authIMAP(tag, user, token string, saslIR bool) ([]byte, error) {
	ir := sasl.XOAUTH2(user, token)
	cmd := make([]byte, 0, len(tag)+len(ir)+32)
	cmd = append(cmd, tag...)
	cmd = append(cmd, " AUTHENTICATE XOAUTH2"...)
	if saslIR {
		cmd = append(cmd, ' ')
		cmd = append(cmd, ir...)
	}
	cmd = append(cmd, "\r\n"...)
	if _, err := u.TLS.Write(cmd); err != nil {
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
			if _, err := u.TLS.Write(append(ir, '\r', '\n')); err != nil {
				return nil, err
			}
		case st == imap.Continuation:
			// A SASL error challenge (base64 JSON, as Gmail and Exchange send):
			// answer with an empty response to get the final result.
			if _, err := u.TLS.Write([]byte("\r\n")); err != nil {
				return nil, err
			}
		case st == imap.Untagged && len(line) >= 5 && strings.EqualFold(string(line[:5]), "* BYE"):
			// The server is closing (a warm connection it timed out): not
			// a verdict on the token.
			return nil, fmt.Errorf("server said %q", truncate(line))
		case st == imap.Untagged:
			reply = append(append(reply, line...), '\r', '\n')
		case string(rtag) == tag && st == imap.OK:
			return append(append(reply, line...), '\r', '\n'), nil
		case string(rtag) == tag:
			return nil, &RefusedError{Text: string(text)}
		default:
			return nil, fmt.Errorf("unexpected response %q", truncate(line))
		}
	}
	return nil, errors.New("too many lines while authenticating")
}

// authPOP sends AUTH XOAUTH2 and returns the +OK line to relay: in two
// steps (RFC 5034), the form Exchange Online documents, or with the
// response on the AUTH line (initialResponse), which saves a round trip
// on servers that take it.
func (u *Conn) authPOP(user, token string, initialResponse bool) ([]byte, error) {
	cmd := []byte("AUTH XOAUTH2\r\n")
	if initialResponse {
		cmd = append(append([]byte("AUTH XOAUTH2 "), sasl.XOAUTH2(user, token)...), '\r', '\n')
	}
	if _, err := u.TLS.Write(cmd); err != nil {
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
			// server timed out, say): not a verdict on the token.
			return nil, fmt.Errorf("server refused AUTH: %q", truncate(line))
		case strings.HasPrefix(s, "-ERR"):
			return nil, &RefusedError{Text: strings.TrimSpace(s[4:])}
		case strings.HasPrefix(s, "+") && !sent:
			sent = true
			if _, err := u.TLS.Write(append(sasl.XOAUTH2(user, token), '\r', '\n')); err != nil {
				return nil, err
			}
		case strings.HasPrefix(s, "+"):
			// A SASL error challenge: cancel (RFC 5034 §4), which every
			// server must answer with -ERR at once; some wait for more
			// than an empty line.
			if _, err := u.TLS.Write([]byte("*\r\n")); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unexpected response %q", truncate(line))
		}
	}
	return nil, errors.New("too many lines while authenticating")
}

// authSMTP authenticates with XOAUTH2, or OAUTHBEARER when that is all the
// server offers, and returns the 235 reply to relay.
func (u *Conn) authSMTP(host string, port int, user, token string) ([]byte, error) {
	mechs := smtp.AuthMechanisms(u.Caps)
	var cmd []byte
	var cancel string
	switch {
	case hasWord(mechs, "XOAUTH2") || !hasWord(mechs, "OAUTHBEARER"):
		cmd = append([]byte("AUTH XOAUTH2 "), sasl.XOAUTH2(user, token)...)
		cancel = "\r\n"
	default:
		cmd = append([]byte("AUTH OAUTHBEARER "), sasl.OAUTHBEARER(user, host, port, token)...)
		cancel = "AQ==\r\n" // RFC 7628: a lone %x01 ends a failed exchange
	}
	if _, err := u.TLS.Write(append(cmd, '\r', '\n')); err != nil {
		return nil, err
	}
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
			if _, err := u.TLS.Write([]byte(cancel)); err != nil {
				return nil, err
			}
		case code == 235:
			if more {
				continue
			}
			return append(append([]byte{}, line...), '\r', '\n'), nil
		case more:
			continue
		default:
			return nil, &RefusedError{Text: fmt.Sprintf("%d %s", code, text)}
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
