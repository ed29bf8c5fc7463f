package engine

import (
	"context"
	"net"

	"errors"
	"fmt"
	"github.com/rs/zerolog"
	"strings"
	"time"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// errRejected marks an upstream that refused the token.
type rejectedError struct{ text string }

func (e *rejectedError) Error() string { return "server rejected the token: " + e.text }

// maxAuthLines bounds the lines an upstream may send while authenticating.
const maxAuthLines = 64

// authIMAP sends AUTHENTICATE XOAUTH2 with the client's tag and returns
// what to relay to the client on success: the untagged lines and the
// tagged OK, in the order the server sent them.
func (u *upstreamConn) authIMAP(tag, user, token string, saslIR bool) ([]byte, error) {
	ir := sasl.XOAUTH2(user, token)
	cmd := make([]byte, 0, len(tag)+len(ir)+32)
	cmd = append(cmd, tag...)
	cmd = append(cmd, " AUTHENTICATE XOAUTH2"...)
	if saslIR {
		cmd = append(cmd, ' ')
		cmd = append(cmd, ir...)
	}
	cmd = append(cmd, "\r\n"...)
	if _, err := u.conn.Write(cmd); err != nil {
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
			if _, err := u.conn.Write(append(ir, '\r', '\n')); err != nil {
				return nil, err
			}
		case st == imap.Continuation:
			// A SASL error challenge (base64 JSON, as Gmail and Exchange send):
			// answer with an empty response to get the final result.
			if _, err := u.conn.Write([]byte("\r\n")); err != nil {
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
			return nil, &rejectedError{string(text)}
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
func (u *upstreamConn) authPOP(user, token string, initialResponse bool) ([]byte, error) {
	cmd := []byte("AUTH XOAUTH2\r\n")
	if initialResponse {
		cmd = append(append([]byte("AUTH XOAUTH2 "), sasl.XOAUTH2(user, token)...), '\r', '\n')
	}
	if _, err := u.conn.Write(cmd); err != nil {
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
			return nil, &rejectedError{strings.TrimSpace(s[4:])}
		case strings.HasPrefix(s, "+") && !sent:
			sent = true
			if _, err := u.conn.Write(append(sasl.XOAUTH2(user, token), '\r', '\n')); err != nil {
				return nil, err
			}
		case strings.HasPrefix(s, "+"):
			// A SASL error challenge: cancel (RFC 5034 §4), which every
			// server must answer with -ERR at once; some wait for more
			// than an empty line.
			if _, err := u.conn.Write([]byte("*\r\n")); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unexpected response %q", truncate(line))
		}
	}
	return nil, errors.New("too many lines while authenticating")
}

// runLogin runs one login and logs its outcome.
func (s *Server) runLogin(ctx context.Context, l *listener, log zerolog.Logger, act protocol.Action, client string) *loginResult {
	start := time.Now()
	res, lerr := s.login(ctx, l, act.Tag, act.Creds, client)
	ev := log.Info()
	if lerr != nil {
		ev = log.Warn().Str("error", lerr.Message)
	}
	if lerr != nil {
		res = &loginResult{user: act.Creds.Username, err: lerr}
	}
	ev.Str("proto", string(l.srv.Protocol)).Str("account", act.Creds.Username).Bool("ok", lerr == nil).
		Bool("reused", res.reused).Dur("took", time.Since(start)).Msg("login")
	return res
}

// authSMTP authenticates with XOAUTH2, or OAUTHBEARER when that is all the
// server offers, and returns the 235 reply to relay.
func (u *upstreamConn) authSMTP(host string, port int, user, token string) ([]byte, error) {
	mechs := smtp.AuthMechanisms(u.caps)
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
	if _, err := u.conn.Write(append(cmd, '\r', '\n')); err != nil {
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
			if _, err := u.conn.Write([]byte(cancel)); err != nil {
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
			return nil, &rejectedError{fmt.Sprintf("%d %s", code, text)}
		}
	}
	return nil, errors.New("too many lines while authenticating")
}

// hostOf is the address part of a client's remote address.
func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

func hasWord(list []string, w string) bool {
	for _, x := range list {
		if strings.EqualFold(x, w) {
			return true
		}
	}
	return false
}

// login gets a token and an authenticated upstream session: a lingering
// one of the same account and password if session reuse has one, else a
// warm or fresh connection authenticated with XOAUTH2 once the mailbox
// has a free slot. A token the server refuses is replaced by a fresh one
// once; a warm connection the server has dropped meanwhile is replaced by
// a fresh dial once.
func (s *Server) login(ctx context.Context, l *listener, tag string, creds sasl.Credentials, client string) (*loginResult, *auth.LoginError) {
	grant, err := s.provider.Login(ctx, creds.Username, creds.Password, client)
	if err != nil {
		return nil, auth.AsLoginError(err)
	}
	token := grant.Token
	res := &loginResult{proto: l.srv.Protocol, user: creds.Username, mailbox: mailboxKey(l.srv.ServerAddress, creds.Username)}
	if l.srv.Protocol == config.IMAP {
		res.reuseKey = s.linger.key(l.srv.Section, creds.Username, creds.Password)
		if lg := s.linger.take(res.reuseKey); lg != nil {
			if reply := retag(lg.reply, tag); reply != nil {
				res.up, res.reply, res.loginReply, res.reused = lg.u, reply, lg.reply, true
				return res, nil
			}
			lg.u.Close()
		}
	}
	release, err := s.gates.acquire(ctx, res.mailbox)
	if err != nil {
		return nil, &auth.LoginError{Message: fmt.Sprintf("too many sessions of mailbox %s are open upstream (limit %d); waited for one to end until the login timed out",
			creds.Username, s.gates.limit), Temporary: true}
	}
	held := true
	defer func() {
		if held {
			release()
		}
	}()
	freshDial := false
	for {
		var u *upstreamConn
		pooled := false
		if freshDial {
			u, err = l.dialer.dial(ctx)
			if err == nil {
				l.learn(u)
			}
		} else {
			u, pooled, err = s.upstreamFor(ctx, l)
		}
		if err != nil {
			return nil, &auth.LoginError{Message: "upstream server unavailable: " + err.Error(), Temporary: true}
		}
		if dl, ok := ctx.Deadline(); ok {
			u.conn.SetDeadline(dl)
		}
		var reply []byte
		switch l.srv.Protocol {
		case config.IMAP:
			reply, err = u.authIMAP(tag, creds.Username, token, imap.HasCapability(u.caps, "SASL-IR"))
		case config.POP:
			reply, err = u.authPOP(creds.Username, token, s.opts.POP3InitialResponse)
		default:
			reply, err = u.authSMTP(l.srv.ServerAddress, l.srv.ServerPort, creds.Username, token)
		}
		if err == nil {
			u.conn.SetDeadline(time.Time{})
			if lerr := grant.Accepted(); lerr != nil {
				u.Close()
				return nil, lerr
			}
			held = false
			u.release = release
			res.up, res.reply, res.loginReply = u, reply, reply
			if !canReuse(l.srv, u, reply) {
				res.reuseKey = ""
			}
			return res, nil
		}
		u.Close()
		var rej *rejectedError
		if !errors.As(err, &rej) {
			if pooled && ctx.Err() == nil {
				freshDial = true // the server dropped the warm connection: once more, fresh
				continue
			}
			return nil, &auth.LoginError{Message: "upstream server failed during authentication: " + shortNetErr(err), Temporary: true}
		}
		// No second try inside this login (see Grant.Refused).
		return nil, grant.Refused(rej.text)
	}
}
