// Package pop3 is the I/O-free POP3 state machine for the client side of the
// proxy before login (RFC 1939, RFC 2449 CAPA and PIPELINING, RFC 5034 AUTH):
// USER/PASS, AUTH PLAIN and AUTH LOGIN become a login request, everything
// else that is valid before login is answered locally. It also rewrites the
// upstream's CAPA list. AUTH LOGIN is taken but not offered: CAPA says
// "SASL PLAIN", as emailproxy.py's does, and some clients send LOGIN
// without looking.
package pop3

import (
	"bytes"
	"strings"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/protocol/textline"
)

// Limits bound what an unauthenticated client may send.
type Limits struct {
	MaxLine   int // bytes in one command line (AUTH PLAIN responses need more than RFC 2449's 255)
	MaxErrors int // bad commands before the client is disconnected
}

// DefaultLimits suit every real client.
var DefaultLimits = Limits{MaxLine: 8192, MaxErrors: 10}

type state int

const (
	stAuthorization state = iota
	stSASL                // waiting for the AUTH PLAIN response line
	stLoginUser           // AUTH LOGIN: waiting for the base64 user name
	stLoginPass           // AUTH LOGIN: waiting for the base64 password
	stPending             // a login is in progress
	stClosed
)

// TLS says how the client side may use TLS. A listener that offers STLS
// requires it before login.
type TLS struct {
	Offered bool // STLS is offered (a certificate is configured)
	Active  bool // the connection is already TLS
}

func (t TLS) preTLS() bool { return t.Offered && !t.Active }

// Profile is the greeting and CAPA answers, built once per upstream.
type Profile struct {
	Greeting []byte // "+OK ...\r\n"
	capa     []byte // full CAPA response, "+OK ...\r\n...\r\n.\r\n"
	preCapa  []byte // the same before a required STLS
}

// NewProfile prepares the answers from the upstream's greeting and CAPA
// lines.
func NewProfile(upstreamGreeting []byte, upstreamCapa []string) *Profile {
	lines := ProxyCapa(upstreamCapa)
	pre := make([]string, 0, len(lines)+1)
	for _, l := range lines {
		if l != "SASL PLAIN" && l != "USER" {
			pre = append(pre, l)
		}
	}
	pre = append(pre, "STLS")
	return &Profile{Greeting: ProxyGreeting(upstreamGreeting), capa: CapaResponse(lines), preCapa: CapaResponse(pre)}
}

// Capa is the CAPA response for the TLS state.
func (p *Profile) Capa(t TLS) []byte {
	if t.preTLS() {
		return p.preCapa
	}
	return p.capa
}

// Machine is one client connection's pre-login state.
type Machine struct {
	prof     *Profile
	tls      TLS
	lim      Limits
	st       state
	user     []byte // from USER
	haveUser bool
	lines    textline.Reader
	errors   int
	out      []byte
}

// New returns a machine for a client that was sent prof.Greeting.
func New(prof *Profile, tls TLS, lim Limits) *Machine {
	return &Machine{prof: prof, tls: tls, lim: lim}
}

// TLSStarted records a completed STLS; a USER given before it is dropped.
func (m *Machine) TLSStarted() {
	m.tls.Active = true
	m.user, m.haveUser = m.user[:0], false
	m.st = stAuthorization
}

// Next consumes input; call it until it returns protocol.NeedMore,
// protocol.Login or protocol.Close.
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
		return n, m.closeWith("-ERR Line too long, closing\r\n")
	case textline.Overlong:
		m.st = stAuthorization
		return n, m.err("Line too long")
	}
	switch m.st {
	case stSASL:
		m.st = stAuthorization
		creds, err := sasl.DecodePlain(line)
		if err == sasl.ErrCancelled {
			return n, m.err("Authentication cancelled")
		} else if err != nil {
			return n, m.err("Invalid SASL PLAIN response")
		}
		return n, m.startLogin(creds)
	case stLoginUser:
		m.st = stAuthorization
		return n, m.loginUser(line)
	case stLoginPass:
		m.st = stAuthorization
		pass, err := sasl.DecodeBase64(line)
		if act, bad := m.loginError(err); bad {
			return n, act
		}
		// One allocation holds both credentials, as for USER/PASS.
		both := string(m.user) + string(pass)
		u := len(m.user)
		m.user = m.user[:0]
		return n, m.startLogin(sasl.Credentials{Username: both[:u], Password: both[u:]})
	}
	return n, m.command(line)
}

