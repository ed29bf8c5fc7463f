package engine

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// relay joins an authenticated client to its upstream session. After the
// login the proxy is transparent: bytes pass unchanged both ways. Each
// direction is a goroutine with one pooled buffer, so a slow reader on
// either side stalls its writer through TCP flow control instead of
// growing memory.
type relay struct {
	client net.Conn
	up     *upstreamConn
	once   sync.Once
}

func (r *relay) close() {
	r.once.Do(func() {
		r.client.Close()
		r.up.Close()
	})
}

// fileConn turns a duplicated socket fd into a net.Conn on Go's poller.
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
func (s *Server) startRelay(client net.Conn, res *loginResult, leftover []byte, log zerolog.Logger, opened time.Time) {
	r := &relay{client: client, up: res.up}
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
			fromClient = s.pipe(res.up.conn, client, leftover, nil)
			r.close()
		}()
		// The upstream's answer to the login, then anything it sent after it
		// that is already buffered, then the live stream.
		fromUp = s.pipe(client, res.up.conn, res.reply, res.up.takeReader())
		r.close()
		wg.Wait()
		s.endRelay(r, log, res.user, fromClient, fromUp, start, opened).Msg("connection closed")
	}()
}

// endRelay forgets a finished relay and returns its closing log event.
func (s *Server) endRelay(r *relay, log zerolog.Logger, user string, fromClient, fromUp int64, start, opened time.Time) *zerolog.Event {
	s.relayMu.Lock()
	delete(s.relays, r)
	s.relayMu.Unlock()
	return log.Info().Str("account", user).Int64("bytes_from_client", fromClient).
		Int64("bytes_to_client", fromUp).Dur("session", time.Since(start)).Dur("duration", time.Since(opened))
}

// pipe writes first, then what br holds buffered, then copies src to dst
// until either side ends. It returns the bytes written.
func (s *Server) pipe(dst io.Writer, src net.Conn, first []byte, br *bufio.Reader) int64 {
	var total int64
	if len(first) > 0 {
		n, err := dst.Write(first)
		total += int64(n)
		if err != nil {
			return total
		}
	}
	if n, err := drain(dst, br); err != nil || n > 0 {
		total += int64(n)
		if err != nil {
			return total
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
				return total
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
				s.log.Debug().Err(rerr).Msg("relay read ended")
			}
			return total
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
