package engine

import (
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/pop3"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// clientMachine is the pre-login state machine of one client connection;
// the gnet path and the TLS path drive it the same way.
type clientMachine interface {
	Next(in []byte) (int, protocol.Action)
	TLSStarted()
	loginFailed(tag, msg string, temporary bool) []byte
}

// The machines differ only in how a failed login is answered: IMAP needs
// the client's tag.
type imapMachine struct{ *imap.Machine }

func (m imapMachine) loginFailed(tag, msg string, temp bool) []byte {
	return m.LoginFailed(tag, msg, temp)
}

type popMachine struct{ *pop3.Machine }

func (m popMachine) loginFailed(_, msg string, temp bool) []byte { return m.LoginFailed(msg, temp) }

type smtpMachine struct{ *smtp.Machine }

func (m smtpMachine) loginFailed(_, msg string, temp bool) []byte { return m.LoginFailed(msg, temp) }

// newMachine builds the machine for a connection. offered: STARTTLS/STLS
// is offered; active: already TLS.
func (s *Server) newMachine(proto config.Protocol, p *profile, offered, active bool) clientMachine {
	switch proto {
	case config.IMAP:
		return imapMachine{imap.New(p.imap, imap.TLS{Offered: offered, Active: active}, s.opts.IMAPLimits)}
	case config.POP:
		return popMachine{pop3.New(p.pop, pop3.TLS{Offered: offered, Active: active}, s.opts.POPLimits)}
	default:
		return smtpMachine{smtp.New(p.smtp, smtp.TLS{Offered: offered, Active: active, Required: offered}, s.opts.SMTPLimits)}
	}
}

// greeting is what a new client is sent first (precomputed per profile).
func greeting(proto config.Protocol, p *profile, offered, active bool) []byte {
	switch proto {
	case config.IMAP:
		return p.imap.Greeting(imap.TLS{Offered: offered, Active: active})
	case config.POP:
		return p.pop.Greeting
	default:
		return p.smtpGreeting
	}
}
