// Package smtp is the I/O-free SMTP submission state machine for the client
// side of the proxy before authentication (RFC 5321, RFC 4954 AUTH, RFC 3207
// STARTTLS, RFC 2920 PIPELINING): EHLO/HELO are answered from the
// upstream's rewritten capabilities, AUTH PLAIN and AUTH LOGIN become a
// login request, and mail commands wait until the client is authenticated.
// It also rewrites an upstream EHLO response.
package smtp

import (
	"bytes"
	"strings"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/protocol/textline"
)

// Limits bound what an unauthenticated client may send.
type Limits struct {
	MaxLine   int // bytes in one command line (RFC 5321 says 512; AUTH responses need more)
	MaxErrors int // bad commands before the client is disconnected
}

// DefaultLimits suit every real client.
var DefaultLimits = Limits{MaxLine: 8192, MaxErrors: 10}

// Profile is what the machine tells clients about the server.
type Profile struct {
	Greeting []byte   // the 220 line clients are greeted with, CRLF included
	Domain   string   // name in the greeting and the EHLO reply
	Caps     []string // EHLO keywords to offer, already rewritten (see ProxyCaps)
}

// NewProfile makes the profile from the upstream's greeting text (the
// first line's, after "220 ") and its EHLO keywords (the lines after the
// first, domain line).
func NewProfile(upstreamGreeting []byte, upstreamCaps []string) *Profile {
	// "220 mx.example.com ESMTP ...": the first word names the server.
	domain := "localhost"
	if f := strings.Fields(string(upstreamGreeting)); len(f) > 0 {
		domain = f[0]
	}
	greeting := make([]byte, 0, len(upstreamGreeting)+6)
	greeting = append(append(append(greeting, "220 "...), upstreamGreeting...), "\r\n"...)
	return &Profile{Greeting: greeting, Domain: domain, Caps: ProxyCaps(upstreamCaps)}
}

// TLS says how the client side may use TLS.
type TLS struct {
	Offered  bool // STARTTLS may be offered (a certificate is configured)
	Active   bool // the connection is already TLS (implicit, or after STARTTLS)
	Required bool // AUTH is refused until the connection is TLS
}

type state int

const (
	stCommand state = iota
	stAuthPlain
	stAuthUser
	stAuthPass
	stPending
	stClosed
)

// Machine is one client connection's pre-login state.
type Machine struct {
	prof    *Profile
	tls     TLS
	lim     Limits
	st      state
	greeted bool // EHLO or HELO seen (since the last STARTTLS)
	user    string
	lines   textline.Reader
	errors  int
	out     []byte
}

// New returns a machine for a client that has been sent the greeting.
func New(prof *Profile, tls TLS, lim Limits) *Machine {
	return &Machine{prof: prof, tls: tls, lim: lim}
}

// Next consumes input; call it until it returns protocol.NeedMore,
// protocol.Login, protocol.StartTLS or protocol.Close.
func (m *Machine) Next(in []byte) (int, protocol.Action) {
	m.out = m.out[:0]
	return protocol.Run(in, m.step)
}

func (m *Machine) step(in []byte) (int, protocol.Action) {
	if m.st == stPending || m.st == stClosed {
		return 0, protocol.Action{}
	}
	line, n, ev := m.lines.Next(in, m.lim.MaxLine)
	switch ev {
	case textline.Wait:
		return n, protocol.Action{}
	case textline.Flood:
		return n, m.closeWith("500 5.5.6 Line too long, closing connection\r\n")
	case textline.Overlong:
		m.st = stCommand
		return n, m.fail("500 5.5.6 Line too long")
	}
	switch m.st {
	case stAuthPlain:
		m.st = stCommand
		creds, err := sasl.DecodePlain(line)
		if act, bad := m.saslError(err); bad {
			return n, act
		}
		return n, m.startLogin(creds)
	case stAuthUser:
		user, err := sasl.DecodeBase64(line)
		if act, bad := m.saslError(err); bad {
			m.st = stCommand
			return n, act
		}
		m.user = string(user)
		m.st = stAuthPass
		return n, m.reply("334 UGFzc3dvcmQ6\r\n")
	case stAuthPass:
		m.st = stCommand
		pass, err := sasl.DecodeBase64(line)
		if act, bad := m.saslError(err); bad {
			return n, act
		}
		return n, m.startLogin(sasl.Credentials{Username: m.user, Password: string(pass)})
	}
	return n, m.command(line)
}

