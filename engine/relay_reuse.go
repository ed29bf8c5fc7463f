package engine

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/protocol/imap"
)

// resetTimeout bounds the wait for the answer to the proxy's UNSELECT
// (IMAP) or RSET (SMTP).
var resetTimeout = 10 * time.Second // a variable for tests

// reuseBase is what the IMAP and SMTP relays of sessions that may be kept
// share: the relay and its login, the bytes each way, the goodbye and the
// reset that ends a session to be kept. The protocol's relay follows the
// commands and answers; every direction's state lives on the heap, not on
// a goroutine's stack, so that a quiet session parks as the plain relay's
// do.
type reuseBase struct {
	r   *relay
	res *loginResult
	// answered: the client was answered and let go; what the server says
	// after that is not relayed.
	answered atomic.Bool

	// The client's direction: the bytes sent upstream, the write error
	// that ended it, and whether it sent the reset.
	fromClient int64
	clientErr  error
	resetSent  bool
	// The server's direction: its reader, the bytes relayed, the write
	// error that ended it, and whether the session is to be kept.
	upReader *chunkReader
	fromUp   int64
	upErr    error
	keep     bool
	// lastWord, if set (before the reset goes out), is the client's
	// answer to write when the relay finishes: after the session is kept,
	// so that a client that logs in again as soon as it has its answer
	// finds the session there.
	lastWord atomic.Pointer[string]
}

// send copies p upstream.
func (b *reuseBase) send(p []byte) bool {
	w, err := b.r.toUp.Write(p)
	b.fromClient += int64(w)
	b.clientErr = err
	return err == nil
}

// letGo answers the client's LOGOUT or QUIT and closes it, once every
// answer before it has been written: from the client's direction (an
// IMAP LOGOUT with nothing outstanding) or as the relay finishes
// (lastWord).
func (b *reuseBase) letGo(goodbye string) {
	b.answered.Store(true)
	// Not through toClient, which the server's direction owns.
	b.r.client.SetWriteDeadline(time.Now().Add(time.Second))
	b.r.client.Write([]byte(goodbye))
	b.r.client.Close()
}

// sendReset sends the command that resets the session for its next
// login. The server's direction, parked or not, must read its answer
// within resetTimeout: it is woken, and neither direction parks again.
func (b *reuseBase) sendReset(cmd string) bool {
	up := b.res.up.TLS
	limit := time.Now().Add(resetTimeout)
	up.SetWriteDeadline(limit)
	b.upReader.setHardDeadline(limit)
	for _, d := range b.r.stopParking() {
		d.resume()
	}
	_, err := up.Write([]byte(cmd))
	return err == nil
}

// clientEnded ends the client's direction. A client that hangs up between
// commands (idle) leaves a session as reusable as one that logs out, so
// reset is sent. Unless a reset went out, no answer to it is coming: the
// relay ends, once the server's answers to a client that only stopped
// sending have been relayed (clientDone).
func (b *reuseBase) clientEnded(readErr error, idle bool, reset func() bool) {
	clientDone := errors.Is(readErr, io.EOF) && b.clientErr == nil
	if clientDone && idle {
		b.resetSent = reset()
	}
	switch {
	case b.resetSent:
	case clientDone:
		b.r.clientDone()
	default:
		b.r.noteEnd(b.clientErr, "server") // ends the upstream direction's read
	}
}

// writeToClient writes p unless the client has been let go.
func (b *reuseBase) writeToClient(p []byte) bool {
	if b.answered.Load() {
		return true // the client has left
	}
	w, err := b.r.toClient.Write(p)
	b.fromUp += int64(w)
	b.upErr = err
	return err == nil
}

// upStart writes the login's answer, then gives take what the server sent
// right after it.
func (b *reuseBase) upStart(take func([]byte) bool) bool {
	if !b.writeToClient(b.res.reply) {
		return false
	}
	if br := b.res.up.TakeReader(); br != nil && br.Buffered() > 0 {
		first, _ := br.Peek(br.Buffered())
		return take(first)
	}
	return true
}

// upEnded ends the client's side once the server's has stopped.
func (b *reuseBase) upEnded(error) {
	r := b.r
	if r.bye.Load() {
		r.sayBye()
		b.keep = false
	}
	if errors.Is(b.upErr, errSendTimeout) {
		r.endFor("send timeout: the client stopped reading")
	}
	if b.lastWord.Load() == nil {
		r.closeClient()
	}
}

