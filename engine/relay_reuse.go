package engine

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
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
	// The write errors that ended clientSide (writing upstream) and
	// upSide (writing to the client), each set by its own goroutine.
	clientErr, upErr error
}

// clientSide copies client commands upstream. At the client's LOGOUT (or
// its hang-up) it sends UNSELECT instead and hands over to upSide, if
// every command so far leaves the session reusable; else it forwards
// everything as the plain relay would. It reports the bytes sent and
// whether it sent the UNSELECT.
func (rr *reuseRelay) clientSide(leftover []byte) (int64, bool) {
	var st imap.Stream
	reusable, idling := true, false
	var total int64
	up := rr.r.toUp
	// forward writes chunk upstream, or everything before a LOGOUT.
	forward := func(chunk []byte) (reset bool, ok bool) {
		lineStart, off := 0, 0
		for off < len(chunk) {
			n, done := st.Scan(chunk[off:])
			off += n
			if !done {
				break
			}
			tag, name := imap.CommandName(st.Head())
			switch {
			case idling:
				idling = !bytes.EqualFold(tag, []byte("DONE"))
			case bytes.EqualFold(name, []byte("LOGOUT")) && reusable:
				w, err := up.Write(chunk[:lineStart])
				total += int64(w)
				if err != nil {
					rr.clientErr = err
					return true, false
				}
				if lineStart == 0 && rr.outstanding.Load() == 0 {
					// Everything the client asked for has been answered:
					// say goodbye now, reset upstream afterwards.
					rr.answered.Store(true)
					rr.r.toClient.Write([]byte("* BYE emailproxy: logged out\r\n" + string(tag) + " OK LOGOUT completed\r\n"))
					rr.r.client.Close()
					return true, rr.reset("")
				}
				return true, rr.reset(string(tag))
			default:
				rr.outstanding.Add(1)
				reusable = reusable && upstream.IsReusable(name)
				idling = bytes.EqualFold(name, []byte("IDLE"))
			}
			lineStart = off
		}
		w, err := up.Write(chunk)
		total += int64(w)
		if err != nil {
			rr.clientErr = err
		}
		return false, err == nil
	}
	if len(leftover) > 0 {
		if reset, ok := forward(leftover); reset || !ok {
			return total, reset && ok
		}
	}
	cr := newChunkReader(&rr.s.relayBufs, rr.r.client, rr.s.opts.RelayBuffer)
	defer cr.release()
	for {
		chunk, rerr := cr.next()
		if len(chunk) > 0 {
			if reset, ok := forward(chunk); reset || !ok {
				return total, reset && ok
			}
		}
		if rerr != nil {
			// A client that hangs up between commands leaves a session
			// as reusable as one that logs out.
			if errors.Is(rerr, io.EOF) && reusable && !idling && st.Idle() {
				return total, rr.reset("")
			}
			return total, false
		}
	}
}

// reset sends the UNSELECT and tells upSide which tag to answer.
func (rr *reuseRelay) reset(logoutTag string) bool {
	up := rr.res.up.TLS
	rr.logoutTag.Store(&logoutTag)
	limit := time.Now().Add(resetTimeout)
	up.SetWriteDeadline(limit)
	rr.upReader.setHardDeadline(limit)
	_, err := up.Write([]byte(upstream.ResetTag + " UNSELECT\r\n"))
	return err == nil
}

// upSide copies upstream responses to the client until the answer to
// the proxy's UNSELECT, which it keeps; then it answers the LOGOUT and
// parks the session. It reports the bytes relayed and whether it parked.
func (rr *reuseRelay) upSide() (int64, bool) {
	var st imap.Stream
	var total int64
	client := rr.r.toClient
	write := func(b []byte) bool {
		if rr.answered.Load() {
			return true // the client has left
		}
		w, err := client.Write(b)
		total += int64(w)
		if err != nil {
			rr.upErr = err
		}
		return err == nil
	}
	if !write(rr.res.reply) {
		return total, false
	}
	// Bytes the server sent right after the login answer come first.
	var first []byte
	if br := rr.res.up.TakeReader(); br != nil && br.Buffered() > 0 {
		first, _ = br.Peek(br.Buffered())
	}
	cr := rr.upReader
	defer cr.release()
	for {
		chunk, rerr := first, error(nil)
		if first != nil {
			first = nil
		} else {
			chunk, rerr = cr.next()
		}
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
				if !write(chunk[:lineStart]) {
					return total, false
				}
				if *logoutTag != "" {
					write([]byte("* BYE emailproxy: logged out\r\n" + *logoutTag + " OK LOGOUT completed\r\n"))
				}
				if off != len(chunk) {
					return total, false // the server said more: do not trust the session
				}
				return total, true
			}
			if len(tag) > 0 && tag[0] != '*' && tag[0] != '+' {
				completed++
			}
			lineStart = off
		}
		if !write(chunk) {
			return total, false
		}
		rr.outstanding.Add(-completed) // only once the answers are written
		if rerr != nil {
			return total, false
		}
	}
}

// startReuseRelay runs a reusable IMAP session's relay.
func (s *Server) startReuseRelay(client net.Conn, res *loginResult, leftover []byte, log connLog, opened time.Time, r *relay) {
	rr := &reuseRelay{s: s, r: r, res: res, upReader: newChunkReader(&s.relayBufs, res.up.TLS, s.opts.RelayBuffer)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		start := time.Now()
		var wg sync.WaitGroup
		var fromClient int64
		wg.Add(1)
		go func() {
			defer wg.Done()
			var reset bool
			fromClient, reset = rr.clientSide(leftover)
			if !reset {
				r.noteEnd(rr.clientErr, "server") // no UNSELECT answer is coming: end upSide's read
			}
		}()
		fromUp, parked := rr.upSide()
		if r.bye.Load() {
			r.sayBye()
			parked = false
		}
		if errors.Is(rr.upErr, errSendTimeout) {
			r.endFor("send timeout: the client stopped reading")
		}
		client.Close()
		wg.Wait()
		if parked {
			if _, waiting := s.gates.Held(res.mailbox); waiting > 0 {
				// Logins of this mailbox wait for a slot: closing gives
				// the first one this session's slot now; keeping it
				// would hold the slot until the session's linger ends.
				parked = false
			}
		}
		if parked {
			res.up.TLS.SetDeadline(time.Time{})
			s.linger.Park(res.up, res.reuseKey, res.mailbox, res.loginReply)
		} else {
			r.close()
		}
		s.endRelay(r, log, res.user, fromClient, fromUp, start, opened).Bool("kept_upstream", parked).Msg("connection closed")
	}()
}
