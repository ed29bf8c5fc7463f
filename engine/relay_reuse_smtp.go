package engine

import (
	"bytes"
	"net"
	"sync/atomic"
	"time"

	"github.com/emailproxy/emailproxy/protocol/smtp"
)

// smtpQuitReply answers a QUIT the proxy takes for itself.
const smtpQuitReply = "221 2.0.0 emailproxy: closing connection\r\n"

// smtpTransaction holds the commands that leave nothing behind once RSET
// has ended the transaction they belong to. Any other (EHLO, STARTTLS,
// AUTH, an extension) makes the session single-use.
var smtpTransaction = map[string]bool{
	"MAIL": true, "RCPT": true, "DATA": true, "BDAT": true, "RSET": true,
	"NOOP": true, "VRFY": true, "EXPN": true, "HELP": true,
}

// isTransactionCommand looks verb up in smtpTransaction, ignoring case,
// without allocating.
func isTransactionCommand(verb []byte) bool {
	var buf [4]byte
	if len(verb) != len(buf) {
		return false
	}
	for i, c := range verb {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		buf[i] = c
	}
	return smtpTransaction[string(buf[:])]
}

// smtpReuseRelay is the relay of an SMTP session that may be kept after
// its client leaves (Options.SMTPSessionReuse): the plain relay plus a
// count of the replies each side has seen. Every command gets one final
// reply in order (DATA two when the server answers 354, one at the end of
// the content), so the reply to the proxy's RSET is the one whose number
// is the count of commands sent; the session is kept only if that reply
// is a 250 and nothing the server said was unasked for. The client's side
// is followed by smtp.Commands, so a QUIT inside a message is content.
type smtpReuseRelay struct {
	reuseBase

	// Shared by the two directions: replies the commands sent so far are
	// owed (expected), the number of the reply that answers the last
	// DATA (dataAt) and its code once read (dataCode), and the number of
	// the reply to the proxy's RSET (resetAt, 0: not sent).
	expected, dataAt, resetAt atomic.Int64
	dataCode                  atomic.Int32

	// The client's direction: its stream, whether every command so far
	// leaves the session reusable (once false, bytes are only copied),
	// whether the answer to a DATA decides what follows, and whether the
	// server offers BDAT.
	cmds         smtp.Commands
	reusable     bool
	awaitingData bool
	chunking     bool

	// The server's direction: its stream, the replies read, and whether
	// the server said something unasked for (then the session is not
	// kept).
	replies smtp.Replies
	seen    int64
	spoiled bool
}

// startSMTPReuseRelay runs a reusable SMTP session's relay.
func (s *Server) startSMTPReuseRelay(client net.Conn, res *loginResult, leftover []byte, log connLog, opened time.Time, r *relay) {
	sr := &smtpReuseRelay{reuseBase: reuseBase{r: r, res: res}, reusable: true, chunking: hasChunking(res.up.Caps)}
	s.runReuseRelay(&sr.reuseBase, client, leftover, log, opened, sr.fromClientChunk, sr.fromUpChunk, sr.clientEnded)
}

// fromClientChunk copies client commands and content upstream. At the
// client's QUIT it sends RSET instead and stops reading, if every command
// so far leaves the session reusable. False: stop.
func (sr *smtpReuseRelay) fromClientChunk(chunk []byte) bool {
	lineStart, off := 0, 0
	for sr.reusable && off < len(chunk) {
		if sr.awaitingData {
			sr.awaitingData = false
			switch code := sr.dataCode.Load(); {
			case code == 354:
				sr.cmds.StartContent()
			case code == 0:
				// The client sent on before the server answered its DATA:
				// whether this is content or commands is not known.
				sr.reusable = false
				continue
			}
		}
		n, ev := sr.cmds.Scan(chunk[off:])
		off += n
		switch ev {
		case smtp.More:
		case smtp.ContentEnd, smtp.ChunkEnd:
			if ev == smtp.ContentEnd {
				sr.expected.Add(1) // the reply to the message
			}
			lineStart = off
		case smtp.CommandEnd:
			line := sr.cmds.Head()
			verb := smtp.Verb(line)
			switch {
			case bytes.EqualFold(verb, []byte("QUIT")):
				return sr.quit(chunk[:lineStart])
			case bytes.EqualFold(verb, []byte("BDAT")):
				size, ok := smtp.ChunkSize(line)
				sr.reusable = ok && sr.chunking
				sr.cmds.SkipChunk(size)
			case bytes.EqualFold(verb, []byte("DATA")):
				sr.dataCode.Store(0) // an earlier DATA's answer was read before this was sent
				sr.dataAt.Store(sr.expected.Load() + 1)
				sr.awaitingData = true
			default:
				sr.reusable = isTransactionCommand(verb)
			}
			sr.expected.Add(1)
			lineStart = off
		}
	}
	return sr.send(chunk)
}

// quit sends what came before the client's QUIT, then RSET. The client
// gets its 221 once the RSET's reply is in and the session kept: a client
// that logs in again as soon as it has it (an app sending one message per
// connection) finds the session waiting, instead of logging in afresh
// while this one is still being reset.
func (sr *smtpReuseRelay) quit(before []byte) bool {
	if len(before) > 0 && !sr.send(before) {
		return false
	}
	sr.resetSent = sr.reset(true)
	return false
}

// clientEnded: see reuseBase.clientEnded.
func (sr *smtpReuseRelay) clientEnded(readErr error) {
	sr.reuseBase.clientEnded(readErr, sr.reusable && !sr.awaitingData && sr.cmds.Idle(), func() bool { return sr.reset(false) })
}

// reset sends RSET and tells the server's direction which reply answers
// it; the client's QUIT, if it sent one, is answered when the relay
// finishes, whatever the RSET got.
func (sr *smtpReuseRelay) reset(answerQuit bool) bool {
	if answerQuit {
		sr.lastWord.Store(ptr(smtpQuitReply))
	}
	sr.resetAt.Store(sr.expected.Add(1))
	return sr.sendReset("RSET\r\n")
}

// fromUpChunk copies replies to the client until the reply to the proxy's
// RSET, which it keeps: then it stops, the session to be kept if the
// reply says so. False: stop.
func (sr *smtpReuseRelay) fromUpChunk(chunk []byte) bool {
	lineStart, off, seen := 0, 0, sr.seen
	for off < len(chunk) {
		n, done := sr.replies.Scan(chunk[off:])
		off += n
		if !done {
			break
		}
		code, last, ok := sr.replies.Reply()
		if !ok {
			sr.spoiled = true // not a reply
		}
		if !last {
			continue
		}
		seen++
		if seen == sr.dataAt.Load() {
			sr.dataCode.Store(int32(code))
		}
		if reset := sr.resetAt.Load(); reset != 0 && seen == reset {
			if !sr.writeToClient(chunk[:lineStart]) {
				return false
			}
			// More after the reply, or a reply nobody asked for before
			// it: do not trust the session.
			sr.keep = code == 250 && off == len(chunk) && !sr.spoiled
			return false
		}
		if seen > sr.expected.Load() {
			sr.spoiled = true // a reply nobody asked for (421: closing)
		}
		lineStart = off
	}
	sr.seen = seen
	return sr.writeToClient(chunk)
}

// hasChunking reports whether the server's EHLO keywords offer BDAT.
func hasChunking(caps []string) bool {
	for _, c := range caps {
		if bytes.EqualFold([]byte(c), []byte("CHUNKING")) {
			return true
		}
	}
	return false
}
