package engine

import (
	"bytes"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/protocol/textline"
)

// The protocol trace (--debug): every line before the relay, both sides,
// like emailproxy.py's, with secrets redacted. A client line is shown
// whole only when it is a command that carries no credential; of any
// other line, only its tag and command word; a line that is not a command
// (a literal, a SASL response) not at all. Nothing is traced unless the
// debug level is on, so the trace costs nothing otherwise.

// safeCommands may be traced with their arguments; for other commands
// only the tag, the command word (and a SASL mechanism) are shown.
var safeCommands = map[config.Protocol]map[string]bool{
	config.IMAP: {"CAPABILITY": true, "NOOP": true, "LOGOUT": true, "ID": true, "STARTTLS": true},
	config.POP:  {"CAPA": true, "QUIT": true, "NOOP": true, "STLS": true, "USER": true},
	config.SMTP: {"EHLO": true, "HELO": true, "QUIT": true, "NOOP": true, "RSET": true, "STARTTLS": true, "HELP": true},
}

// knownCommands are shown by name (with their arguments redacted unless
// safe); any other line might be a stray credential and is hidden.
var knownCommands = map[config.Protocol]map[string]bool{
	config.IMAP: {"LOGIN": true, "AUTHENTICATE": true, "ENABLE": true, "SELECT": true, "EXAMINE": true},
	config.POP:  {"PASS": true, "AUTH": true, "APOP": true, "STAT": true, "LIST": true, "RETR": true, "UIDL": true, "TOP": true, "DELE": true, "RSET": true},
	config.SMTP: {"AUTH": true, "MAIL": true, "RCPT": true, "DATA": true, "BDAT": true, "VRFY": true, "EXPN": true},
}

// redactClient is a client's input as the trace may show it, line by
// line. Once a line announces an IMAP literal, the rest of the input is
// the literal and its command's end: hidden.
func redactClient(proto config.Protocol, data []byte) []string {
	var out []string
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		out = append(out, redactClientLine(proto, line))
		if proto == config.IMAP && bytes.HasSuffix(line, []byte("}")) && bytes.LastIndexByte(line, '{') >= 0 && len(data) > 0 {
			return append(out, "[literal redacted]")
		}
	}
	return out
}

// redactClientLine is one command line as the trace may show it.
func redactClientLine(proto config.Protocol, line []byte) string {
	rest := line
	var tag []byte
	if proto == config.IMAP {
		tag, rest = textline.Word(line)
	}
	word, args := textline.Word(rest)
	if len(word) == 0 || len(line) > 0 && line[0] == ' ' {
		return "[client data redacted]" // not a command: perhaps a stray credential
	}
	upper := string(bytes.ToUpper(word))
	if safeCommands[proto][upper] {
		return string(line)
	}
	if !knownCommands[proto][upper] {
		return "[client data redacted]"
	}
	shown := upper
	if tag != nil {
		shown = string(tag) + " " + upper
	}
	if (upper == "AUTH" || upper == "AUTHENTICATE") && len(args) > 0 { // the mechanism is no secret
		var mech []byte
		mech, args = textline.Word(args)
		shown += " " + string(bytes.ToUpper(mech))
	}
	if len(args) > 0 {
		shown += " [redacted]"
	}
	return shown
}

func debugOn(log *zerolog.Logger) bool {
	return log.GetLevel() <= zerolog.DebugLevel && zerolog.GlobalLevel() <= zerolog.DebugLevel
}

// traceClient traces what a client sent before login; confidential: the
// machine said the input holds credentials.
func (l *listener) traceClient(client string, data []byte, confidential bool) {
	if !debugOn(&l.log) {
		return
	}
	lines := []string{"[credentials redacted]"}
	if !confidential {
		lines = redactClient(l.srv.Protocol, data)
	}
	for _, line := range lines {
		l.log.Debug().Str("client", client).Str("dir", "client->proxy").Str("line", line).Msg("protocol")
	}
}

// traceProxy traces what the proxy answered a client before login (its
// own words: no secret).
func (l *listener) traceProxy(client string, data []byte) {
	if !debugOn(&l.log) {
		return
	}
	for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\r\n")), []byte("\r\n")) {
		l.log.Debug().Str("client", client).Str("dir", "proxy->client").Str("line", string(line)).Msg("protocol")
	}
}

// traceUpstream is the upstream side's trace hook (already redacted).
func (l *listener) traceUpstream(dir, line string) {
	if ev := l.log.Debug(); ev.Enabled() {
		ev.Str("dir", dir).Str("line", line).Msg("protocol")
	}
}