func (m *Machine) saslError(err error) (protocol.Action, bool) {
	switch err {
	case nil:
		return protocol.Action{}, false
	case sasl.ErrCancelled:
		return m.fail("501 5.7.0 Authentication cancelled"), true
	}
	return m.fail("501 5.5.2 Cannot decode the SASL response"), true
}

func (m *Machine) command(line []byte) protocol.Action {
	verb, arg := textline.Word(line)
	switch {
	case textline.EqualFold(verb, "EHLO"), textline.EqualFold(verb, "HELO"):
		if len(bytes.TrimSpace(arg)) == 0 {
			return m.fail("501 5.5.4 Syntax: " + strings.ToUpper(string(verb)) + " hostname")
		}
		m.greeted = true
		if textline.EqualFold(verb, "HELO") {
			return m.reply("250 " + m.prof.Domain + "\r\n")
		}
		m.out = m.appendEHLO(m.out)
		return protocol.Action{Kind: protocol.Reply, Out: m.out}
	case textline.EqualFold(verb, "STARTTLS"):
		if !m.tls.Offered || m.tls.Active {
			return m.fail("502 5.5.1 STARTTLS is not available")
		}
		if len(arg) > 0 {
			return m.fail("501 5.5.4 STARTTLS takes no argument")
		}
		m.out = append(m.out, "220 2.0.0 Ready to start TLS\r\n"...)
		return protocol.Action{Kind: protocol.StartTLS, Out: m.out}
	case textline.EqualFold(verb, "AUTH"):
		return m.auth(arg)
	case textline.EqualFold(verb, "NOOP"), textline.EqualFold(verb, "RSET"):
		return m.reply("250 2.0.0 OK\r\n")
	case textline.EqualFold(verb, "QUIT"):
		return m.closeWith("221 2.0.0 Bye\r\n")
	case textline.EqualFold(verb, "MAIL"), textline.EqualFold(verb, "RCPT"), textline.EqualFold(verb, "DATA"),
		textline.EqualFold(verb, "BDAT"), textline.EqualFold(verb, "VRFY"), textline.EqualFold(verb, "EXPN"):
		if m.tls.Required && !m.tls.Active {
			return m.fail("530 5.7.0 Must issue a STARTTLS command first")
		}
		return m.fail("530 5.7.0 Authentication required")
	}
	return m.fail("502 5.5.2 Command not recognized")
}

func (m *Machine) auth(arg []byte) protocol.Action {
	if !m.greeted {
		return m.fail("503 5.5.1 Send EHLO first")
	}
	if m.tls.Required && !m.tls.Active {
		return m.fail("530 5.7.0 Must issue a STARTTLS command first")
	}
	mech, ir := textline.Word(arg)
	switch {
	case textline.EqualFold(mech, "PLAIN"):
		if ir == nil {
			m.st = stAuthPlain
			return m.reply("334 \r\n")
		}
		creds, err := sasl.DecodePlain(ir)
		if act, bad := m.saslError(err); bad {
			return act
		}
		return m.startLogin(creds)
	case textline.EqualFold(mech, "LOGIN"):
		if ir == nil {
			m.st = stAuthUser
			return m.reply("334 VXNlcm5hbWU6\r\n")
		}
		user, err := sasl.DecodeBase64(ir)
		if act, bad := m.saslError(err); bad {
			return act
		}
		m.user = string(user)
		m.st = stAuthPass
		return m.reply("334 UGFzc3dvcmQ6\r\n")
	}
	return m.fail("504 5.5.4 Unrecognized authentication type (use PLAIN or LOGIN)")
}

// appendEHLO appends the multi-line EHLO answer to b.
func (m *Machine) appendEHLO(b []byte) []byte {
	line := func(last bool, text string) {
		if last {
			b = append(b, "250 "...)
		} else {
			b = append(b, "250-"...)
		}
		b = append(b, text...)
		b = append(b, "\r\n"...)
	}
	auth := !m.tls.Required || m.tls.Active
	stls := m.tls.Offered && !m.tls.Active
	line(len(m.prof.Caps) == 0 && !auth && !stls, m.prof.Domain)
	for i, c := range m.prof.Caps {
		line(i == len(m.prof.Caps)-1 && !auth && !stls, c)
	}
	if auth {
		line(!stls, "AUTH PLAIN LOGIN")
	}
	if stls {
		line(true, "STARTTLS")
	}
	return b
}

