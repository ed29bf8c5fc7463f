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

// resetTimeout bounds the wait for the answer to the proxy's UNSELECT.
const resetTimeout = 10 * time.Second

// reuseRelay is the relay of an IMAP session that may be kept after its
// client leaves. It is the plain relay plus a Stream on each direction
// that finds command and response boundaries (literals skipped unread).
// Each direction's state lives here, not on a goroutine's stack, so that
// a quiet session parks as the plain relay's do.
type reuseRelay struct {
	s   *Server
	r   *relay
	res *loginResult
	// logoutTag is set, before the UNSELECT goes out, to the client's
	// LOGOUT tag ("" if the client just hung up).
	logoutTag atomic.Pointer[string]
	upReader  *chunkReader
	// outstanding counts client commands whose tagged answer has not yet
	// been written to the client. A LOGOUT with none outstanding is
	// answered at once, and the reset goes on after the client has left.
	outstanding atomic.Int64
	answered    atomic.Bool // the LOGOUT was answered: drop what follows

	// The client's direction (commands upstream): its scanner, whether
	// every command so far leaves the session reusable, whether it is in
	// IDLE, the bytes sent, the write error that ended it, and whether it
	// sent the UNSELECT.
	cmds             imap.Stream
	reusable, idling bool
	fromClient       int64
	clientErr        error
	resetSent        bool
	// The upstream's direction (answers to the client): its scanner, the
	// bytes relayed, the write error that ended it, and whether it read
	// the UNSELECT's answer, so that the session can be kept.
	answers imap.Stream
	fromUp  int64
	upErr   error
	keep    bool
}

// fromClientChunk copies client commands upstream. At the client's
// LOGOUT it sends UNSELECT instead and hands over to the upstream
// direction, if every command so far leaves the session reusable; else
// it forwards everything as the plain relay would. False: stop.
func (rr *reuseRelay) fromClientChunk(chunk []byte) bool {
	up := rr.r.toUp
	st := &rr.cmds
	lineStart, off := 0, 0
	for off < len(chunk) {
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
			w, err := up.Write(chunk[:lineStart])
			rr.fromClient += int64(w)
			if err != nil {
				rr.clientErr = err
				return false
			}
			if lineStart == 0 && rr.outstanding.Load() == 0 {
				// Everything the client asked for has been answered:
				// say goodbye now, reset upstream afterwards.
				rr.answered.Store(true)
				rr.r.toClient.Write([]byte("* BYE emailproxy: logged out\r\n" + string(tag) + " OK LOGOUT completed\r\n"))
				rr.r.client.Close()
				rr.resetSent = rr.reset("")
				return false
			}
			rr.resetSent = rr.reset(string(tag))
			return false
		default:
			rr.outstanding.Add(1)
			rr.reusable = rr.reusable && upstream.IsReusable(name)
			rr.idling = bytes.EqualFold(name, []byte("IDLE"))
		}
		lineStart = off
	}
	w, err := up.Write(chunk)
	rr.fromClient += int64(w)
	rr.clientErr = err
	return err == nil
}

// clientEnded: a client that hangs up between commands leaves a session
// as reusable as one that logs out. Unless the UNSELECT went out, no
// answer to it is coming: the relay ends, once the server's answers to
// a client that only stopped sending have been relayed (clientDone).
func (rr *reuseRelay) clientEnded(readErr error) {
	clientDone := errors.Is(readErr, io.EOF) && rr.clientErr == nil
	if clientDone && rr.reusable && !rr.idling && rr.cmds.Idle() {
		rr.resetSent = rr.reset("")
	}
	switch {
	case rr.resetSent:
	case clientDone:
		rr.r.clientDone()
	default:
		rr.r.noteEnd(rr.clientErr, "server") // ends the upstream direction's read
	}
}

// reset sends the UNSELECT and tells the upstream direction which tag to
// answer. That direction, parked or not, must read the answer within
// resetTimeout: it is woken, and neither direction parks again.
func (rr *reuseRelay) reset(logoutTag string) bool {
	up := rr.res.up.TLS
	rr.logoutTag.Store(&logoutTag)
	limit := time.Now().Add(resetTimeout)
	up.SetWriteDeadline(limit)
	rr.upReader.setHardDeadline(limit)
	for _, d := range rr.r.stopParking() {
		d.resume()
	}
	_, err := up.Write([]byte(upstream.ResetTag + " UNSELECT\r\n"))
	return err == nil
}

// writeToClient writes b unless the client has been told goodbye.
func (rr *reuseRelay) writeToClient(b []byte) bool {
	if rr.answered.Load() {
		return true // the client has left
	}
	w, err := rr.r.toClient.Write(b)
	rr.fromUp += int64(w)
	rr.upErr = err
	return err == nil
}

// upStart writes the login's answer, then what the server sent right
// after it.
func (rr *reuseRelay) upStart() bool {
	if !rr.writeToClient(rr.res.reply) {
		return false
	}
	if br := rr.res.up.TakeReader(); br != nil && br.Buffered() > 0 {
		first, _ := br.Peek(br.Buffered())
		return rr.fromUpChunk(first)
	}
	return true
}

// fromUpChunk copies upstream responses to the client until the answer
// to the proxy's UNSELECT, which it keeps; then it answers the LOGOUT
// and stops, the session to be kept. False: stop.
func (rr *reuseRelay) fromUpChunk(chunk []byte) bool {
	st := &rr.answers
	lineStart, off, completed := 0, 0, int64(0)
	for off < len(chunk) {
		m, done := st.Scan(chunk[off:])
		off += m
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
			rr.keep = off == len(chunk)
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

// upEnded ends the client's side once the upstream's has stopped.
func (rr *reuseRelay) upEnded(error) {
	r := rr.r
	if r.bye.Load() {
		r.sayBye()
		rr.keep = false
	}
	if errors.Is(rr.upErr, errSendTimeout) {
		r.endFor("send timeout: the client stopped reading")
	}
	r.closeClient()
}

// startReuseRelay runs a reusable IMAP session's relay.
func (s *Server) startReuseRelay(client net.Conn, res *loginResult, leftover []byte, log connLog, opened time.Time, r *relay) {
	rr := &reuseRelay{s: s, r: r, res: res, reusable: true}
	start := time.Now()
	s.wg.Add(1) // done by finish
	up, down := s.newRelayDir(r, client), s.newRelayDir(r, res.up.TLS)
	up.start = func() bool { return len(leftover) == 0 || rr.fromClientChunk(leftover) }
	up.take, up.end = rr.fromClientChunk, rr.clientEnded
	down.start, down.take, down.end = rr.upStart, rr.fromUpChunk, rr.upEnded
	rr.upReader = down.cr
	r.finish = func() {
		keep := rr.keep
		if keep {
			if _, waiting := s.gates.Held(res.mailbox); waiting > 0 {
				// Logins of this mailbox wait for a slot: closing gives
				// the first one this session's slot now; keeping it
				// would hold the slot until the session's linger ends.
				keep = false
			}
		}
		if keep {
			res.up.TLS.SetDeadline(time.Time{})
			s.linger.Park(res.up, res.reuseKey, res.mailbox, res.loginReply)
		} else {
			r.close()
		}
		s.endRelay(r, log, res.user, rr.fromClient, rr.fromUp, start, opened).Bool("kept_upstream", keep).Msg("connection closed")
		s.wg.Done()
	}
	s.runRelay(r, up, down, res.up)
}
