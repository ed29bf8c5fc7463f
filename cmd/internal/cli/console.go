package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
)

// consoleWriter prints zerolog's JSON events as zerolog.ConsoleWriter does
// without colour, byte for byte, at a fraction of its cost: it reads the
// flat objects the proxy logs with a small scanner instead of decoding
// each into a map (the console writer was 6 % of the proxy's CPU per
// session). An event it does not recognise (a nested object, a caller
// field) goes to the ConsoleWriter itself. Not safe for concurrent use:
// the log's ring buffer calls it from one goroutine.
type consoleWriter struct {
	out    io.Writer
	slow   zerolog.ConsoleWriter
	buf    []byte
	fields []field
	rest   []field
	// The last timestamp read and how it printed: events come many to a
	// second.
	lastTS, lastTSOut []byte
}

type field struct {
	key, val []byte
	str      bool   // a JSON string (val still escaped)
	name     []byte // key unescaped
}

func newConsoleWriter(out io.Writer) *consoleWriter {
	return &consoleWriter{out: out, slow: zerolog.ConsoleWriter{Out: out, NoColor: true, TimeFormat: consoleTimeFormat}}
}

const consoleTimeFormat = "2006-01-02 15:04:05"

func (w *consoleWriter) Write(p []byte) (int, error) {
	line, ok := w.format(p)
	if !ok {
		return w.slow.Write(p)
	}
	if _, err := w.out.Write(line); err != nil {
		return 0, err
	}
	return len(p), nil
}

// format returns the console line for event p, or false if p is not a
// flat object of strings, numbers, booleans and nulls.
func (w *consoleWriter) format(p []byte) ([]byte, bool) {
	fs, ok := scanFlatObject(p, w.fields[:0])
	w.fields = fs
	if !ok {
		return nil, false
	}
	// Later duplicates win, as in a map; every key is printed once.
	var ts, level, msg *field
	rest := w.rest[:0]
	for i := range fs {
		f := &fs[i]
		name, ok := unescaped(f.key)
		if !ok {
			return nil, false
		}
		f.name = name
		switch string(name) {
		case zerolog.TimestampFieldName:
			ts = f
		case zerolog.LevelFieldName:
			level = f
		case zerolog.MessageFieldName:
			msg = f
		case zerolog.CallerFieldName:
			return nil, false
		default:
			rest = append(rest, *f)
		}
	}
	b := w.buf[:0]
	part := func(s []byte) {
		if len(s) > 0 {
			if len(b) > 0 {
				b = append(b, ' ')
			}
			b = append(b, s...)
		}
	}
	// Timestamp.
	switch {
	case ts == nil:
		part([]byte("<nil>"))
	case ts.str:
		if !bytes.Equal(ts.val, w.lastTS) {
			v, ok := unescaped(ts.val)
			if !ok {
				return nil, false
			}
			w.lastTS = append(w.lastTS[:0], ts.val...)
			if t, err := time.ParseInLocation(zerolog.TimeFieldFormat, string(v), time.Local); err == nil {
				w.lastTSOut = t.In(time.Local).AppendFormat(w.lastTSOut[:0], consoleTimeFormat)
			} else {
				w.lastTSOut = append(w.lastTSOut[:0], v...)
			}
		}
		part(w.lastTSOut)
	default:
		return nil, false // a number: a Unix time format, left to zerolog
	}
	// Level.
	lv := ""
	if level != nil {
		if !level.str {
			return nil, false
		}
		v, ok := unescaped(level.val)
		if !ok {
			return nil, false
		}
		lv = string(v)
	}
	if level == nil {
		part([]byte("???"))
	} else if l, err := zerolog.ParseLevel(lv); err == nil && zerolog.FormattedLevels[l] != "" {
		part([]byte(zerolog.FormattedLevels[l]))
	} else {
		return nil, false
	}
	// Message.
	if msg != nil {
		if !msg.str {
			return nil, false
		}
		v, ok := unescaped(msg.val)
		if !ok {
			return nil, false
		}
		part(v)
	}
	// Fields: the error first, then by name; each once, the last value.
	slices.SortStableFunc(rest, func(a, b field) int {
		ae, be := string(a.name) == zerolog.ErrorFieldName, string(b.name) == zerolog.ErrorFieldName
		switch {
		case ae && !be:
			return -1
		case be && !ae:
			return 1
		}
		return bytes.Compare(a.name, b.name)
	})
	w.rest = rest
	hasErr := len(rest) > 0 && string(rest[0].name) == zerolog.ErrorFieldName
	uniq := rest[:0]
	for i, f := range rest {
		if i+1 < len(rest) && bytes.Equal(rest[i+1].name, f.name) {
			continue // a later one with this key follows
		}
		if hasErr && len(f.name) == 0 {
			continue // zerolog drops an empty name when it moves the error first
		}
		uniq = append(uniq, f)
	}
	if len(b) > 0 && len(uniq) > 0 {
		b = append(b, ' ')
	}
	for i, f := range uniq {
		b = append(b, f.name...)
		b = append(b, '=')
		if f.str {
			v, ok := unescaped(f.val)
			if !ok {
				return nil, false
			}
			if needsQuote(v) {
				b = strconv.AppendQuote(b, string(v))
			} else {
				b = append(b, v...)
			}
		} else {
			b = append(b, f.val...) // a number, true, false or null, as written
		}
		if i < len(uniq)-1 {
			b = append(b, ' ')
		}
	}
	b = append(b, '\n')
	w.buf = b
	return b, true
}

