package engine

import (
	"crypto/tls"
	"net"
	"sync/atomic"
	"time"

	"github.com/emailproxy/emailproxy/engine/internal/rawread"
	"github.com/emailproxy/emailproxy/engine/upstream"
	"github.com/valyala/bytebufferpool"
)

// quietSize is what a TLS relay direction holds while its source is
// quiet; busyLinger is how long it keeps a full buffer after data stops.
const (
	quietSize  = 256
	busyLinger = 20 * time.Millisecond
)

// chunkReader reads one relay direction in chunks and holds a full-size
// pooled buffer only while data flows. Most sessions of a polling fleet
// sit idle between commands; a relay that kept two 16 KiB buffers each
// would spend most of its memory on silence.
//
// A plain socket is waited on for readability with no buffer at all
// (RawConn.Read), then read into a pooled buffer. A TLS connection cannot
// be waited on that way (it may hold decrypted bytes the socket no longer
// shows), so it is read into a small buffer while quiet; a read that
// fills it switches to a pooled buffer, kept until no data comes for
// busyLinger (a read deadline that TLS survives).
type chunkReader struct {
	pool *bytebufferpool.Pool
	src  net.Conn
	raw  *rawread.Reader // plain sockets, where supported
	size int             // full buffer size
	// hard, if not zero, is a read deadline (UnixNano) that must hold
	// whatever the reader does (see setHardDeadline).
	hard atomic.Int64

	small []byte // quietSize, made for sources read the ordinary way only
	bb    *bytebufferpool.ByteBuffer
	busy  bool
	// deadlineSet: a read deadline is in force that applyDeadline set.
	deadlineSet bool

	holding atomic.Bool // a full-size buffer is taken (tests watch it)

	// batch: a TLS source whose records read ahead are gathered into one
	// chunk (one write to the client instead of one per record).
	batch bool
}

// maxRecord is the most plaintext one TLS record carries.
const maxRecord = 16 << 10

// batchSize is a batching reader's buffer: two full records (four measured no faster, and a download to a client that stopped reading holds it until the send timeout).
const batchSize = 2 * maxRecord

// past is a deadline already gone: a read with it takes only what needs
// no wait.
var past = time.Unix(1, 0)

func newChunkReader(pool *bytebufferpool.Pool, src net.Conn, size int) *chunkReader {
	r := &chunkReader{pool: pool, src: src, size: size}
	r.raw = rawread.New(src, pool, size)
	if _, ok := src.(*tls.Conn); ok && size >= maxRecord {
		r.batch, r.size = true, max(size, batchSize)
	}
	return r
}

// next blocks until the source has data and returns it; the slice is
// valid until the next call to next or release.
func (r *chunkReader) next() ([]byte, error) {
	if r.raw != nil {
		return r.readRaw()
	}
	for {
		if !r.busy {
			r.release()
			r.applyDeadline(time.Time{})
			if r.small == nil {
				r.small = make([]byte, quietSize)
			}
			n, err := r.src.Read(r.small)
			if n == len(r.small) {
				r.busy = true
			}
			return r.small[:n], err
		}
		buf := r.buffer()
		r.applyDeadline(time.Now().Add(busyLinger))
		n, err := r.src.Read(buf)
		if n == 0 && upstream.IsTimeout(err) && !r.hardPassed() {
			r.busy = false // quiet again: give the buffer back
			continue
		}
		if r.batch && err == nil && n > 0 {
			n = r.gather(buf, n)
		}
		return buf[:n], err
	}
}

// gather adds to buf[:n] the records that can be read without waiting
// (crypto/tls, or the record reader under it, holds them), while a whole
// record still fits.
func (r *chunkReader) gather(buf []byte, n int) int {
	r.src.SetReadDeadline(past)
	r.deadlineSet = true // the next read sets its own
	for len(buf)-n >= maxRecord {
		m, err := r.src.Read(buf[n:])
		n += m
		if err != nil || m == 0 {
			break // a timeout: nothing more without waiting; anything else comes again next read
		}
	}
	return n
}

// readRaw reads a plain socket: the pooled buffer is taken only when the
// socket has data; while it is empty Go's poller waits without one.
func (r *chunkReader) readRaw() ([]byte, error) {
	r.release()
	b, err := r.raw.Read()
	r.holding.Store(r.raw.Holding())
	return b, err
}

// applyDeadline sets the read deadline to soft, or the hard one if it is
// earlier (zero soft: none but the hard one).
func (r *chunkReader) applyDeadline(soft time.Time) {
	if h := r.hard.Load(); h != 0 {
		if hd := time.Unix(0, h); soft.IsZero() || hd.Before(soft) {
			soft = hd
		}
	}
	if !soft.IsZero() || r.deadlineSet {
		r.src.SetReadDeadline(soft)
		r.deadlineSet = !soft.IsZero()
	}
}

// setHardDeadline bounds every later read, and one in progress.
func (r *chunkReader) setHardDeadline(t time.Time) {
	r.hard.Store(t.UnixNano())
	r.src.SetReadDeadline(t)
}

// restoreDeadline takes back a read deadline set from outside (the
// sweep's request to park): the hard one, if set, else none.
func (r *chunkReader) restoreDeadline() {
	h := r.hard.Load()
	if h != 0 {
		r.src.SetReadDeadline(time.Unix(0, h))
	} else {
		r.src.SetReadDeadline(time.Time{})
	}
	r.deadlineSet = h != 0
}

func (r *chunkReader) hardPassed() bool {
	h := r.hard.Load()
	return h != 0 && time.Now().UnixNano() >= h
}

func (r *chunkReader) buffer() []byte {
	if r.bb == nil {
		r.bb = r.pool.Get()
		if cap(r.bb.B) < r.size {
			r.bb.B = make([]byte, r.size)
		}
		// The pool sizes what it keeps by len at Put: a buffer put back
		// empty would teach it to drop full-size ones.
		r.bb.B = r.bb.B[:cap(r.bb.B)]
		r.holding.Store(true)
	}
	return r.bb.B
}

// quiet gives back every buffer while the source is not being read (a
// parked relay direction).
func (r *chunkReader) quiet() {
	r.release()
	r.small, r.busy = nil, false
}

// release gives the full buffer back to the pool.
func (r *chunkReader) release() {
	if r.raw != nil && r.raw.Holding() {
		r.raw.Release()
		r.holding.Store(false)
	}
	if r.bb != nil {
		r.pool.Put(r.bb)
		r.bb = nil
		r.holding.Store(false)
	}
}
