// Package textline splits CRLF-terminated protocol lines out of a byte
// stream with a length limit, shared by the IMAP, POP3 and SMTP machines.
package textline

import "bytes"

// Status says what Cut found.
type Status int

const (
	// NeedMore: no complete line yet and the limit is not reached.
	NeedMore Status = iota
	// Line: a complete line was found.
	Line
	// TooLong: the limit was reached before a line end; the caller should
	// answer with an error and Skip the rest of the line.
	TooLong
)

// Cut returns the first line of in without its line end, and how many
// bytes it used (line end included). A bare LF is accepted as a line end,
// as most servers do. The line slice aliases in.
func Cut(in []byte, limit int) (line []byte, used int, st Status) {
	window := in
	if len(window) > limit+2 {
		window = window[:limit+2]
	}
	i := bytes.IndexByte(window, '\n')
	if i < 0 {
		// A line of exactly limit bytes may still be waiting for its LF
		// after the CR: only more than that is too long already.
		if len(in) > limit+1 || len(in) == limit+1 && in[limit] != '\r' {
			return nil, 0, TooLong
		}
		return nil, 0, NeedMore
	}
	line = in[:i]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if len(line) > limit {
		return nil, 0, TooLong
	}
	return line, i + 1, Line
}

// Skip discards the rest of an overlong line: it returns how many bytes of
// in to drop and whether the line end was found.
func Skip(in []byte) (used int, done bool) {
	i := bytes.IndexByte(in, '\n')
	if i < 0 {
		return len(in), false
	}
	return i + 1, true
}

// EqualFold reports whether b equals the upper-case ASCII word s,
// ignoring case, without allocating.
func EqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// Word splits the first space-separated word off line.
func Word(line []byte) (word, rest []byte) {
	i := bytes.IndexByte(line, ' ')
	if i < 0 {
		return line, nil
	}
	return line[:i], line[i+1:]
}

// Event is what Reader.Next found.
type Event int

const (
	// Wait: no complete line yet (used may still be > 0 while the rest of
	// an overlong line is dropped).
	Wait Event = iota
	// Got: a complete line.
	Got
	// Overlong: the line passed the limit; answer with an error. The rest
	// of the line is dropped by the following calls.
	Overlong
	// Flood: the client kept sending one endless line; disconnect it.
	Flood
)

// maxSkip is how much of one overlong line is dropped before it counts as
// a flood.
const maxSkip = 64 << 10

// Reader cuts lines for a state machine, enforcing a length limit.
type Reader struct {
	skipped int // >0 while dropping the rest of an overlong line
}

// Next returns the next line of in (without its line end) and how many
// bytes it used.
func (r *Reader) Next(in []byte, limit int) (line []byte, used int, ev Event) {
	if r.skipped > 0 {
		n, done := Skip(in)
		r.skipped += n
		if r.skipped > maxSkip {
			r.skipped = 0
			return nil, n, Flood
		}
		if done {
			r.skipped = 0
		}
		return nil, n, Wait
	}
	line, n, st := Cut(in, limit)
	switch st {
	case NeedMore:
		return nil, 0, Wait
	case TooLong:
		r.skipped = 1
		return nil, 0, Overlong
	}
	return line, n, Got
}

// AppendText appends s to dst as text for one line of a reply: each
// control character (a CR or LF above all, which would end the line and
// start another) becomes a space. Messages that carry what a server said
// go through it before they reach a client.
func AppendText(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			c = ' '
		}
		dst = append(dst, c)
	}
	return dst
}
