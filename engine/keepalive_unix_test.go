//go:build linux

package engine

import (
	"syscall"
	"testing"
	"time"
)

// A relayed client's socket keeps TCP keepalive with --tcp-keepalive's
// period, not Go's default that net.FileConn applies when the relay takes
// the socket over from gnet.
func TestRelayedClientKeepsKeepalive(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{TCPKeepAlive: 45 * time.Second}})
	p := popLogin(t, env.popAddr, testAccount, testPassword)
	defer p.ok("QUIT")
	var client syscall.Conn
	waitFor(t, "the relay", func() bool {
		env.srv.relayMu.Lock()
		defer env.srv.relayMu.Unlock()
		for r := range env.srv.relays {
			client, _ = r.client.(syscall.Conn)
		}
		return client != nil
	})
	raw, err := client.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on, idle int
	raw.Control(func(fd uintptr) {
		on, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		idle, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
	})
	if on != 1 || idle != 45 {
		t.Fatalf("SO_KEEPALIVE %d, TCP_KEEPIDLE %d; want 1 and 45", on, idle)
	}
}

// A client not yet logged in has TCP keepalive with --tcp-keepalive's
// period too: set on the listening socket, which the accepted ones
// inherit.
func TestAcceptedClientHasKeepalive(t *testing.T) {
	env := startEnv(t, envOptions{engine: Options{TCPKeepAlive: 45 * time.Second, FrontEnd: FrontEndGoroutines}})
	c := dialRaw(t, env.popAddr)
	c.line()
	var client syscall.Conn
	waitFor(t, "the client tracked", func() bool {
		env.srv.relayMu.Lock()
		defer env.srv.relayMu.Unlock()
		for c := range env.srv.conns {
			client, _ = c.(syscall.Conn)
		}
		return client != nil
	})
	raw, err := client.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on, idle, intvl int
	raw.Control(func(fd uintptr) {
		on, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		idle, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		intvl, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
	})
	if on != 1 || idle != 45 || intvl != 45 {
		t.Fatalf("SO_KEEPALIVE %d, TCP_KEEPIDLE %d, TCP_KEEPINTVL %d; want 1, 45, 45", on, idle, intvl)
	}
}
