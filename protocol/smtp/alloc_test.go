package smtp

import (
	"testing"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/internal/machinetest"
)

// EHLO and friends allocate nothing; AUTH PLAIN allocates only the one
// string holding both credentials.
func TestParsingDoesNotAllocate(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	cmds := []byte("EHLO client.example\r\nNOOP\r\n")
	machinetest.Drain(m, cmds)
	if n := testing.AllocsPerRun(100, func() { machinetest.Drain(m, cmds) }); n != 0 {
		t.Fatalf("EHLO + NOOP: %v allocations", n)
	}
	auth := []byte("AUTH PLAIN AHVAeABwIHc=\r\n")
	if n := testing.AllocsPerRun(100, func() {
		if act := machinetest.Drain(m, auth); act.Kind != protocol.Login || act.Creds.Username != "u@x" || act.Creds.Password != "p w" {
			t.Fatalf("%+v", act)
		}
		m.LoginFailed("x", false)
	}); n > 1 {
		t.Fatalf("AUTH PLAIN: %v allocations", n)
	}
}
