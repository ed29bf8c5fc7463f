// Package imap is the I/O-free IMAP4 state machine for the client side of
// the proxy before login: it parses commands (tags, atoms, quoted strings,
// synchronising and non-synchronising literals read by byte count), answers
// what it can answer itself, and turns LOGIN or AUTHENTICATE PLAIN into a
// login request. It also rewrites upstream capabilities and reads upstream
// status lines.
package imap

import (
	"bytes"
	"strings"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/sasl"
	"github.com/emailproxy/emailproxy/protocol/textline"
)

// Limits bound what an unauthenticated client may send.
type Limits struct {
	MaxLine    int // bytes in one command line
	MaxLiteral int // bytes in all literals of one command
	MaxErrors  int // bad commands before the client is disconnected
}

// DefaultLimits suit every real client: user names, passwords and SASL
// responses are far below them.
var DefaultLimits = Limits{MaxLine: 8192, MaxLiteral: 8192, MaxErrors: 10}

type state int

const (
	stCommand  state = iota // waiting for a command line
	stLiteral               // reading literal bytes
	stContinue              // reading the rest of a command after a literal
	stSASL                  // waiting for an AUTHENTICATE response line
	stPending               // a login is in progress
	stClosed
)

// saslStep says which answer an AUTHENTICATE exchange waits for.
type saslStep int

const (
	saslPlain saslStep = iota
	saslLoginUser
	saslLoginPass
)

// part is a piece of the command being assembled: text between literals,
// or a literal's bytes. Offsets index Machine.arena.
type part struct {
	start, end int
	literal    bool
}

// TLS says how the client side may use TLS. A listener that offers
// STARTTLS requires it before login.
type TLS struct {
	Offered bool // STARTTLS is offered (a certificate is configured)
	Active  bool // the connection is already TLS
}

func (t TLS) preTLS() bool { return t.Offered && !t.Active }

// Machine is one client connection's pre-login state. The zero value is not
// usable: call New.
type Machine struct {
	prof     *Profile
	tls      TLS
	lim      Limits
	st       state
	arena    []byte // owned bytes of the command being assembled
	parts    []part
	litLeft  int
	litTotal int
	lines    textline.Reader
	errors   int
	sasl     saslStep
	tag      []byte
	user     string
	out      []byte
	toks     [][]byte // scratch for tokens
}

// New returns a machine for a client that was sent prof.Greeting(tls).
func New(prof *Profile, tls TLS, lim Limits) *Machine {
	return &Machine{prof: prof, tls: tls, lim: lim}
}

// TLSStarted records a completed STARTTLS.
func (m *Machine) TLSStarted() {
	m.tls.Active = true
	m.resetCommand()
}

// Next consumes input and returns how many bytes it used and what to do.
// Call it until it returns protocol.NeedMore (or protocol.Login or
// protocol.Close).
func (m *Machine) Next(in []byte) (int, protocol.Action) {
	m.out = m.out[:0]
	return protocol.Run(in, m.step)
}

func (m *Machine) step(in []byte) (int, protocol.Action) {
	switch m.st {
	case stCommand, stContinue:
		return m.readLine(in)
	case stLiteral:
		n := min(len(in), m.litLeft)
		start := len(m.arena)
		m.arena = append(m.arena, in[:n]...)
		m.extendLiteral(start)
		m.litLeft -= n
		if m.litLeft == 0 {
			m.st = stContinue
		}
		return n, protocol.Action{}
	case stSASL:
		line, n, ev := m.lines.Next(in, m.lim.MaxLine)
		switch ev {
		case textline.Wait:
			return n, protocol.Action{}
		case textline.Flood:
			return n, m.bye("Line too long")
		case textline.Overlong:
			m.st = stCommand
			return n, m.bad(m.tag, "SASL response too long")
		}
		return n, m.saslResponse(line)
	}
	return 0, protocol.Action{}
}

