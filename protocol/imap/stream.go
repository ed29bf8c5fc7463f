package imap

import "bytes"

// headSize is how much of a logical line's start a Stream keeps: enough
// for a tag and a command or status word.
const headSize = 64

// tailSize is how much of a physical line's end a Stream keeps: enough
// for a literal marker "{4294967295+}\r".
const tailSize = 16

// Stream follows one direction of an authenticated IMAP session, across
// reads of any size, and finds where each logical line ends: a command
// or response with its literals ("{n}" / "{n+}" / "~{n}") included. It
// keeps only a line's first bytes and skips literal data without looking
// at it, so following a 10 MB FETCH costs a few comparisons per read.
type Stream struct {
	literal int64 // literal bytes still to skip
	head    [headSize]byte
	headLen int
	headEnd bool // the first physical line is complete: head is final
	tail    [tailSize]byte
	tailLen int
	done    bool // the previous Scan ended a line: start a new one
}

// Scan consumes b up to the end of the first logical line that ends in
// it and returns how many bytes that took and true; if no line ends in b
// it consumes all of b and returns len(b), false. After true, Head holds
// the start of the line that ended.
func (s *Stream) Scan(b []byte) (int, bool) {
	if s.done {
		s.done = false
		s.headLen, s.tailLen, s.headEnd = 0, 0, false
	}
	n := 0
	for n < len(b) {
		if s.literal > 0 {
			skip := int64(len(b) - n)
			if skip > s.literal {
				skip = s.literal
			}
			s.literal -= skip
			n += int(skip)
			s.tailLen = 0 // a literal's bytes are not part of a marker
			continue
		}
		rest := b[n:]
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			s.keep(rest)
			return len(b), false
		}
		s.keep(rest[:nl])
		n += nl + 1
		s.headEnd = true
		if size, ok := s.trailingLiteral(); ok {
			s.literal = size
			s.tailLen = 0
			continue // the same logical line goes on after the literal
		}
		s.done = true
		return n, true
	}
	return n, false
}

// Head is the start of the first physical line of the logical line the
// last successful Scan ended (at most 64 bytes, no line ending).
func (s *Stream) Head() []byte {
	return bytes.TrimRight(s.head[:s.headLen], "\r")
}

// Idle reports whether the stream is between logical lines: nothing of
// a line or literal has been seen since the last line ended.
func (s *Stream) Idle() bool {
	return s.literal == 0 && (s.done || (s.headLen == 0 && s.tailLen == 0 && !s.headEnd))
}

// keep records p as part of the current physical line.
func (s *Stream) keep(p []byte) {
	if !s.headEnd && s.headLen < headSize {
		s.headLen += copy(s.head[s.headLen:], p)
	}
	if len(p) >= tailSize {
		s.tailLen = copy(s.tail[:], p[len(p)-tailSize:])
		return
	}
	if s.tailLen+len(p) > tailSize {
		drop := s.tailLen + len(p) - tailSize
		copy(s.tail[:], s.tail[drop:s.tailLen])
		s.tailLen -= drop
	}
	s.tailLen += copy(s.tail[s.tailLen:], p)
}

// trailingLiteral reports a literal announced at the end of the
// physical line just completed.
func (s *Stream) trailingLiteral() (int64, bool) {
	t := bytes.TrimSuffix(s.tail[:s.tailLen], []byte{'\r'})
	n, _, _, ok := literalMarker(t)
	return int64(n), ok
}

// CommandName splits a client line's head into its tag and command word
// (for UID commands, "UID"), as sent: compare with bytes.EqualFold.
func CommandName(head []byte) (tag, name []byte) {
	sp := bytes.IndexByte(head, ' ')
	if sp < 0 {
		return head, nil
	}
	tag, rest := head[:sp], head[sp+1:]
	if i := bytes.IndexByte(rest, ' '); i >= 0 {
		rest = rest[:i]
	}
	return tag, rest
}