// TLSStarted records a completed STARTTLS: the client must say EHLO again.
func (m *Machine) TLSStarted() {
	m.tls.Active = true
	m.greeted = false
	m.st = stCommand
}

func (m *Machine) startLogin(creds sasl.Credentials) protocol.Action {
	m.st = stPending
	return protocol.Action{Kind: protocol.Login, Out: m.out, Creds: creds}
}

// LoginFailed ends a login that did not succeed; the client may retry.
func (m *Machine) LoginFailed(msg string, temporary bool) []byte {
	m.out = m.out[:0]
	m.st = stCommand
	if temporary {
		m.out = append(m.out, "454 4.7.0 Temporary authentication failure: "...)
	} else {
		m.out = append(m.out, "535 5.7.8 Authentication credentials invalid: "...)
	}
	m.out = textline.AppendText(m.out, msg)
	m.out = append(m.out, "\r\n"...)
	return m.out
}

func (m *Machine) reply(s string) protocol.Action {
	m.out = append(m.out, s...)
	return protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) fail(s string) protocol.Action {
	m.errors++
	if m.errors > m.lim.MaxErrors {
		return m.closeWith("421 4.7.0 Too many errors, closing connection\r\n")
	}
	return m.reply(s + "\r\n")
}

func (m *Machine) closeWith(s string) protocol.Action {
	m.st = stClosed
	m.out = append(m.out, s...)
	return protocol.Action{Kind: protocol.Close, Out: m.out}
}

// ProxyCaps turns the keywords of an upstream EHLO response (without the
// first, domain line) into the ones the proxy offers: AUTH lines (both
// "AUTH ..." and the non-standard "AUTH=...") and STARTTLS go, since the
// proxy adds its own; SIZE, 8BITMIME, PIPELINING, SMTPUTF8, CHUNKING,
// ENHANCEDSTATUSCODES and the rest pass unchanged. A keyword is told by
// its first word, whatever the case and the blanks around it, and blank
// lines go: a server's "STARTTLS " must not offer the client a STARTTLS
// the proxy does not do.
func ProxyCaps(upstream []string) []string {
	out := make([]string, 0, len(upstream))
	for _, c := range upstream {
		words := strings.Fields(c)
		if len(words) == 0 {
			continue
		}
		if w := strings.ToUpper(words[0]); w == "STARTTLS" || w == "AUTH" || strings.HasPrefix(w, "AUTH=") {
			continue
		}
		out = append(out, strings.TrimSpace(c))
	}
	return out
}

// ParseReply reads one reply line: its code, whether more lines follow
// ("250-"), and the text. ok is false for a line that is not a reply.
func ParseReply(line []byte) (code int, more bool, text string, ok bool) {
	if len(line) < 3 {
		return 0, false, "", false
	}
	for _, c := range line[:3] {
		if c < '0' || c > '9' {
			return 0, false, "", false
		}
		code = code*10 + int(c-'0')
	}
	if len(line) == 3 {
		return code, false, "", true
	}
	switch line[3] {
	case '-':
		more = true
	case ' ':
	default:
		return 0, false, "", false
	}
	return code, more, string(line[4:]), true
}

// AuthMechanisms lists the SASL mechanisms of upstream EHLO keywords, from
// both the "AUTH A B" and the "AUTH=A B" forms, whatever the blanks.
func AuthMechanisms(caps []string) []string {
	var mechs []string
	for _, c := range caps {
		words := strings.Fields(strings.ToUpper(c))
		switch {
		case len(words) == 0:
		case words[0] == "AUTH":
			mechs = append(mechs, words[1:]...)
		case strings.HasPrefix(words[0], "AUTH="):
			if m := words[0][len("AUTH="):]; m != "" {
				mechs = append(mechs, m)
			}
			mechs = append(mechs, words[1:]...)
		}
	}
	return mechs
}

// Confidential reports whether the next input answers an AUTH challenge
// (it holds credentials): a trace must not show it.
func (m *Machine) Confidential() bool {
	return m.st == stAuthPlain || m.st == stAuthUser || m.st == stAuthPass
}
