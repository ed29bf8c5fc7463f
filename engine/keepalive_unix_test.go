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
