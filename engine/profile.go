package engine

import (
	"strings"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol/imap"
	"github.com/emailproxy/emailproxy/protocol/pop3"
	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// profile is what clients are shown before login: the upstream's greeting
// and capabilities, rewritten for the proxy.
type profile struct {
	imap         *imap.Profile
	pop          *pop3.Profile
	smtp         *smtp.Profile
	smtpGreeting []byte
}

func profileOf(proto config.Protocol, u *upstream.Conn) *profile {
	switch proto {
	case config.IMAP:
		return &profile{imap: imap.NewProfile(u.Greeting, u.Caps)}
	case config.POP:
		return &profile{pop: pop3.NewProfile(u.Greeting, u.Caps)}
	default:
		// "220 mx.example.com ESMTP ..." : the first word names the server.
		domain := "localhost"
		if f := strings.Fields(string(u.Greeting)); len(f) > 0 {
			domain = f[0]
		}
		return &profile{
			smtp:         &smtp.Profile{Domain: domain, Caps: smtp.ProxyCaps(u.Caps)},
			smtpGreeting: []byte("220 " + string(u.Greeting) + "\r\n"),
		}
	}
}
