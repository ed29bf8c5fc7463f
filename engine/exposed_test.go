package engine

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

// addrListener is a net.Listener that only names an address: the test
// checks what the proxy says about a listening address without binding
// anything but loopback.
type addrListener struct {
	net.Listener
	addr net.Addr
}

func (a addrListener) Addr() net.Addr { return a.addr }

// A plaintext section that listens where other machines reach it (the
// compatible default, ::, or any address not loopback) is warned about,
// with what to do; loopback, local TLS and a section that serves this
// machine's clients only (allowed_clients) are not.
func TestPlaintextListenerReachableFromOtherMachinesIsWarned(t *testing.T) {
	for _, c := range []struct {
		ip      string
		tls     bool
		allowed string // allowed_clients
		warn    bool
	}{
		{"::", false, "", true},
		{"0.0.0.0", false, "", true},
		{"192.0.2.7", false, "", true},
		{"127.0.0.1", false, "", false},
		{"::1", false, "", false},
		{"::", true, "", false},
		{"::", false, "127.0.0.1, ::1", false},
		{"::", false, "127.0.0.1, 10.0.0.0/8", true},
	} {
		logs := &syncbuf.Buffer{}
		l := &listener{ln: addrListener{addr: &net.TCPAddr{IP: net.ParseIP(c.ip), Port: 1995}}, log: zerolog.New(logs),
			srv: &config.Server{AllowedClients: c.allowed}}
		if c.tls {
			l.tlsCfg = &tls.Config{}
		}
		l.warnIfExposed()
		out := logs.String()
		if warned := strings.Contains(out, "reachable from other machines"); warned != c.warn {
			t.Errorf("%s (local TLS %v): warned %v, want %v: %s", c.ip, c.tls, warned, c.warn, out)
		}
		if c.warn && !strings.Contains(out, "local_address = 127.0.0.1") {
			t.Errorf("%s: the warning does not say what to set: %s", c.ip, out)
		}
		if c.warn && c.allowed != "" && !strings.Contains(out, `"allowed_clients":"`+c.allowed+`"`) {
			t.Errorf("%s: the warning does not name allowed_clients: %s", c.ip, out)
		}
	}
}
