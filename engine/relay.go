package engine

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/internal/readwait"
	"github.com/emailproxy/emailproxy/engine/internal/tlstrim"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/emailproxy/emailproxy/internal/contain"
	"github.com/emailproxy/emailproxy/telemetry"
)

// relay joins an authenticated client to its upstream session. After the
// login the proxy is transparent: bytes pass unchanged both ways. Each
// direction is a goroutine with one pooled buffer, so a slow reader on
// either side stalls its writer through TCP flow control instead of
// growing memory.
type relay struct {
	client net.Conn
	up     *upstream.Conn
	once   sync.Once

	// toClient and toUp write each way with the send timeout; both note
	// the time of the last write in active, which the idle sweep reads.
	toClient, toUp *timedWriter
	active         atomic.Int64 // UnixNano
	idle           time.Duration
	ended          atomic.Pointer[string] // why the proxy ended it, if it did
	// bye, if set by byeAndClose, is written to the client once the
	// upstream stops (IMAP's BYE when the proxy shuts down).
	proto config.Protocol
	bye   atomic.Bool
	l     *listener // the section, for the metrics
	// user is the account logged in; noted is the last time the server
	// was seen writing to its client that the account's activity got
	// (UnixNano; see noteActivity).
	user  string
	noted atomic.Int64

	// The plain relay's two directions (nil in the reuse relay, which
	// does not park), live while either has not ended, and finish, called
	// by the last to end.
	dirs   [2]*relayDir
	live   atomic.Int32
	finish func()
	// waiter watches parked directions' sockets (nil: none park).
	waiter *readwait.Waiter
	// parkMu guards the directions' parked state and stopping: once the
	// relay is closing, no direction parks again.
	parkMu   sync.Mutex
	stopping bool
}

// byeAndClose ends the session for a shutdown: the upstream side is
// closed first, so that nothing else is being written to the client when
// an IMAP client is told BYE.
func (r *relay) byeAndClose() {
	r.ended.CompareAndSwap(nil, ptr("the proxy is shutting down"))
	if r.proto == config.IMAP {
		r.bye.Store(true)
		woken := r.stopParking()
		r.up.Close()
		for _, d := range woken {
			d.resume()
		}
		return
	}
	r.close()
}

// sayBye writes the shutdown BYE if byeAndClose asked for it; call it
// from the goroutine that writes to the client, once that has stopped.
func (r *relay) sayBye() {
	if r.bye.Load() {
		r.client.SetWriteDeadline(time.Now().Add(time.Second))
		r.client.Write([]byte("* BYE [UNAVAILABLE] emailproxy is shutting down\r\n"))
	}
}

func ptr[T any](v T) *T { return &v }

func (s *Server) newRelay(client net.Conn, up *upstream.Conn, proto config.Protocol, l *listener) *relay {
	r := &relay{client: client, up: up, idle: dialectOf(proto).idleTimeout(&s.opts), proto: proto}
	if l != nil {
		r.l = l
		l.sessions.Add(1)
	}
	r.toClient = &timedWriter{c: client, timeout: s.opts.SendTimeout, active: &r.active}
	r.toUp = &timedWriter{c: up.TLS, timeout: s.opts.SendTimeout, active: &r.active}
	r.active.Store(time.Now().UnixNano())
	return r
}

// endFor closes the relay and records why (for its closing log line).
func (r *relay) endFor(reason string) {
	if r.ended.CompareAndSwap(nil, &reason) {
		switch {
		case strings.HasPrefix(reason, "send timeout"):
			telemetry.Ended("send_timeout")
		case reason == "idle timeout":
			telemetry.Ended("idle_timeout")
		}
	}
	r.close()
}

// timedWriter writes to one side of a relay. A write that makes no
// progress for timeout fails, which ends the session and frees its
// upstream connection and mailbox slot. The deadline is pushed out at
// most every quarter timeout (and every second), not on every chunk.
type timedWriter struct {
	c       net.Conn
	timeout time.Duration
	active  *atomic.Int64
	armed   int64        // when the deadline was last pushed out
	writing atomic.Bool  // a write is in progress (progress, however slow)
	wrote   atomic.Int64 // when the last write began (UnixNano)
}

