// Package rawread reads a socket into a pooled buffer that is taken only
// once the socket has data: a connection waiting for its peer holds no
// buffer at all. The relay's client side and the upstream side's record
// reader both read this way.
package rawread

import (
	"io"
	"net"
	"syscall"

	"github.com/valyala/bytebufferpool"
)

// Reader reads one socket. Not safe for concurrent use.
type Reader struct {
	raw  syscall.RawConn
	pool *bytebufferpool.Pool
	size int
	bb   *bytebufferpool.ByteBuffer
	fn   func(uintptr) bool // r.read, made once so that reads allocate nothing
	n    int
	err  error
}

// New returns a Reader of c with buffers of size from pool, or nil where
// c cannot be waited on without a buffer (not a socket; Windows).
func New(c net.Conn, pool *bytebufferpool.Pool, size int) *Reader {
	sc, ok := c.(syscall.Conn)
	if !ok || !supported {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &Reader{raw: raw, pool: pool, size: size}
	r.fn = r.read
	return r
}

// Read gives the previous bytes' buffer back, waits (bufferless, on Go's
// poller, deadlines included) until the socket has data, and reads what
// it holds, up to the buffer's size. The bytes stay valid until the next Read or
// Release. The end of the stream is io.EOF; an error of the socket
// itself is the system's (a syscall.Errno).
func (r *Reader) Read() ([]byte, error) {
	r.Release()
	r.n, r.err = 0, nil
	if err := r.raw.Read(r.fn); err != nil { // a deadline, or closed
		r.Release()
		return nil, err
	}
	switch {
	case r.err != nil:
		r.Release()
		return nil, r.err
	case r.n <= 0:
		r.Release()
		return nil, io.EOF
	}
	return r.bb.B[:r.n], nil
}

// read is RawConn.Read's callback: it reports false, "wait", when the
// socket has nothing, after giving the buffer back.
func (r *Reader) read(fd uintptr) bool {
	if r.bb == nil {
		r.bb = r.pool.Get()
		if cap(r.bb.B) < r.size {
			r.bb.B = make([]byte, r.size)
		}
		// The pool sizes what it keeps by len at Put: a buffer put back
		// empty would teach it to drop full-size ones.
		r.bb.B = r.bb.B[:cap(r.bb.B)]
	}
	for {
		r.n, r.err = readFD(fd, r.bb.B)
		if r.err != syscall.EINTR {
			break
		}
	}
	if r.err == errWouldBlock {
		r.Release()
		return false
	}
	return true
}

// Release gives the buffer back to the pool.
func (r *Reader) Release() {
	if r.bb != nil {
		r.pool.Put(r.bb)
		r.bb = nil
	}
}

// Holding reports whether a buffer is taken.
func (r *Reader) Holding() bool { return r.bb != nil }