// loginUser takes AUTH LOGIN's base64 user name and asks for the password.
func (m *Machine) loginUser(b64 []byte) protocol.Action {
	user, err := sasl.DecodeBase64(b64)
	if act, bad := m.loginError(err); bad {
		return act
	}
	m.user, m.haveUser = append(m.user[:0], user...), false
	m.st = stLoginPass
	m.out = append(m.out, "+ UGFzc3dvcmQ6\r\n"...) // "Password:"
	return protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) loginError(err error) (protocol.Action, bool) {
	switch err {
	case nil:
		return protocol.Action{}, false
	case sasl.ErrCancelled:
		return m.err("Authentication cancelled"), true
	}
	return m.err("Invalid SASL LOGIN response"), true
}

func (m *Machine) command(line []byte) protocol.Action {
	cmd, arg := textline.Word(line)
	switch {
	case textline.EqualFold(cmd, "CAPA"):
		m.out = append(m.out, m.prof.Capa(m.tls)...)
		return protocol.Action{Kind: protocol.Reply, Out: m.out}
	case textline.EqualFold(cmd, "STLS"):
		if !m.tls.preTLS() {
			return m.err("STLS is not available")
		}
		m.out = append(m.out, "+OK Begin TLS negotiation\r\n"...)
		return protocol.Action{Kind: protocol.StartTLS, Out: m.out}
	case m.tls.preTLS() && (textline.EqualFold(cmd, "USER") || textline.EqualFold(cmd, "PASS") || textline.EqualFold(cmd, "AUTH")):
		return m.err("Use STLS first")
	case textline.EqualFold(cmd, "USER"):
		if len(arg) == 0 {
			return m.err("USER needs a user name")
		}
		m.user, m.haveUser = append(m.user[:0], arg...), true
		m.out = append(m.out, "+OK Send your password\r\n"...)
		return protocol.Action{Kind: protocol.Reply, Out: m.out}
	case textline.EqualFold(cmd, "PASS"):
		if !m.haveUser {
			return m.err("Send USER first")
		}
		// The password is the rest of the line: it may contain spaces.
		// One allocation holds both credentials.
		both := string(m.user) + string(arg)
		u := len(m.user)
		m.user, m.haveUser = m.user[:0], false
		return m.startLogin(sasl.Credentials{Username: both[:u], Password: both[u:]})
	case textline.EqualFold(cmd, "AUTH"):
		return m.auth(arg)
	case textline.EqualFold(cmd, "QUIT"):
		return m.closeWith("+OK Bye\r\n")
	case textline.EqualFold(cmd, "APOP"):
		return m.err("APOP is not supported: use USER/PASS or AUTH PLAIN")
	}
	return m.err("Unknown command or command not valid before login")
}

func (m *Machine) auth(arg []byte) protocol.Action {
	if len(arg) == 0 {
		m.out = append(m.out, "+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n"...)
		return protocol.Action{Kind: protocol.Reply, Out: m.out}
	}
	mech, ir := textline.Word(arg)
	if textline.EqualFold(mech, "LOGIN") {
		if ir == nil {
			m.st = stLoginUser
			m.out = append(m.out, "+ VXNlcm5hbWU6\r\n"...) // "Username:"
			return protocol.Action{Kind: protocol.Reply, Out: m.out}
		}
		return m.loginUser(ir)
	}
	if !textline.EqualFold(mech, "PLAIN") {
		return m.err("Unsupported SASL mechanism (use PLAIN)")
	}
	if ir == nil {
		m.st = stSASL
		m.out = append(m.out, "+ \r\n"...)
		return protocol.Action{Kind: protocol.Reply, Out: m.out}
	}
	creds, err := sasl.DecodePlain(ir)
	if err == sasl.ErrCancelled {
		return m.err("Authentication cancelled")
	} else if err != nil {
		return m.err("Invalid SASL PLAIN response")
	}
	return m.startLogin(creds)
}