// runReuseRelay starts the relay of a session that may be kept once its
// client has left (for its protocol's reuse time): fromClient and fromUp
// take each direction's chunks (false: stop), clientEnded ends the
// client's direction.
func (s *Server) runReuseRelay(b *reuseBase, client net.Conn, leftover []byte, log connLog, opened time.Time,
	fromClient, fromUp func([]byte) bool, clientEnded func(error)) {
	start := time.Now()
	s.wg.Add(1) // done by finish
	up, down := s.newRelayDir(b.r, client), s.newRelayDir(b.r, b.res.up.TLS)
	up.start = func() bool { return len(leftover) == 0 || fromClient(leftover) }
	up.take, up.end = fromClient, clientEnded
	down.start = func() bool { return b.upStart(fromUp) }
	down.take, down.end = fromUp, b.upEnded
	b.upReader = down.cr
	b.r.finish = func() {
		kept := b.keep && s.mayKeep(b.res)
		if kept {
			b.res.up.TLS.SetDeadline(time.Time{})
			s.linger.Park(b.res.up, b.res.reuseKey, b.res.mailbox, b.res.loginReply, s.reuseFor(b.res.proto), b.res.expiry)
		} else {
			b.res.up.Close()
		}
		if word := b.lastWord.Load(); word != nil {
			// The answer goes after the session is kept (or closed), and
			// then the client (the server's direction left it open).
			b.letGo(*word)
		}
		if !kept {
			b.r.close()
		}
		s.endRelay(b.r, log, b.res.user, b.fromClient, b.fromUp, start, opened).Bool("kept_upstream", kept).Msg("connection closed")
		s.wg.Done()
	}
	s.runRelay(b.r, up, down, b.res.up)
}

// mayKeep reports whether a session its relay would keep may be: not
// while logins of its mailbox wait for a slot (closing it gives the first
// of them this session's slot now; keeping it would hold the slot until
// its time runs out), nor once its token has expired (the next login logs
// in afresh with the current token).
func (s *Server) mayKeep(res *loginResult) bool {
	if _, waiting := s.gates.Held(res.mailbox); waiting > 0 {
		return false
	}
	return res.expiry.IsZero() || time.Now().Before(res.expiry)
}

// reuseRelay is the relay of an IMAP session that may be kept after its
// client leaves. It is the plain relay plus a Stream on each direction
// that finds command and response boundaries (literals skipped unread).
type reuseRelay struct {
	reuseBase
	// logoutTag is set, before the UNSELECT goes out, to the client's
	// LOGOUT tag ("" if the client just hung up).
	logoutTag atomic.Pointer[string]
	// outstanding counts client commands whose tagged answer has not yet
	// been written to the client. A LOGOUT with none outstanding is
	// answered at once, and the reset goes on after the client has left.
	outstanding atomic.Int64

	// The client's direction: its scanner, whether every command so far
	// leaves the session reusable, and whether it is in IDLE.
	cmds             imap.Stream
	reusable, idling bool
	// The server's direction: its scanner, and whether it has answered
	// as a session with CONDSTORE on (then it is not kept: see
	// upstream.ShowsCondstore; a command of the client's that turns it on
	// makes the session single-use already, but only the start of a long
	// command is seen).
	answers imap.Stream
	modSeq  bool
}

// startReuseRelay runs a reusable IMAP session's relay.
func (s *Server) startReuseRelay(client net.Conn, res *loginResult, leftover []byte, log connLog, opened time.Time, r *relay) {
	rr := &reuseRelay{reuseBase: reuseBase{r: r, res: res}, reusable: true}
	s.runReuseRelay(&rr.reuseBase, client, leftover, log, opened, rr.fromClientChunk, rr.fromUpChunk, rr.clientEnded)
}

