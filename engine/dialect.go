package engine

import (
	"time"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/pop3"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// dialect is everything that differs between IMAP, POP3 and SMTP on the
// client side, in one place per protocol: what clients are shown
// (learned from the upstream), the state machine that reads them before
// login, the goodbyes, and how long an authenticated session may be
// silent. The upstream side has its own (engine/upstream).
type dialect struct {
	// profile turns a fresh upstream connection's greeting and
	// capabilities into what clients are shown.
	profile func(u *upstream.Conn) *profile
	// greeting is what a new client is sent first. offered: STARTTLS /
	// STLS is offered; active: the connection is already TLS.
	greeting   func(p *profile, offered, active bool) []byte
	newMachine func(p *profile, offered, active bool, o *Options) clientMachine
	// idleBye goes to a client disconnected for silence before login;
	// unavailableBye instead of a greeting when the upstream is down;
	// shutdownBye to clients before login when the proxy stops.
	idleBye, unavailableBye, shutdownBye []byte
	idleTimeout                          func(o *Options) time.Duration // authenticated sessions
}

// profile is what clients are shown before login: the upstream's greeting
// and capabilities, rewritten for the proxy (one field per protocol).
type profile struct {
	imap *imap.Profile
	pop  *pop3.Profile
	smtp *smtp.Profile
}

// clientMachine is the pre-login state machine of one client connection;
// both front ends drive it the same way.
type clientMachine interface {
	Next(in []byte) (int, protocol.Action)
	TLSStarted()
	// Confidential: the next input holds credentials (the trace hides it).
	Confidential() bool
	loginFailed(tag, msg string, temporary bool) []byte
}

func dialectOf(proto config.Protocol) *dialect {
	switch proto {
	case config.IMAP:
		return imapDialect
	case config.POP:
		return popDialect
	}
	return smtpDialect
}

var imapDialect = &dialect{
	profile: func(u *upstream.Conn) *profile { return &profile{imap: imap.NewProfile(u.Greeting, u.Caps)} },
	greeting: func(p *profile, offered, active bool) []byte {
		return p.imap.Greeting(imap.TLS{Offered: offered, Active: active})
	},
	newMachine: func(p *profile, offered, active bool, o *Options) clientMachine {
		return imapMachine{imap.New(p.imap, imap.TLS{Offered: offered, Active: active}, o.IMAPLimits)}
	},
	idleBye:        []byte("* BYE Autologout; idle for too long\r\n"),
	unavailableBye: []byte("* BYE [UNAVAILABLE] emailproxy: upstream server unavailable, try again later\r\n"),
	shutdownBye:    []byte("* BYE [UNAVAILABLE] emailproxy is shutting down, try again later\r\n"),
	idleTimeout:    func(o *Options) time.Duration { return o.IMAPIdleTimeout },
}

// IMAP answers a failed login with the client's tag.
type imapMachine struct{ *imap.Machine }

func (m imapMachine) loginFailed(tag, msg string, temp bool) []byte {
	return m.LoginFailed(tag, msg, temp)
}

var popDialect = &dialect{
	profile:  func(u *upstream.Conn) *profile { return &profile{pop: pop3.NewProfile(u.Greeting, u.Caps)} },
	greeting: func(p *profile, _, _ bool) []byte { return p.pop.Greeting },
	newMachine: func(p *profile, offered, active bool, o *Options) clientMachine {
		return popMachine{pop3.New(p.pop, pop3.TLS{Offered: offered, Active: active}, o.POPLimits)}
	},
	idleBye:        []byte("-ERR Idle for too long, closing\r\n"),
	unavailableBye: []byte("-ERR [SYS/TEMP] emailproxy: upstream server unavailable, try again later\r\n"),
	shutdownBye:    []byte("-ERR [SYS/TEMP] emailproxy is shutting down, try again later\r\n"),
	idleTimeout:    func(o *Options) time.Duration { return o.POP3IdleTimeout },
}

type popMachine struct{ *pop3.Machine }

func (m popMachine) loginFailed(_, msg string, temp bool) []byte { return m.LoginFailed(msg, temp) }

var smtpDialect = &dialect{
	profile:  func(u *upstream.Conn) *profile { return &profile{smtp: smtp.NewProfile(u.Greeting, u.Caps)} },
	greeting: func(p *profile, _, _ bool) []byte { return p.smtp.Greeting },
	newMachine: func(p *profile, offered, active bool, o *Options) clientMachine {
		// STARTTLS offered locally means required before AUTH.
		return smtpMachine{smtp.New(p.smtp, smtp.TLS{Offered: offered, Active: active, Required: offered}, o.SMTPLimits)}
	},
	idleBye:        []byte("421 4.4.2 Idle for too long, closing connection\r\n"),
	unavailableBye: []byte("421 4.3.2 emailproxy: upstream server unavailable, try again later\r\n"),
	shutdownBye:    []byte("421 4.3.2 emailproxy is shutting down, try again later\r\n"),
	idleTimeout:    func(o *Options) time.Duration { return o.SMTPIdleTimeout },
}

type smtpMachine struct{ *smtp.Machine }

func (m smtpMachine) loginFailed(_, msg string, temp bool) []byte { return m.LoginFailed(msg, temp) }
