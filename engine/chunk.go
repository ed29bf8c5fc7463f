package engine

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

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
	src  net.Conn
	raw  syscall.RawConn // plain sockets only
	size int             // full buffer size
	// hard, if not zero, is a read deadline (UnixNano) that must hold
	// whatever the reader does (see setHardDeadline).
	hard atomic.Int64

	small [quietSize]byte
	bb    *bytebufferpool.ByteBuffer
	busy  bool
	// deadlineSet: a read deadline is in force that applyDeadline set.
	deadlineSet bool
}

func newChunkReader(src net.Conn, size int) *chunkReader {
	r := &chunkReader{src: src, size: size}
	if sc, ok := src.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			r.raw = raw
		}
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
			n, err := r.src.Read(r.small[:])
			if n == len(r.small) {
				r.busy = true
			}
			return r.small[:n], err
		}
		buf := r.buffer()
		r.applyDeadline(time.Now().Add(busyLinger))
		n, err := r.src.Read(buf)
		if n == 0 && isTimeout(err) && !r.hardPassed() {
			r.busy = false // quiet again: give the buffer back
			continue
		}
		return buf[:n], err
	}
}

// readRaw reads a plain socket: the pooled buffer is taken only when a
// read finds data; while the socket is empty it is given back and Go's
// poller waits for readability.
func (r *chunkReader) readRaw() ([]byte, error) {
	r.release()
	var n int
	var rerr error
	err := r.raw.Read(func(fd uintptr) bool {
		buf := r.buffer()
		for {
			n, rerr = syscall.Read(int(fd), buf)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			r.release()
			return false // nothing yet: wait without a buffer
		}
		return true
	})
	switch {
	case err != nil:
		return nil, err
	case rerr != nil:
		return nil, rerr
	case n == 0:
		return nil, io.EOF
	}
	return r.bb.B[:n], nil
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

func (r *chunkReader) hardPassed() bool {
	h := r.hard.Load()
	return h != 0 && time.Now().UnixNano() >= h
}

func (r *chunkReader) buffer() []byte {
	if r.bb == nil {
		r.bb = bytebufferpool.Get()
		if cap(r.bb.B) < r.size {
			r.bb.B = make([]byte, r.size)
		}
	}
	return r.bb.B[:cap(r.bb.B)]
}

// release gives the full buffer back to the pool.
func (r *chunkReader) release() {
	if r.bb != nil {
		bytebufferpool.Put(r.bb)
		r.bb = nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
