package pop3

import (
	"testing"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/internal/machinetest"
)

// The pre-login hot path allocates nothing; PASS allocates only the one
// string holding both credentials.
func TestParsingDoesNotAllocate(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	cmds := []byte("CAPA\r\nUSER someone@example.com\r\n")
	machinetest.Drain(m, cmds)
	if n := testing.AllocsPerRun(100, func() { machinetest.Drain(m, cmds) }); n != 0 {
		t.Fatalf("CAPA + USER: %v allocations", n)
	}
	pass := []byte("PASS pass word\r\n")
	if n := testing.AllocsPerRun(100, func() {
		if act := machinetest.Drain(m, pass); act.Kind != protocol.Login || act.Creds.Username != "someone@example.com" || act.Creds.Password != "pass word" {
			t.Fatalf("%+v", act)
		}
		m.LoginFailed("x", false)
		machinetest.Drain(m, cmds)
	}); n > 1 {
		t.Fatalf("PASS: %v allocations", n)
	}
}
