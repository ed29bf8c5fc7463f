package smtp

import (
	"bytes"
	"strconv"
)

// headSize is how much of a line's start a stream keeps: a command word
// with a BDAT size, or a reply code.
const headSize = 48

// Commands follows the client's side of an authenticated SMTP session,
// across reads of any size, and tells command lines from message content,
// so that a relay can find a QUIT without mistaking a line of a message
// for one. DATA content is what follows a DATA the server accepted (the
// relay, which sees the answer, says so with StartContent) up to the line
// holding a lone "."; BDAT content is the count of bytes its command
// names (SkipChunk). Only CRLF "." CRLF ends DATA content: a server that
// also took a bare LF would end it earlier, so the stream would see
// content where the server sees commands, never the other way round.
type Commands struct {
	content  bool  // in DATA content
	match    int   // how much of "\r\n.\r\n" content has just matched
	chunk    int64 // BDAT bytes still to skip
	head     [headSize]byte
	headLen  int
	lineDone bool // the last Scan ended a command line: start a new one
}

// Event is what a Scan found at the end of the bytes it consumed.
type Event uint8

const (
	// More: nothing ended; every byte given was consumed.
	More Event = iota
	// CommandEnd: a command line ended; Head holds its start.
	CommandEnd
	// ContentEnd: DATA content ended with its "." line.
	ContentEnd
	// ChunkEnd: the bytes of a BDAT chunk have been skipped.
	ChunkEnd
)

// dataEnd ends DATA content; content starts as if just after a CRLF.
const dataEnd = "\r\n.\r\n"

// StartContent says the server answered the last DATA with 354: what
// follows is message content.
func (c *Commands) StartContent() { c.content, c.match = true, 2 }

// SkipChunk says n bytes of BDAT data follow the command just scanned.
func (c *Commands) SkipChunk(n int64) { c.chunk = n }

// Scan consumes b up to the first end of a command line, of DATA content
// or of a BDAT chunk in it and returns how many bytes that took and what
// ended; if nothing ends in b, it consumes all of it and returns More.
func (c *Commands) Scan(b []byte) (int, Event) {
	if c.lineDone {
		c.lineDone, c.headLen = false, 0
	}
	switch {
	case c.chunk > 0:
		if int64(len(b)) < c.chunk {
			c.chunk -= int64(len(b))
			return len(b), More
		}
		n := int(c.chunk)
		c.chunk = 0
		return n, ChunkEnd
	case c.content:
		return c.scanContent(b)
	}
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		c.keep(b)
		return len(b), More
	}
	c.keep(b[:nl])
	c.lineDone = true
	return nl + 1, CommandEnd
}

// scanContent looks for the end of DATA content. Between line ends it
// jumps from one CR to the next.
func (c *Commands) scanContent(b []byte) (int, Event) {
	for i := 0; i < len(b); i++ {
		if c.match == 0 {
			cr := bytes.IndexByte(b[i:], '\r')
			if cr < 0 {
				return len(b), More
			}
			i += cr
		}
		switch ch := b[i]; {
		case ch == dataEnd[c.match]:
			c.match++
			if c.match == len(dataEnd) {
				c.content, c.match = false, 0
				return i + 1, ContentEnd
			}
		case ch == '\r':
			c.match = 1
		default:
			c.match = 0
		}
	}
	return len(b), More
}

// keep records p as part of the current command line.
func (c *Commands) keep(p []byte) {
	if c.headLen < headSize {
		c.headLen += copy(c.head[c.headLen:], p)
	}
}

// Head is the start of the command line the last CommandEnd ended (at
// most 48 bytes, no line ending).
func (c *Commands) Head() []byte { return bytes.TrimRight(c.head[:c.headLen], "\r") }

// Idle reports whether the stream is between commands: no command line,
// content or chunk has begun since the last one ended.
func (c *Commands) Idle() bool {
	return !c.content && c.chunk == 0 && (c.lineDone || c.headLen == 0)
}

// Verb is a command line's first word, as sent: compare with
// bytes.EqualFold.
func Verb(line []byte) []byte {
	if sp := bytes.IndexByte(line, ' '); sp >= 0 {
		return line[:sp]
	}
	return line
}

// ChunkSize reads the size of a "BDAT size [LAST]" line.
func ChunkSize(line []byte) (int64, bool) {
	f := bytes.Fields(line)
	if len(f) < 2 || len(f) > 3 || !bytes.EqualFold(f[0], []byte("BDAT")) ||
		(len(f) == 3 && !bytes.EqualFold(f[2], []byte("LAST"))) {
		return 0, false
	}
	n, err := strconv.ParseInt(string(f[1]), 10, 64)
	return n, err == nil && n >= 0
}

// Replies follows the server's side of an authenticated SMTP session,
// across reads of any size, and finds where each reply line ends.
type Replies struct {
	head     [4]byte
	headLen  int
	lineDone bool
}

// Scan consumes b up to the end of the first reply line in it and returns
// how many bytes that took and true; if no line ends in b it consumes all
// of it and returns len(b), false.
func (r *Replies) Scan(b []byte) (int, bool) {
	if r.lineDone {
		r.lineDone, r.headLen = false, 0
	}
	nl := bytes.IndexByte(b, '\n')
	end := nl
	if nl < 0 {
		end = len(b)
	}
	if r.headLen < len(r.head) {
		r.headLen += copy(r.head[r.headLen:], b[:end])
	}
	if nl < 0 {
		return len(b), false
	}
	r.lineDone = true
	return nl + 1, true
}

// Reply reads the line the last successful Scan ended: its code, and
// whether it is the last line of its reply. ok is false for a line that
// is not a reply.
func (r *Replies) Reply() (code int, last, ok bool) {
	code, more, _, ok := ParseReply(bytes.TrimRight(r.head[:r.headLen], "\r"))
	return code, !more, ok
}
