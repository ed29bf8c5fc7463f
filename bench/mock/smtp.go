package mock

import (
	"io"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// SMTPMessage is one message the mock SMTP servers accepted.
type SMTPMessage struct {
	User string // the authenticated mailbox
	From string
	To   []string
	Data []byte // as the server received it, dot-unstuffed
}

type smtpBackend struct{ up *Upstream }

func (b smtpBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &smtpSession{up: b.up}, nil
}

type smtpSession struct {
	up   *Upstream
	user string
	msg  SMTPMessage
}

var errAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}

func (s *smtpSession) AuthMechanisms() []string {
	if s.up.opts.SMTPOAuthBearerOnly {
		return []string{"LOGIN", "OAUTHBEARER"}
	}
	return []string{"LOGIN", "XOAUTH2"}
}

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case "XOAUTH2":
		return &smtpXOAUTH2{s: s}, nil
	case "OAUTHBEARER":
		return sasl.NewOAuthBearerServer(func(o sasl.OAuthBearerOptions) *sasl.OAuthBearerError {
			raw := "user=" + o.Username + "\x01auth=Bearer " + o.Token + "\x01\x01"
			user, err := s.up.checkXOAUTH2([]byte(raw))
			if err != nil {
				return &sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"}
			}
			s.user = user
			return nil
		}), nil
	}
	return nil, errAuthFailed
}

// smtpXOAUTH2 is XOAUTH2 as Exchange Online does it: a bad token gets a
// 334 error challenge, then 535.
type smtpXOAUTH2 struct {
	s      *smtpSession
	failed bool
}

func (x *smtpXOAUTH2) Next(resp []byte) ([]byte, bool, error) {
	if x.failed {
		return nil, true, errAuthFailed
	}
	if resp == nil {
		return []byte{}, false, nil
	}
	user, err := x.s.up.checkXOAUTH2(resp)
	if err != nil {
		x.failed = true
		return errorChallenge(), false, nil
	}
	x.s.user = user
	return nil, true, nil
}

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return smtp.ErrAuthRequired
	}
	s.msg = SMTPMessage{User: s.user, From: from}
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.To = append(s.msg.To, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.Data = b
	s.up.mu.Lock()
	s.up.smtpMsgs = append(s.up.smtpMsgs, s.msg)
	s.up.mu.Unlock()
	if f := s.up.opts.OnMessage; f != nil {
		f(s.msg)
	}
	return nil
}

func (s *smtpSession) Reset()        { s.msg = SMTPMessage{} }
func (s *smtpSession) Logout() error { return nil }

// SMTPMessages lists the messages accepted so far.
func (up *Upstream) SMTPMessages() []SMTPMessage {
	up.mu.Lock()
	defer up.mu.Unlock()
	return append([]SMTPMessage(nil), up.smtpMsgs...)
}

func newSMTPServer(up *Upstream) *smtp.Server {
	s := smtp.NewServer(smtpBackend{up: up})
	s.Domain = "smtp.mock.example"
	s.MaxMessageBytes = 64 << 20
	s.EnableSMTPUTF8 = true
	s.EnableBINARYMIME = true
	s.ErrorLog = discardLogger{}
	return s
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}
