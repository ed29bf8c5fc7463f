// Package imap is the I/O-free IMAP4 state machine for the client side of
// the proxy before login: it parses commands (tags, atoms, quoted strings,
// synchronising and non-synchronising literals read by byte count), answers
// what it can answer itself, and turns LOGIN or AUTHENTICATE PLAIN into a
// login request. It also rewrites upstream capabilities and reads upstream
// status lines.
package imap

import (
	"github.com/emailproxy/emailproxy/protocol"
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

// Confidential reports whether the next input holds credentials (a login
// literal, the rest of its command line, or a SASL response): a trace
// must not show it.
func (m *Machine) Confidential() bool {
	return m.st == stLiteral || m.st == stContinue || m.st == stSASL
}
