package upstream

import (
	"encoding/binary"
	"io"
	"net"
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
type recordConn struct {
	net.Conn
	left   int                // payload bytes of the current record still to read
	hdr    [tlsHeaderLen]byte // the next record's header, read ahead
	hdrLen int                // bytes of hdr read from the socket
	hdrOff int                // bytes of hdr already handed to crypto/tls
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
	n, err := c.Conn.Read(p[:want+extra])
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
		n, err := io.ReadAtLeast(c.Conn, c.hdr[c.hdrLen:], tlsHeaderLen-c.hdrLen)
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
func RecordReader(c net.Conn) net.Conn { return &recordConn{Conn: c} }