func (m *Machine) readLine(in []byte) (int, protocol.Action) {
	line, n, ev := m.lines.Next(in, m.lim.MaxLine)
	switch ev {
	case textline.Wait:
		return n, protocol.Action{}
	case textline.Flood:
		m.resetCommand()
		return n, m.bye("Line too long")
	case textline.Overlong:
		m.resetCommand()
		return n, m.bad(star, "Command line too long")
	}
	// A line ending in {n} or {n+} announces a literal.
	litLen, nonSync, markerAt, ok := literalMarker(line)
	text := line
	if ok {
		text = line[:markerAt]
	}
	start := len(m.arena)
	m.arena = append(m.arena, text...)
	m.parts = append(m.parts, part{start: start, end: len(m.arena)})
	if !ok {
		return n, m.dispatch()
	}
	if len(m.parts) == 1 {
		// The tag is needed for the error replies below.
		tag, _ := textline.Word(text)
		m.tag = append(m.tag[:0], tag...)
	}
	m.litTotal += litLen
	if m.litTotal > m.lim.MaxLiteral || len(m.parts) > 16 {
		tag := m.tag
		m.resetCommand()
		if nonSync {
			// The client sends the bytes anyway; we cannot stay in step.
			return n, m.bye("Literal too large")
		}
		return n, m.bad(tag, "Literal too large")
	}
	m.parts = append(m.parts, part{start: len(m.arena), end: len(m.arena), literal: true})
	m.litLeft = litLen
	m.st = stLiteral
	if litLen == 0 {
		m.st = stContinue
	}
	if nonSync {
		return n, protocol.Action{}
	}
	m.out = append(m.out, "+ Ready for literal data\r\n"...)
	return n, protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) extendLiteral(start int) {
	p := &m.parts[len(m.parts)-1]
	if p.end != start {
		panic("imap: literal bytes out of place")
	}
	p.end = len(m.arena)
}

// literalMarker finds a trailing "{n}" or "{n+}" (RFC 9051, RFC 7888).
func literalMarker(line []byte) (n int, nonSync bool, at int, ok bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false, 0, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false, 0, false
	}
	digits := line[open+1 : len(line)-1]
	if len(digits) > 0 && digits[len(digits)-1] == '+' {
		nonSync = true
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 || len(digits) > 9 {
		return 0, false, 0, false
	}
	v := 0
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false, 0, false
		}
		v = v*10 + int(c-'0')
	}
	return v, nonSync, open, true
}

// resetCommand drops the command being assembled and waits for the next.
func (m *Machine) resetCommand() {
	m.clearCommand()
	m.st = stCommand
}

func (m *Machine) clearCommand() {
	m.arena = m.arena[:0]
	m.parts = m.parts[:0]
	m.litTotal, m.litLeft = 0, 0
}

// dispatch runs a complete command; the handlers set the next state.
func (m *Machine) dispatch() protocol.Action {
	m.st = stCommand
	defer m.clearCommand()
	first := m.parts[0]
	line := m.arena[first.start:first.end]
	tag, rest := textline.Word(line)
	cmd, args := textline.Word(rest)
	if len(line) == 0 {
		return m.bad(star, "Empty command")
	}
	if !validTag(tag) || len(cmd) == 0 {
		return m.bad(star, "Invalid tag or missing command")
	}
	m.tag = append(m.tag[:0], tag...)
	t := m.tag
	switch {
	case textline.EqualFold(cmd, "CAPABILITY"):
		m.out = append(m.out, m.prof.CapabilityLine(m.tls)...)
		return m.ok(t, "CAPABILITY completed")
	case textline.EqualFold(cmd, "NOOP"):
		return m.ok(t, "NOOP completed")
	case textline.EqualFold(cmd, "LOGOUT"):
		m.out = append(m.out, "* BYE Logging out\r\n"...)
		m.ok(t, "LOGOUT completed")
		m.st = stClosed
		return protocol.Action{Kind: protocol.Close, Out: m.out}
	case textline.EqualFold(cmd, "ID"):
		m.out = append(m.out, "* ID NIL\r\n"...)
		return m.ok(t, "ID completed")
	case textline.EqualFold(cmd, "LOGIN"), textline.EqualFold(cmd, "AUTHENTICATE"):
		if m.tls.preTLS() {
			return m.no(t, "PRIVACYREQUIRED", "Use STARTTLS first")
		}
		if textline.EqualFold(cmd, "LOGIN") {
			return m.login(t, args)
		}
		return m.authenticate(t, args)
	case textline.EqualFold(cmd, "STARTTLS"):
		if !m.tls.preTLS() {
			return m.bad(t, "STARTTLS is not available")
		}
		m.ok(t, "Begin TLS negotiation now")
		return protocol.Action{Kind: protocol.StartTLS, Out: m.out}
	case textline.EqualFold(cmd, "ENABLE"):
		return m.bad(t, "ENABLE is valid only after login")
	}
	return m.bad(t, "Unknown command or command not valid before login")
}

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
	m.no(nil, code, msg)
	return m.out
}