func (w *timedWriter) Write(b []byte) (int, error) {
	w.writing.Store(true)
	defer w.writing.Store(false)
	now := time.Now().UnixNano()
	w.active.Store(now)
	w.wrote.Store(now)
	if now-w.armed > int64(min(w.timeout/4, time.Second)) {
		w.c.SetWriteDeadline(time.Unix(0, now).Add(w.timeout))
		w.armed = now
	}
	n, err := w.c.Write(b)
	if err != nil && upstream.IsTimeout(err) {
		return n, errSendTimeout
	}
	return n, err
}

var errSendTimeout = errors.New("send timeout: the peer accepted no data")

// sweepIdleRelays closes authenticated sessions with no traffic either
// way for longer than their protocol's idle timeout, asks those quiet
// for longer than ParkAfter to park, and passes on the activity of those
// whose server has written to the client since it last did.
func (s *Server) sweepIdleRelays() {
	defer s.wg.Done()
	every := min(min(s.opts.IMAPIdleTimeout, s.opts.POP3IdleTimeout, s.opts.SMTPIdleTimeout)/4, s.opts.ActivityEvery)
	if s.waiter != nil {
		every = min(every, s.opts.ParkAfter/2)
	}
	every = min(max(every, 10*time.Millisecond), 10*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			var idle, quiet, busy []*relay
			s.relayMu.Lock()
			for r := range s.relays {
				if r.toClient.wrote.Load()-r.noted.Load() >= int64(s.opts.ActivityEvery) {
					busy = append(busy, r)
				}
				switch silent := now.UnixNano() - r.active.Load(); {
				case silent > int64(r.idle):
					idle = append(idle, r)
				case r.waiter != nil && silent > int64(s.opts.ParkAfter):
					quiet = append(quiet, r)
				}
			}
			s.relayMu.Unlock()
			for _, r := range idle {
				r.endFor("idle timeout")
			}
			for _, r := range quiet {
				r.askPark()
			}
			for _, r := range busy {
				s.noteActivity(r)
			}
		}
	}
}

func (r *relay) close() {
	r.once.Do(func() {
		woken := r.stopParking()
		r.client.Close()
		r.up.Close()
		for _, d := range woken {
			go d.run() // to find its source closed and end
		}
	})
}

// fileConn turns a duplicated socket fd into a net.Conn on Go's poller.
// net.FileConn applies Go's own keepalive defaults (15 s) to the socket,
// over what gnet set at accept: --tcp-keepalive's period is set again.
func fileConn(fd int, keepAlive time.Duration) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "client")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(keepAlive)
	}
	return c, nil
}

// closeFD closes a duplicated socket that did not become a net.Conn.
func closeFD(fd int) { os.NewFile(uintptr(fd), "client").Close() }

// startRelay joins an authenticated client to its upstream session:
// first the upstream's answer to the login, then both directions.
func (s *Server) startRelay(client net.Conn, res *loginResult, leftover []byte, log connLog, opened time.Time) {
	r := s.newRelay(client, res.up, res.proto, res.l)
	r.user = res.user
	if res.reuseKey != "" {
		if res.proto == config.SMTP {
			s.startSMTPReuseRelay(client, res, leftover, log, opened, r)
		} else {
			s.startReuseRelay(client, res, leftover, log, opened, r)
		}
		return
	}
	s.wg.Add(1) // done by finish
	start := time.Now()
	var fromClient, fromUp copier
	// The client's bytes sent after its login command go first; the
	// upstream's answer to the login, then anything it sent after it
	// that is already buffered, then the live stream.
	up, down := s.newRelayDir(r, client), s.newRelayDir(r, res.up.TLS)
	up.start, up.take = fromClient.to(r.toUp, leftover, nil)
	down.start, down.take = fromUp.to(r.toClient, res.reply, res.up.TakeReader())
	up.end = func(readErr error) {
		if errors.Is(readErr, io.EOF) && fromClient.err == nil {
			r.clientDone()
			return
		}
		r.noteEnd(fromClient.err, "server")
	}
	down.end = func(error) {
		r.sayBye()
		r.noteEnd(fromUp.err, "client")
	}
	r.finish = func() {
		s.endRelay(r, log, res.user, fromClient.total, fromUp.total, start, opened).Msg("connection closed")
		s.wg.Done()
	}
	s.runRelay(r, up, down, res.up)
}