// needsQuote is zerolog's rule for quoting a console value.
func needsQuote(s []byte) bool {
	for i := range s {
		if s[i] < 0x20 || s[i] > 0x7e || s[i] == ' ' || s[i] == '\\' || s[i] == '"' {
			return true
		}
	}
	return false
}

// unescaped is the JSON string content s without its escapes (s itself
// when it has none).
func unescaped(s []byte) ([]byte, bool) {
	if bytes.IndexByte(s, '\\') < 0 && utf8.Valid(s) {
		return s, true
	}
	var v string
	if err := json.Unmarshal(append(append([]byte{'"'}, s...), '"'), &v); err != nil {
		return nil, false
	}
	return []byte(v), true
}

// scanFlatObject reads {"key": value, ...} where every value is a string,
// a number, true, false or null, appending to fs. Strings are kept
// escaped, without their quotes.
func scanFlatObject(p []byte, fs []field) ([]field, bool) {
	i := skipSpace(p, 0)
	if i >= len(p) || p[i] != '{' {
		return fs, false
	}
	i = skipSpace(p, i+1)
	if i < len(p) && p[i] == '}' {
		return fs, skipSpace(p, i+1) == len(p)
	}
	for {
		key, next, ok := scanString(p, i)
		if !ok {
			return fs, false
		}
		i = skipSpace(p, next)
		if i >= len(p) || p[i] != ':' {
			return fs, false
		}
		i = skipSpace(p, i+1)
		if i >= len(p) {
			return fs, false
		}
		f := field{key: key}
		switch c := p[i]; {
		case c == '"':
			f.val, i, ok = scanString(p, i)
			f.str = true
		case c == '-' || (c >= '0' && c <= '9'):
			start := i
			for i < len(p) && (p[i] == '-' || p[i] == '+' || p[i] == '.' || p[i] == 'e' || p[i] == 'E' || (p[i] >= '0' && p[i] <= '9')) {
				i++
			}
			f.val = p[start:i]
			ok = json.Valid(f.val)
		default:
			ok = false
			for _, lit := range []string{"true", "false", "null"} {
				if len(p)-i >= len(lit) && string(p[i:i+len(lit)]) == lit {
					f.val, i, ok = p[i:i+len(lit)], i+len(lit), true
					break
				}
			}
		}
		if !ok {
			return fs, false
		}
		fs = append(fs, f)
		i = skipSpace(p, i)
		if i >= len(p) {
			return fs, false
		}
		switch p[i] {
		case ',':
			i = skipSpace(p, i+1)
		case '}':
			return fs, skipSpace(p, i+1) == len(p)
		default:
			return fs, false
		}
	}
}

// scanString reads the string starting at p[i] (a quote) and returns its
// escaped content and the index after its closing quote.
func scanString(p []byte, i int) ([]byte, int, bool) {
	if i >= len(p) || p[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(p); j++ {
		switch c := p[j]; {
		case c == '\\':
			if j+1 >= len(p) {
				return nil, i, false
			}
			j++
			switch p[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(p) || !isHex4(p[j+1:j+5]) {
					return nil, i, false
				}
				j += 4
			default:
				return nil, i, false // not JSON: left to zerolog
			}
		case c == '"':
			return p[i+1 : j], j + 1, true
		case c < 0x20:
			return nil, i, false // not JSON: left to zerolog
		}
	}
	return nil, i, false
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func skipSpace(p []byte, i int) int {
	for i < len(p) && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') {
		i++
	}
	return i
}
