package imap

// The IMAP syntax the machine reads before login: tags, atoms, quoted
// strings and literals (RFC 9051 §4).

import "bytes"

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
