//go:build unix

package engine

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// dialSmallWindow connects to addr with a receive buffer of size bytes set
// before the connection is made, so that the window it advertises fits the
// buffer from the start. Shrinking the buffer of a connected socket does
// not shrink a window already advertised: the peer may then send more
// than fits, the kernel drops the excess, acknowledgements for what this
// side sends included, and both sides stall with nothing blocked in the
// proxy, which is not what the tests that use this are about.
func dialSmallWindow(t *testing.T, addr string, size int) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
