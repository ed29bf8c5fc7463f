//go:build !linux

package engine

import (
	"net"
	"time"
)

// listenConfig sets TCP keepalive on each accepted socket: outside Linux
// they do not inherit the listening socket's.
func listenConfig(keepAlive time.Duration) net.ListenConfig {
	return net.ListenConfig{KeepAlive: keepAlive}
}