// runRelay starts a relay's two directions (up: from the client), with
// parking if the server parks quiet sessions.
func (s *Server) runRelay(r *relay, up, down *relayDir, u *upstream.Conn) {
	if s.waiter != nil {
		r.waiter = s.waiter
		up.sock, down.sock = socketOf(r.client), u.Socket()
	}
	down.fromServer = true
	r.dirs = [2]*relayDir{up, down}
	r.live.Store(2)
	s.trackRelay(r)
	go up.run()
	go down.run()
}

// serverThrottled heeds the last thing a relay's server said before the
// session ended: that it throttles the mailbox. Until the time it asked
// for has passed, the proxy answers the mailbox's logins itself.
func (s *Server) serverThrottled(r *relay, t *upstream.Throttled) {
	if r == nil || r.l == nil {
		return
	}
	r.l.up.Gates.HoldOff(upstream.MailboxKey(r.l.srv, r.user), t)
	r.l.log.Warn().Str("account", r.user).Str("said", t.Said).
		Dur("hold_ms", t.Until.Sub(t.Since)).Msg("the server throttles this mailbox; the proxy answers its logins until the time the server asked for has passed")
}

// trackRelay lets the sweep and a shutdown see r. A relay started by a
// login that finished as Stop began (after Stop closed the relays it
// saw) is closed here, so that Stop does not wait for it.
func (s *Server) trackRelay(r *relay) {
	s.relayMu.Lock()
	s.relays[r] = struct{}{}
	s.relayMu.Unlock()
	if s.ctx.Err() != nil {
		r.close()
	}
}

// halfCloseQuiet: once the client has finished sending, the session
// ends when the server has closed or has been silent this long.
const halfCloseQuiet = time.Second

// clientDone leaves the relay to the server's answers once the client has
// finished sending (it closed, or shut down its writing side): a client
// that sends QUIT and hangs up at once, or shuts down writing and reads
// on, gets every answer, and the mailbox slot is given back once the
// server has ended the session, not while it still counts it. Nothing is
// passed on upstream (a TLS close_notify the server leaves unread makes
// its close a reset, which would discard its last answers on the way):
// a server that neither closes nor answers for halfCloseQuiet is closed.
func (r *relay) clientDone() {
	var check func()
	check = func() {
		quiet := time.Duration(time.Now().UnixNano() - r.active.Load())
		if quiet >= halfCloseQuiet && !r.toClient.writing.Load() {
			r.close()
			return
		}
		time.AfterFunc(max(halfCloseQuiet-quiet, 10*time.Millisecond), check)
	}
	time.AfterFunc(halfCloseQuiet, check)
}

// noteEnd closes the relay after one direction ended; a send timeout
// names the side that stopped reading.
func (r *relay) noteEnd(err error, writingTo string) {
	if errors.Is(err, errSendTimeout) {
		r.endFor("send timeout: the " + writingTo + " stopped reading")
		return
	}
	r.close()
}

// endRelay forgets a finished relay and returns its closing log event
// (a warning when the proxy ended it for a timeout).
func (s *Server) endRelay(r *relay, log connLog, user string, fromClient, fromUp int64, start, opened time.Time) *zerolog.Event {
	s.relayMu.Lock()
	delete(s.relays, r)
	s.relayMu.Unlock()
	if r.l != nil {
		r.l.sessions.Add(-1)
	}
	s.noteActivity(r)
	telemetry.BytesFromClients.Add(int(fromClient))
	telemetry.BytesToClients.Add(int(fromUp))
	ev := log.Info()
	if why := r.ended.Load(); why != nil {
		ev = log.Warn().Str("ended_by", *why)
	}
	return ev.Str("account", user).Int64("bytes_from_client", fromClient).
		Int64("bytes_to_client", fromUp).Dur("session_ms", time.Since(start)).Dur("duration_ms", time.Since(opened))
}