func (m *Machine) startLogin(creds sasl.Credentials) protocol.Action {
	m.st = stPending
	return protocol.Action{Kind: protocol.Login, Out: m.out, Creds: creds}
}

// LoginFailed ends a login that did not succeed; the client may retry.
// temporary marks failures that are not the client's fault (RFC 3206
// SYS/TEMP instead of AUTH).
func (m *Machine) LoginFailed(msg string, temporary bool) []byte {
	m.out = m.out[:0]
	m.st = stAuthorization
	code := "[AUTH] "
	if temporary {
		code = "[SYS/TEMP] "
	}
	m.out = append(m.out, "-ERR "...)
	m.out = append(m.out, code...)
	m.out = textline.AppendText(m.out, msg)
	m.out = append(m.out, "\r\n"...)
	return m.out
}

func (m *Machine) err(text string) protocol.Action {
	m.errors++
	if m.errors > m.lim.MaxErrors {
		return m.closeWith("-ERR Too many bad commands, closing\r\n")
	}
	m.out = append(m.out, "-ERR "...)
	m.out = append(m.out, text...)
	m.out = append(m.out, "\r\n"...)
	return protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) closeWith(text string) protocol.Action {
	m.st = stClosed
	m.out = append(m.out, text...)
	return protocol.Action{Kind: protocol.Close, Out: m.out}
}

// ProxyCapa turns the upstream's CAPA lines (without "+OK" and ".") into
// the proxy's (research §5.2): SASL offers PLAIN only, USER is offered,
// STLS goes (this listener has no local TLS).
func ProxyCapa(upstream []string) []string {
	out := make([]string, 0, len(upstream)+2)
	hasSASL, hasUser := false, false
	for _, l := range upstream {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue // a blank line offers nothing
		}
		switch strings.ToUpper(f[0]) {
		case "SASL":
			if !hasSASL {
				out = append(out, "SASL PLAIN")
			}
			hasSASL = true
			continue
		case "STLS":
			continue
		case "USER":
			hasUser = true
		}
		out = append(out, l)
	}
	if !hasSASL {
		out = append(out, "SASL PLAIN")
	}
	if !hasUser {
		out = append(out, "USER")
	}
	return out
}

// CapaResponse formats a full CAPA response.
func CapaResponse(lines []string) []byte {
	var b bytes.Buffer
	b.WriteString("+OK Capability list follows\r\n")
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

// ProxyGreeting rewrites the upstream's "+OK ..." greeting: an APOP
// timestamp "<...>" is removed, since the proxy does not offer APOP.
func ProxyGreeting(greeting []byte) []byte {
	g := bytes.TrimRight(greeting, "\r\n")
	if !bytes.HasPrefix(g, []byte("+OK")) {
		return []byte("+OK POP3 proxy ready\r\n")
	}
	if i := bytes.IndexByte(g, '<'); i >= 0 {
		if j := bytes.IndexByte(g[i:], '>'); j >= 0 && bytes.IndexByte(g[i:i+j], '@') >= 0 {
			g = append(append([]byte{}, g[:i]...), g[i+j+1:]...)
			g = bytes.TrimRight(g, " ")
		}
	}
	return append(append([]byte{}, g...), "\r\n"...)
}

// Confidential reports whether the next input is a SASL response (it
// holds credentials): a trace must not show it.
func (m *Machine) Confidential() bool {
	return m.st == stSASL || m.st == stLoginUser || m.st == stLoginPass
}
