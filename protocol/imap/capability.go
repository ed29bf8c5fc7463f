package imap

import (
	"bytes"
	"strings"
)

// Profile is what clients are told about the server before login: the
// upstream's greeting and capabilities, rewritten for the proxy, in the
// variants a connection may need.
type Profile struct {
	greeting []byte   // upstream greeting, without CRLF
	caps     []string // after ProxyCapabilities
	plain    []byte   // "* CAPABILITY ...\r\n" when no STARTTLS is pending
	preTLS   []byte   // the same before a required STARTTLS
	preCaps  []string
	// Greetings for both states, built once: every connection gets one.
	plainGreeting, preGreeting []byte
}

// NewProfile prepares the greeting and capability answers from what the
// upstream server sent.
func NewProfile(upstreamGreeting []byte, upstreamCaps []string) *Profile {
	caps := ProxyCapabilities(upstreamCaps)
	pre := make([]string, 0, len(caps)+2)
	for _, c := range caps {
		if c != "AUTH=PLAIN" && c != "SASL-IR" {
			pre = append(pre, c)
		}
	}
	pre = append(pre, "STARTTLS", "LOGINDISABLED")
	g := bytes.TrimRight(upstreamGreeting, "\r\n")
	return &Profile{
		greeting: g, caps: caps, preCaps: pre,
		plain:         CapabilityLine(caps),
		preTLS:        CapabilityLine(pre),
		plainGreeting: ProxyGreeting(g, caps),
		preGreeting:   ProxyGreeting(g, pre),
	}
}

// CapabilityLine is the untagged CAPABILITY response for the TLS state.
func (p *Profile) CapabilityLine(t TLS) []byte {
	if t.preTLS() {
		return p.preTLS
	}
	return p.plain
}

// Greeting is the greeting to send, with a CAPABILITY code matching the
// TLS state if the upstream greeting had one.
func (p *Profile) Greeting(t TLS) []byte {
	if t.preTLS() {
		return p.preGreeting
	}
	return p.plainGreeting
}

// ProxyCapabilities turns the upstream's pre-login capabilities into the
// ones the proxy offers its clients (research §5.1): every AUTH=mechanism
// becomes a single AUTH=PLAIN placed after the IMAP version atoms, SASL-IR
// is offered (the proxy decodes initial responses itself), LOGINDISABLED
// goes (the proxy accepts LOGIN), and STARTTLS goes (whether the proxy offers
// it depends on its own listener, see Profile).
func ProxyCapabilities(upstream []string) []string {
	out := make([]string, 0, len(upstream)+2)
	inserted := false
	hasSASLIR := false
	for _, c := range upstream {
		u := strings.ToUpper(c)
		switch {
		case strings.HasPrefix(u, "AUTH="), u == "LOGINDISABLED", u == "STARTTLS":
			continue
		case u == "SASL-IR":
			hasSASLIR = true
		}
		if !inserted && !strings.HasPrefix(u, "IMAP") {
			out = append(out, "AUTH=PLAIN")
			inserted = true
		}
		out = append(out, c)
	}
	if !inserted {
		out = append(out, "AUTH=PLAIN")
	}
	if !hasSASLIR {
		// Right after AUTH=PLAIN, as the reference places it.
		for i, c := range out {
			if c == "AUTH=PLAIN" {
				out = append(out[:i+1], append([]string{"SASL-IR"}, out[i+1:]...)...)
				break
			}
		}
	}
	return out
}

// CapabilityLine formats an untagged CAPABILITY response.
func CapabilityLine(caps []string) []byte {
	return []byte("* CAPABILITY " + strings.Join(caps, " ") + "\r\n")
}

// HasCapability reports whether caps holds c (case-insensitive).
func HasCapability(caps []string, c string) bool {
	for _, x := range caps {
		if strings.EqualFold(x, c) {
			return true
		}
	}
	return false
}

// ParseCapabilityLine reads "* CAPABILITY a b c"; ok is false for any
// other line.
func ParseCapabilityLine(line []byte) (caps []string, ok bool) {
	const prefix = "* CAPABILITY"
	if len(line) < len(prefix) || !bytes.EqualFold(line[:len(prefix)], []byte(prefix)) {
		return nil, false
	}
	rest := line[len(prefix):]
	if len(rest) > 0 && rest[0] != ' ' {
		return nil, false
	}
	return strings.Fields(string(rest)), true
}

// GreetingCapabilities reads the "[CAPABILITY ...]" response code of an
// "* OK" greeting.
func GreetingCapabilities(greeting []byte) (caps []string, ok bool) {
	const code = "[CAPABILITY "
	i := indexASCIIFold(greeting, code)
	if i < 0 {
		return nil, false
	}
	rest := greeting[i+len(code):]
	end := bytes.IndexByte(rest, ']')
	if end < 0 {
		return nil, false
	}
	return strings.Fields(string(rest[:end])), true
}

// ProxyGreeting rewrites an upstream "* OK ..." greeting for clients: a
// CAPABILITY code in it gets the proxy's capabilities (issue #109 of the
// reference: clients read capabilities from the greeting).
func ProxyGreeting(greeting []byte, caps []string) []byte {
	g := bytes.TrimRight(greeting, "\r\n")
	if len(g) < 4 || indexASCIIFold(g[:4], "* OK") != 0 {
		return []byte("* OK [CAPABILITY " + strings.Join(caps, " ") + "] IMAP4 proxy ready\r\n")
	}
	const code = "[CAPABILITY "
	i := indexASCIIFold(g, code)
	if i >= 0 {
		if end := bytes.IndexByte(g[i:], ']'); end >= 0 {
			out := append([]byte{}, g[:i]...)
			out = append(out, "[CAPABILITY "+strings.Join(caps, " ")+"]"...)
			out = append(out, g[i+end+1:]...)
			return append(out, "\r\n"...)
		}
	}
	return append(append([]byte{}, g...), "\r\n"...)
}

// indexASCIIFold is the index of sub, which is ASCII, in s, ignoring
// ASCII case. Upper-casing s first would move bytes: some runes change
// length in upper case, and an index found in the copy could fall past
// the end of s.
func indexASCIIFold(s []byte, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for j < len(sub) && lowerASCII(s[i+j]) == lowerASCII(sub[j]) {
			j++
		}
		if j == len(sub) {
			return i
		}
	}
	return -1
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// Status is the kind of a server response line.
type Status int

const (
	Untagged     Status = iota // "* ..."
	Continuation               // "+ ..."
	OK
	NO
	BAD
	Other // a tagged line with no OK/NO/BAD, or garbage
)

// ParseResponse classifies one server line (without CRLF). For tagged
// lines it returns the tag; for continuations, the text after "+ ".
func ParseResponse(line []byte) (st Status, tag, text []byte) {
	if len(line) == 0 {
		return Other, nil, nil
	}
	if line[0] == '*' {
		return Untagged, nil, line
	}
	if line[0] == '+' {
		return Continuation, nil, bytes.TrimPrefix(line[1:], []byte(" "))
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return Other, nil, nil
	}
	tag = line[:sp]
	rest := line[sp+1:]
	word, text := rest, []byte(nil)
	if i := bytes.IndexByte(rest, ' '); i >= 0 {
		word, text = rest[:i], rest[i+1:]
	}
	switch {
	case bytes.EqualFold(word, []byte("OK")):
		return OK, tag, text
	case bytes.EqualFold(word, []byte("NO")):
		return NO, tag, text
	case bytes.EqualFold(word, []byte("BAD")):
		return BAD, tag, text
	}
	return Other, tag, text
}