// noteActivity passes on when the server last wrote to r's client, if
// that is newer than what was passed on before: the account's
// last_activity, as emailproxy.py keeps it.
func (s *Server) noteActivity(r *relay) {
	wrote := r.toClient.wrote.Load()
	if noted := r.noted.Load(); wrote <= noted || !r.noted.CompareAndSwap(noted, wrote) {
		return
	}
	if s.provider != nil {
		s.provider.NoteActivity(r.user, time.Unix(0, wrote))
	}
}

// relayDir is one direction of a relay: it reads src and hands each
// chunk to take, after start; once either says stop or the read ends,
// end runs, and the relay's last direction to end calls its finish.
//
// A direction whose source stays quiet parks: its goroutine ends and
// r.waiter watches the source's socket, and starts a new goroutine when
// data comes. A session idle for hours (an IMAP client in IDLE) then
// holds no goroutine stack; the sweep asks quiet relays to park.
type relayDir struct {
	s   *Server
	r   *relay // nil in benchmarks: never parks
	src net.Conn
	cr  *chunkReader
	// start runs once, in the direction's first goroutine (false: stop);
	// take is given each chunk read (false: stop); end runs once the
	// direction has stopped, with the read's error if that stopped it.
	start   func() bool
	take    func(chunk []byte) bool
	end     func(readErr error)
	started bool

	// fromServer: src is the upstream server. throttled is what the last
	// chunk it sent said if that ended with a throttled command's answer:
	// heeded when the session ends.
	fromServer bool
	throttled  *upstream.Throttled

	// sock is src's socket, waited on while parked (nil: never parks).
	sock syscall.RawConn
	// askedPark: the sweep set a past read deadline on src so that the
	// read returns and the direction parks.
	askedPark atomic.Bool
	// parked and ticket are guarded by r.parkMu.
	parked bool
	ticket readwait.Ticket
}

// copier is the plain relay's direction: everything read goes to dst.
type copier struct {
	total int64 // bytes written to dst; read once the direction has ended
	err   error // the write error that ended it, if one did
}

// to returns a relayDir's start and take that write first, then what br
// holds buffered, then every chunk to dst.
func (c *copier) to(dst io.Writer, first []byte, br *bufio.Reader) (start func() bool, take func([]byte) bool) {
	write := func(b []byte) bool {
		n, err := dst.Write(b)
		c.total += int64(n)
		c.err = err
		return err == nil
	}
	start = func() bool {
		ok := len(first) == 0 || write(first)
		if ok && br != nil && br.Buffered() > 0 {
			b, _ := br.Peek(br.Buffered())
			ok = write(b)
		}
		// Neither is needed again: let the collector have them while
		// the session lasts (a 4 KiB reader per session adds up).
		first, br = nil, nil
		return ok
	}
	return start, write
}

func (s *Server) newRelayDir(r *relay, src net.Conn) *relayDir {
	return &relayDir{s: s, r: r, src: src, cr: newChunkReader(&s.relayBufs, src, s.opts.RelayBuffer)}
}

// run pumps until the direction stops or parks; the last direction of
// a relay to stop finishes it.
func (d *relayDir) run() {
	parked, rerr := d.pumpContained()
	if parked {
		return
	}
	d.cr.release()
	if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
		d.s.log.Debug().Err(rerr).Msg("relay read ended")
	}
	if d.throttled != nil {
		d.s.serverThrottled(d.r, d.throttled)
	}
	d.end(rerr)
	if d.r.live.Add(-1) == 0 {
		d.r.finish()
	}
}