func (m *Machine) ok(tag []byte, text string) protocol.Action {
	m.out = append(m.out, tag...)
	m.out = append(m.out, " OK "...)
	m.out = append(m.out, text...)
	m.out = append(m.out, "\r\n"...)
	return protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) no(tag []byte, code, text string) protocol.Action {
	m.out = append(m.out, tag...)
	m.out = append(m.out, " NO "...)
	if code != "" {
		m.out = append(m.out, '[')
		m.out = append(m.out, code...)
		m.out = append(m.out, "] "...)
	}
	m.out = append(m.out, text...)
	m.out = append(m.out, "\r\n"...)
	return protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) bad(tag []byte, text string) protocol.Action {
	m.errors++
	if m.errors > m.lim.MaxErrors {
		return m.bye("Too many bad commands")
	}
	m.out = append(m.out, tag...)
	m.out = append(m.out, " BAD "...)
	m.out = append(m.out, text...)
	m.out = append(m.out, "\r\n"...)
	return protocol.Action{Kind: protocol.Reply, Out: m.out}
}

func (m *Machine) bye(text string) protocol.Action {
	m.st = stClosed
	m.out = append(m.out, "* BYE "...)
	m.out = append(m.out, text...)
	m.out = append(m.out, "\r\n"...)
	return protocol.Action{Kind: protocol.Close, Out: m.out}
}

// star is the tag of untagged answers.
var star = []byte("*")

// tokens splits the LOGIN arguments into astrings: atoms, quoted strings
// (with \\ and \" escapes) and literals. It returns nil on a syntax error.
func (m *Machine) tokens(args []byte) [][]byte {
	toks := m.toks[:0]
	defer func() { m.toks = toks[:0] }()
	for i, p := range m.parts {
		if p.literal {
			toks = append(toks, m.arena[p.start:p.end])
			continue
		}
		text := m.arena[p.start:p.end]
		if i == 0 {
			text = args
		}
		if i > 0 && len(text) > 0 {
			// Text after a literal starts with the separating space.
			if text[0] != ' ' {
				return nil
			}
			text = text[1:]
		}
		if i > 0 && len(text) == 0 {
			continue
		}
		var ok bool
		if toks, ok = splitAStrings(toks, text); !ok {
			return nil
		}
	}
	return toks
}

// splitAStrings parses space-separated atoms and quoted strings. When a
// literal follows, text ends with the space before its marker.
func splitAStrings(out [][]byte, text []byte) ([][]byte, bool) {
	for len(text) > 0 {
		var tok []byte
		if text[0] == '"' {
			var ok bool
			tok, text, ok = quoted(text)
			if !ok {
				return nil, false
			}
		} else {
			end := bytes.IndexByte(text, ' ')
			if end < 0 {
				end = len(text)
			}
			tok, text = text[:end], text[end:]
			if !validAtom(tok) {
				return nil, false
			}
		}
		out = append(out, tok)
		if len(text) == 0 {
			break
		}
		if text[0] != ' ' {
			return nil, false
		}
		text = text[1:]
	}
	return out, true
}

// quoted parses a quoted string at the start of text, undoing the \\ and
// \" escapes of RFC 9051 in place (the unescaped token is never longer
// than what it was read from), so parsing allocates nothing.
func quoted(text []byte) (tok, rest []byte, ok bool) {
	w := 1
	for i := 1; i < len(text); i++ {
		switch c := text[i]; c {
		case '\\':
			if i+1 >= len(text) || (text[i+1] != '\\' && text[i+1] != '"') {
				return nil, nil, false
			}
			text[w] = text[i+1]
			w++
			i++
		case '"':
			return text[1:w], text[i+1:], true
		case '\r', '\n', 0:
			return nil, nil, false
		default:
			text[w] = c
			w++
		}
	}
	return nil, nil, false
}

// validTag: ASTRING-CHAR except "+" (RFC 9051).
func validTag(tag []byte) bool {
	if len(tag) == 0 {
		return false
	}
	for _, c := range tag {
		if c == '+' || (!isAtomChar(c) && c != ']') {
			return false
		}
	}
	return true
}

// validAtom accepts ASTRING-CHARs; 8-bit bytes are allowed too, since
// clients send UTF-8 user names and passwords unquoted.
func validAtom(tok []byte) bool {
	if len(tok) == 0 {
		return false
	}
	for _, c := range tok {
		if !isAtomChar(c) && c != ']' && c < 0x80 {
			return false
		}
	}
	return true
}

func isAtomChar(c byte) bool {
	if c <= ' ' || c == 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}
