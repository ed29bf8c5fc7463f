package engine

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/upstream"
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
}

// byeAndClose ends the session for a shutdown: the upstream side is
// closed first, so that nothing else is being written to the client when
// an IMAP client is told BYE.
func (r *relay) byeAndClose() {
	r.ended.CompareAndSwap(nil, ptr("the proxy is shutting down"))
	if r.proto == config.IMAP {
		r.bye.Store(true)
		r.up.Close()
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
	armed   int64 // when the deadline was last pushed out
}

func (w *timedWriter) Write(b []byte) (int, error) {
	now := time.Now().UnixNano()
	w.active.Store(now)
	if now-w.armed > int64(min(w.timeout/4, time.Second)) {
		w.c.SetWriteDeadline(time.Unix(0, now).Add(w.timeout))
		w.armed = now
	}
	n, err := w.c.Write(b)
	if err != nil && isTimeout(err) {
		return n, errSendTimeout
	}
	return n, err
}

var errSendTimeout = errors.New("send timeout: the peer accepted no data")

// sweepIdleRelays closes authenticated sessions with no traffic either
// way for longer than their protocol's idle timeout.
func (s *Server) sweepIdleRelays() {
	defer s.wg.Done()
	every := min(s.opts.IMAPIdleTimeout, s.opts.POP3IdleTimeout, s.opts.SMTPIdleTimeout) / 4
	every = min(max(every, 10*time.Millisecond), 10*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			var idle []*relay
			s.relayMu.Lock()
			for r := range s.relays {
				if now.UnixNano()-r.active.Load() > int64(r.idle) {
					idle = append(idle, r)
				}
			}
			s.relayMu.Unlock()
			for _, r := range idle {
				r.endFor("idle timeout")
			}
		}
	}
}

func (r *relay) close() {
	r.once.Do(func() {
		r.client.Close()
		r.up.Close()
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

// startRelay joins an authenticated client to its upstream session:
// first the upstream's answer to the login, then both directions.
func (s *Server) startRelay(client net.Conn, res *loginResult, leftover []byte, log connLog, opened time.Time) {
	r := s.newRelay(client, res.up, res.proto, res.l)
	s.relayMu.Lock()
	s.relays[r] = struct{}{}
	s.relayMu.Unlock()
	if s.linger != nil && res.reuseKey != "" {
		s.startReuseRelay(client, res, leftover, log, opened, r)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		start := time.Now()
		var wg sync.WaitGroup
		var fromClient, fromUp int64
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			fromClient, err = s.pipe(r.toUp, client, leftover, nil)
			r.noteEnd(err, "server")
		}()
		// The upstream's answer to the login, then anything it sent after it
		// that is already buffered, then the live stream.
		var err error
		fromUp, err = s.pipe(r.toClient, res.up.TLS, res.reply, res.up.TakeReader())
		r.sayBye()
		r.noteEnd(err, "client")
		wg.Wait()
		s.endRelay(r, log, res.user, fromClient, fromUp, start, opened).Msg("connection closed")
	}()
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
	telemetry.BytesFromClients.Add(int(fromClient))
	telemetry.BytesToClients.Add(int(fromUp))
	ev := log.Info()
	if why := r.ended.Load(); why != nil {
		ev = log.Warn().Str("ended_by", *why)
	}
	return ev.Str("account", user).Int64("bytes_from_client", fromClient).
		Int64("bytes_to_client", fromUp).Dur("session_ms", time.Since(start)).Dur("duration_ms", time.Since(opened))
}

// pipe writes first, then what br holds buffered, then copies src to dst
// until either side ends. It returns the bytes written and the write
// error that ended it, if one did.
func (s *Server) pipe(dst io.Writer, src net.Conn, first []byte, br *bufio.Reader) (int64, error) {
	var total int64
	if len(first) > 0 {
		n, err := dst.Write(first)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	if n, err := drain(dst, br); err != nil || n > 0 {
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	// Neither is needed again: let the collector have them while the
	// session lasts (a 4 KiB reader per session adds up).
	first, br = nil, nil
	cr := newChunkReader(&s.relayBufs, src, s.opts.RelayBuffer)
	defer cr.release()
	for {
		chunk, rerr := cr.next()
		if len(chunk) > 0 {
			w, werr := dst.Write(chunk)
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
				s.log.Debug().Err(rerr).Msg("relay read ended")
			}
			return total, nil
		}
	}
}

// drain writes what br holds buffered (bytes the server sent right after
// its login answer) to dst.
func drain(dst io.Writer, br *bufio.Reader) (int, error) {
	if br == nil || br.Buffered() == 0 {
		return 0, nil
	}
	b, _ := br.Peek(br.Buffered())
	n, err := dst.Write(b)
	br.Discard(len(b))
	return n, err
}
