package upstream

import (
	"encoding/binary"
	"io"
	"net"
	"syscall"

	"github.com/emailproxy/emailproxy/engine/internal/rawread"
	"github.com/valyala/bytebufferpool"
)

// tlsHeaderLen is the size of a TLS record header: type, version, length.
const tlsHeaderLen = 5

// recordConn sits under crypto/tls on upstream connections and never
// hands it more than the rest of the current TLS record. crypto/tls reads
// whatever fits in its input buffer, so under a steady download it keeps
// a record and a half buffered and grows that buffer to about 50 KiB,
// for the life of the connection; fed one record at a time it keeps one
// record (17 KiB). With thousands of sessions that is most of their
// memory.
//
// It costs no extra system call: the read that finishes a record also
// takes the next record's header, which is kept here until asked for.
//
// Under a download, reading the socket one record at a time would cost a
// system call per 16 KiB. Where the socket can be waited on without a
// buffer (Unix), what the socket holds is read at once into a pooled
// buffer of aheadSize, taken only for that read and kept only until
// crypto/tls has asked for all of it: a quiet connection holds none.
type recordConn struct {
	net.Conn
	left   int                // payload bytes of the current record still to read
	hdr    [tlsHeaderLen]byte // the next record's header, read ahead
	hdrLen int                // bytes of hdr read from the socket
	hdrOff int                // bytes of hdr already handed to crypto/tls

	raw   *rawread.Reader // nil: no read-ahead
	ahead []byte          // bytes read from the socket, not yet handed on
}

// aheadSize is the most read from the socket at once.
const aheadSize = 32 << 10

var aheadBufs bytebufferpool.Pool

// newRecordConn wraps a dialled socket.
func newRecordConn(c net.Conn) *recordConn {
	return &recordConn{Conn: c, raw: rawread.New(c, &aheadBufs, aheadSize)}
}

// readSocket reads into p what was read ahead, else from the socket.
func (c *recordConn) readSocket(p []byte) (int, error) {
	if len(c.ahead) > 0 {
		n := copy(p, c.ahead)
		c.ahead = c.ahead[n:]
		if len(c.ahead) == 0 {
			c.releaseAhead()
		}
		return n, nil
	}
	if c.raw == nil {
		return c.Conn.Read(p)
	}
	b, err := c.raw.Read()
	if errno, ok := err.(syscall.Errno); ok {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errno}
	}
	if err != nil {
		return 0, err
	}
	n := copy(p, b)
	c.ahead = b[n:]
	if len(c.ahead) == 0 {
		c.releaseAhead()
	}
	return n, nil
}

func (c *recordConn) releaseAhead() {
	if c.raw != nil {
		c.raw.Release()
	}
	c.ahead = nil
}

func (c *recordConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.left == 0 {
		return c.readHeader(p)
	}
	want := min(len(p), c.left)
	// Finishing the record: take the next header along if there is room.
	extra := 0
	if want == c.left {
		extra = min(tlsHeaderLen, len(p)-want)
	}
	n, err := c.readSocket(p[:want+extra])
	if n > want {
		c.hdrLen = copy(c.hdr[:], p[want:n])
		n = want
	}
	c.left -= n
	return n, err
}

// readHeader hands over the next record header and learns its length.
func (c *recordConn) readHeader(p []byte) (int, error) {
	if c.hdrLen < tlsHeaderLen {
		n, err := io.ReadAtLeast(readerFunc(c.readSocket), c.hdr[c.hdrLen:], tlsHeaderLen-c.hdrLen)
		c.hdrLen += n
		if c.hdrLen < tlsHeaderLen {
			if err == io.ErrUnexpectedEOF || (err == io.EOF && c.hdrLen > 0) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	n := copy(p, c.hdr[c.hdrOff:])
	c.hdrOff += n
	if c.hdrOff == tlsHeaderLen {
		c.left = int(binary.BigEndian.Uint16(c.hdr[3:5]))
		c.hdrLen, c.hdrOff = 0, 0
	}
	return n, nil
}

// RecordReader puts c under crypto/tls the way dialled connections are:
// reads hand it one TLS record at a time.
func RecordReader(c net.Conn) net.Conn { return newRecordConn(c) }

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