// pumpContained is pump, where a panic (in the code that follows a
// protocol's stream, say) ends this relay only, as a read error would.
func (d *relayDir) pumpContained() (parked bool, rerr error) {
	defer func() {
		if v := recover(); v != nil {
			rerr = contain.Recovered(d.s.log.With().Str("account", d.r.user).Logger(), "relay", v)
			parked = false
			d.r.close()
		}
	}()
	return d.pump()
}

// pump hands chunks to take until it or start says stop (rerr nil), the
// read ends (rerr), or the direction parks: then its goroutine is to
// end, and the waiter will start another.
func (d *relayDir) pump() (parked bool, rerr error) {
	if !d.started {
		d.started = true
		if d.start != nil && !d.start() {
			return false, nil
		}
	}
	for {
		chunk, rerr := d.cr.next()
		if h := testHookRelayChunk; h != nil {
			h(chunk)
		}
		if len(chunk) > 0 {
			if d.fromServer {
				d.throttled = upstream.ThrottleAtEnd(chunk)
			}
			if !d.take(chunk) {
				return false, nil
			}
		}
		if rerr != nil {
			if d.askedPark.Load() && upstream.IsTimeout(rerr) {
				if d.park() {
					return true, nil
				}
				continue
			}
			return false, rerr
		}
	}
}

// park hands the source's socket to the waiter, unless the relay is
// closing; then the read deadline the sweep set is cleared and the
// direction reads on.
func (d *relayDir) park() bool {
	r := d.r
	d.cr.quiet()
	if tc, ok := d.src.(*tls.Conn); ok {
		tlstrim.Trim(tc) // its record buffer, 32 KiB once it has downloaded
	}
	r.parkMu.Lock()
	defer r.parkMu.Unlock()
	d.askedPark.Store(false)
	if !r.stopping {
		// The waiter may call wake at once: it waits for parkMu.
		if t, err := r.waiter.Wait(d.sock, d.wake); err == nil {
			d.parked, d.ticket = true, t
			d.s.parkedDirs.Add(1)
			return true
		}
	}
	d.cr.restoreDeadline()
	return false
}

// wake is the waiter's callback: the parked source has data (or ended).
func (d *relayDir) wake() {
	r := d.r
	r.parkMu.Lock()
	was := d.parked
	d.parked = false
	r.parkMu.Unlock()
	if was {
		d.s.parkedDirs.Add(-1)
		d.resume()
	}
}

// resume starts a goroutine for a direction that was parked.
func (d *relayDir) resume() {
	d.cr.restoreDeadline()
	go d.run()
}

// askPark makes each direction that can park and is not parked return
// from its read (a past deadline) and park.
func (r *relay) askPark() {
	r.parkMu.Lock()
	defer r.parkMu.Unlock()
	if r.stopping || r.waiter == nil {
		return
	}
	for _, d := range r.dirs {
		if d != nil && d.sock != nil && !d.parked {
			d.askedPark.Store(true)
			d.src.SetReadDeadline(past)
		}
	}
}

// closeClient closes the client's side only (its direction, if parked,
// is woken to find it closed).
func (r *relay) closeClient() {
	woken := r.stopParking()
	r.client.Close()
	for _, d := range woken {
		d.resume()
	}
}

// stopParking keeps the directions from parking again and takes back the
// parked ones' sockets from the waiter; it returns those, for the caller
// to resume once it has closed what it closes.
func (r *relay) stopParking() []*relayDir {
	r.parkMu.Lock()
	defer r.parkMu.Unlock()
	r.stopping = true
	var woken []*relayDir
	for _, d := range r.dirs {
		if d != nil && d.parked {
			r.waiter.Cancel(d.ticket)
			d.parked = false
			d.s.parkedDirs.Add(-1)
			woken = append(woken, d)
		}
	}
	return woken
}

// socketOf returns the socket a direction reading c waits on while
// parked: c's own, or the one under its TLS. Nil for any other kind of
// connection, which might hold bytes already read from its socket.
func socketOf(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}
