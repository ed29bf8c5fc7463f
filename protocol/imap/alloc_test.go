package imap

import (
	"testing"

	"github.com/emailproxy/emailproxy/protocol"
	"github.com/emailproxy/emailproxy/protocol/internal/machinetest"
)

// The pre-login hot path allocates nothing; a login allocates only the
// one string holding its tag and credentials.
func TestParsingDoesNotAllocate(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	cmds := []byte("a1 CAPABILITY\r\na2 NOOP\r\n")
	machinetest.Drain(m, cmds) // warm the machine's buffers
	if n := testing.AllocsPerRun(100, func() { machinetest.Drain(m, cmds) }); n != 0 {
		t.Fatalf("CAPABILITY + NOOP: %v allocations", n)
	}
	login := []byte("a3 LOGIN user@example.com \"pa\\\"ss\"\r\n")
	in := make([]byte, len(login))
	if n := testing.AllocsPerRun(100, func() {
		copy(in, login) // quoted strings are unescaped in place
		if act := machinetest.Drain(m, in); act.Kind != protocol.Login || act.Creds.Password != `pa"ss` {
			t.Fatalf("%+v", act)
		}
		m.LoginFailed("a3", "x", false)
	}); n > 1 {
		t.Fatalf("LOGIN: %v allocations", n)
	}
}