// fromClientChunk copies client commands upstream. At the client's
// LOGOUT it sends UNSELECT instead and hands over to the upstream
// direction, if every command so far leaves the session reusable; else
// it forwards everything as the plain relay would. False: stop.
func (rr *reuseRelay) fromClientChunk(chunk []byte) bool {
	st := &rr.cmds
	lineStart, off := 0, 0
	for off < len(chunk) {
		fresh := st.Idle() // the line starts in this read, at off
		n, done := st.Scan(chunk[off:])
		off += n
		if !done {
			break
		}
		tag, name := imap.CommandName(st.Head())
		switch {
		case rr.idling:
			rr.idling = !bytes.EqualFold(tag, []byte("DONE"))
		case bytes.EqualFold(name, []byte("LOGOUT")) && rr.reusable:
			if !rr.send(chunk[:lineStart]) {
				return false
			}
			if lineStart == 0 && rr.outstanding.Load() == 0 {
				// Everything the client asked for has been answered:
				// say goodbye now, reset upstream afterwards.
				rr.letGo("* BYE emailproxy: logged out\r\n" + string(tag) + " OK LOGOUT completed\r\n")
				rr.resetSent = rr.reset("")
				return false
			}
			rr.resetSent = rr.reset(string(tag))
			return false
		default:
			rr.outstanding.Add(1)
			rr.reusable = rr.reusable && upstream.IsReusable(name) && !turnsOnCondstore(st.Head(), fresh, chunk[lineStart:off])
			rr.idling = bytes.EqualFold(name, []byte("IDLE"))
		}
		lineStart = off
	}
	return rr.send(chunk)
}

// clientEnded: see reuseBase.clientEnded.
func (rr *reuseRelay) clientEnded(readErr error) {
	rr.reuseBase.clientEnded(readErr, rr.reusable && !rr.idling && rr.cmds.Idle(), func() bool { return rr.reset("") })
}

// condstoreWindow is how much of a command or an answer, as it came in
// one read, is looked at for CONDSTORE: more than the stream's 64-byte
// head (Dovecot's FETCH answers have their MODSEQ 80 bytes in), and only
// up to the first literal, whose bytes are a message's (which may say
// anything) and may be many.
const condstoreWindow = 512

// fresh says the line began in this read: inRead starts at the line's
// start. Otherwise its first bytes may be a literal's, and only the head
// is looked at.
func beforeLiteral(fresh bool, b []byte) []byte {
	if !fresh {
		return nil
	}
	b = b[:min(len(b), condstoreWindow)]
	if i := bytes.IndexByte(b, '{'); i >= 0 {
		return b[:i]
	}
	return b
}

// turnsOnCondstore and showsCondstore look at a line's head (the stream's,
// which a line begun in an earlier read still has; it ends before any
// literal) and at the line's bytes in this read (beforeLiteral).
func turnsOnCondstore(head []byte, fresh bool, inRead []byte) bool {
	return upstream.TurnsOnCondstore(head) || upstream.TurnsOnCondstore(beforeLiteral(fresh, inRead))
}

func showsCondstore(head []byte, fresh bool, inRead []byte) bool {
	return upstream.ShowsCondstore(head) || upstream.ShowsCondstore(beforeLiteral(fresh, inRead))
}

// reset sends the UNSELECT and tells the upstream direction which tag to
// answer.
func (rr *reuseRelay) reset(logoutTag string) bool {
	rr.logoutTag.Store(&logoutTag)
	return rr.sendReset(upstream.ResetTag + " UNSELECT\r\n")
}

// fromUpChunk copies upstream responses to the client until the answer
// to the proxy's UNSELECT, which it keeps; then it answers the LOGOUT
// and stops, the session to be kept. False: stop.
func (rr *reuseRelay) fromUpChunk(chunk []byte) bool {
	st := &rr.answers
	lineStart, off, completed := 0, 0, int64(0)
	for off < len(chunk) {
		fresh := st.Idle()
		m, done := st.Scan(chunk[off:])
		off += m
		// Looked at where the answer starts, ended or not: a FETCH answer
		// with a message in it goes on for many reads.
		rr.modSeq = rr.modSeq || showsCondstore(st.Head(), fresh, chunk[lineStart:off])
		if !done {
			break
		}
		logoutTag := rr.logoutTag.Load()
		tag, _ := imap.CommandName(st.Head())
		if logoutTag != nil && string(tag) == upstream.ResetTag {
			if !rr.writeToClient(chunk[:lineStart]) {
				return false
			}
			if *logoutTag != "" {
				rr.writeToClient([]byte("* BYE emailproxy: logged out\r\n" + *logoutTag + " OK LOGOUT completed\r\n"))
			}
			// More after the answer: do not trust the session.
			rr.keep = off == len(chunk) && !rr.modSeq
			return false
		}
		if len(tag) > 0 && tag[0] != '*' && tag[0] != '+' {
			completed++
		}
		lineStart = off
	}
	if !rr.writeToClient(chunk) {
		return false
	}
	rr.outstanding.Add(-completed) // only once the answers are written
	return true
}
