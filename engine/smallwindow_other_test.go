//go:build !unix

package engine

import (
	"net"
	"testing"
	"time"
)

// dialSmallWindow: see the Unix version; here the buffer is set once
// connected.
func dialSmallWindow(t *testing.T, addr string, size int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetReadBuffer(size)
	return c
}
