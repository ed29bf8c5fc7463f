package engine

import (
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/pop3"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// stepKind is what a protocol machine asks the connection to do.
type stepKind int

const (
	stepNeedMore stepKind = iota
	stepReply
	stepLogin
	stepClose
	stepStartTLS
)

// step is one protocol machine result, the same for every protocol.
type step struct {
	n     int
	kind  stepKind
	out   []byte
	creds sasl.Credentials
	tag   string // IMAP only
}

// clientMachine is the pre-login state machine of one client connection;
// the gnet path and the TLS path drive it the same way.
type clientMachine interface {
	next(in []byte) step
	loginFailed(tag, msg string, temporary bool) []byte
	tlsStarted()
}

type imapMachine struct{ *imap.Machine }

func (m imapMachine) next(in []byte) step {
	n, a := m.Next(in)
	return step{n: n, kind: imapKind[a.Kind], out: a.Out, creds: a.Creds, tag: a.Tag}
}
func (m imapMachine) loginFailed(tag, msg string, temp bool) []byte {
	return m.LoginFailed(tag, msg, temp)
}
func (m imapMachine) tlsStarted() { m.TLSStarted() }

var imapKind = [...]stepKind{imap.NeedMore: stepNeedMore, imap.Reply: stepReply, imap.Login: stepLogin, imap.Close: stepClose, imap.StartTLS: stepStartTLS}

type popMachine struct{ *pop3.Machine }

func (m popMachine) next(in []byte) step {
	n, a := m.Next(in)
	return step{n: n, kind: popKind[a.Kind], out: a.Out, creds: a.Creds}
}
func (m popMachine) loginFailed(_, msg string, temp bool) []byte { return m.LoginFailed(msg, temp) }
func (m popMachine) tlsStarted()                                 { m.TLSStarted() }

var popKind = [...]stepKind{pop3.NeedMore: stepNeedMore, pop3.Reply: stepReply, pop3.Login: stepLogin, pop3.Close: stepClose, pop3.StartTLS: stepStartTLS}

type smtpMachine struct{ *smtp.Machine }

func (m smtpMachine) next(in []byte) step {
	n, a := m.Next(in)
	return step{n: n, kind: smtpKind[a.Kind], out: a.Out, creds: a.Creds}
}
func (m smtpMachine) loginFailed(_, msg string, temp bool) []byte { return m.LoginFailed(msg, temp) }
func (m smtpMachine) tlsStarted()                                 { m.TLSStarted() }

var smtpKind = [...]stepKind{smtp.NeedMore: stepNeedMore, smtp.Reply: stepReply, smtp.Login: stepLogin, smtp.Close: stepClose, smtp.StartTLS: stepStartTLS}

// newMachine builds the machine for a connection and returns the greeting
// to send it. offered: STARTTLS/STLS is offered; active: already TLS.
func (s *Server) newMachine(proto config.Protocol, p *profile, offered, active bool) (clientMachine, []byte) {
	switch proto {
	case config.IMAP:
		t := imap.TLS{Offered: offered, Active: active}
		return imapMachine{imap.New(p.imap, t, s.opts.IMAPLimits)}, p.imap.Greeting(t)
	case config.POP:
		t := pop3.TLS{Offered: offered, Active: active}
		return popMachine{pop3.New(p.pop, t, s.opts.POPLimits)}, p.pop.Greeting
	default:
		t := smtp.TLS{Offered: offered, Active: active, Required: offered}
		return smtpMachine{smtp.New(p.smtp, t, s.opts.SMTPLimits)}, p.smtpGreeting
	}
}
