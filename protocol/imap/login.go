package imap

// LOGIN and AUTHENTICATE PLAIN: the commands the proxy answers itself
// by logging in upstream.

import (
	"strings"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/protocol/textline"
)

// login parses "LOGIN userid password" (each an astring) from the first
// part's args and any following literal parts.
func (m *Machine) login(tag, args []byte) protocol.Action {
	toks := m.tokens(args)
	if toks == nil || len(toks) != 2 {
		return m.bad(tag, "LOGIN expects a user name and a password")
	}
	// One allocation for the tag and both credentials.
	var b strings.Builder
	b.Grow(len(tag) + len(toks[0]) + len(toks[1]))
	b.Write(tag)
	b.Write(toks[0])
	b.Write(toks[1])
	all := b.String()
	u := len(tag) + len(toks[0])
	m.st = stPending
	return protocol.Action{Kind: protocol.Login, Out: m.out, Tag: all[:len(tag)],
		Creds: sasl.Credentials{Username: all[len(tag):u], Password: all[u:]}}
}

func (m *Machine) authenticate(tag, args []byte) protocol.Action {
	mech, ir := textline.Word(args)
	if len(m.parts) > 1 {
		return m.bad(tag, "Unexpected literal in AUTHENTICATE")
	}
	switch {
	case textline.EqualFold(mech, "PLAIN"):
		m.sasl = saslPlain
		if ir != nil {
			return m.saslAnswer(tag, ir)
		}
		m.out = append(m.out, "+ \r\n"...)
	case textline.EqualFold(mech, "LOGIN"):
		m.sasl = saslLoginUser
		if ir != nil {
			return m.saslAnswer(tag, ir)
		}
		m.out = append(m.out, "+ VXNlcm5hbWU6\r\n"...)
	default:
		return m.no(tag, "", "Unsupported authentication mechanism (use PLAIN or LOGIN)")
	}
	m.tag = append(m.tag[:0], tag...)
	m.st = stSASL
	return protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) saslResponse(line []byte) protocol.Action {
	m.st = stCommand
	return m.saslAnswer(m.tag, line)
}

// saslAnswer handles one client response inside AUTHENTICATE.
func (m *Machine) saslAnswer(tag, resp []byte) protocol.Action {
	switch m.sasl {
	case saslPlain:
		creds, err := sasl.DecodePlain(resp)
		if err == sasl.ErrCancelled {
			return m.bad(tag, "AUTHENTICATE cancelled")
		} else if err != nil {
			return m.bad(tag, "Invalid SASL PLAIN response")
		}
		return m.startLogin(tag, creds)
	case saslLoginUser:
		user, err := sasl.DecodeBase64(resp)
		if err == sasl.ErrCancelled {
			return m.bad(tag, "AUTHENTICATE cancelled")
		} else if err != nil || len(user) == 0 {
			return m.bad(tag, "Invalid SASL LOGIN response")
		}
		m.user = string(user)
		m.sasl = saslLoginPass
		m.tag = append(m.tag[:0], tag...)
		m.st = stSASL
		m.out = append(m.out, "+ UGFzc3dvcmQ6\r\n"...)
		return protocol.Action{Kind: protocol.Reply, Out: m.out}
	default:
		pass, err := sasl.DecodeBase64(resp)
		user := m.user
		m.user = ""
		if err == sasl.ErrCancelled {
			return m.bad(tag, "AUTHENTICATE cancelled")
		} else if err != nil {
			return m.bad(tag, "Invalid SASL LOGIN response")
		}
		return m.startLogin(tag, sasl.Credentials{Username: user, Password: string(pass)})
	}
}

func (m *Machine) startLogin(tag []byte, creds sasl.Credentials) protocol.Action {
	m.st = stPending
	return protocol.Action{Kind: protocol.Login, Out: m.out, Creds: creds, Tag: string(tag)}
}

// LoginFailed ends a login that did not succeed; the client may try again.
// temporary marks failures that are not the client's fault (token endpoint
// or upstream unavailable).
func (m *Machine) LoginFailed(tag, msg string, temporary bool) []byte {
	m.out = m.out[:0]
	m.st = stCommand
	code := "AUTHENTICATIONFAILED"
	if temporary {
		code = "UNAVAILABLE"
	}
	m.out = append(m.out, tag...)
	m.out = append(m.out, " NO ["...)
	m.out = append(m.out, code...)
	m.out = append(m.out, "] "...)
	m.out = textline.AppendText(m.out, msg)
	m.out = append(m.out, "\r\n"...)
	return m.out
}
