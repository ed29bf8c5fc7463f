package engine

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/bytebufferpool"
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
		fromUp = s.pipe(client, res.up.conn, res.reply, res.up.br)
		r.close()
		wg.Wait()
		s.relayMu.Lock()
		delete(s.relays, r)
		s.relayMu.Unlock()
		log.Info().Str("account", res.user).Int64("bytes_from_client", fromClient).
			Int64("bytes_to_client", fromUp).Dur("session", time.Since(start)).
			Dur("duration", time.Since(opened)).Msg("connection closed")
	}()
}

// pipe writes first, then what br holds buffered, then copies src to dst
// until either side ends. It returns the bytes written.
func (s *Server) pipe(dst io.Writer, src io.Reader, first []byte, br interface {
	Buffered() int
	Peek(int) ([]byte, error)
	Discard(int) (int, error)
}) int64 {
	var total int64
	if len(first) > 0 {
		n, err := dst.Write(first)
		total += int64(n)
		if err != nil {
			return total
		}
	}
	if br != nil {
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			w, err := dst.Write(b)
			total += int64(w)
			br.Discard(n)
			if err != nil {
				return total
			}
		}
	}
	bb := bytebufferpool.Get()
	defer bytebufferpool.Put(bb)
	if cap(bb.B) < s.opts.RelayBuffer {
		bb.B = make([]byte, s.opts.RelayBuffer)
	}
	buf := bb.B[:cap(bb.B)]
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
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
