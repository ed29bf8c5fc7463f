package smtp

import "testing"

// EHLO and friends allocate nothing; AUTH PLAIN allocates only the one
// string holding both credentials.
func TestParsingDoesNotAllocate(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	cmds := []byte("EHLO client.example\r\nNOOP\r\n")
	feed := func(in []byte) Action {
		var act Action
		for len(in) > 0 {
			var n int
			n, act = m.Next(in)
			in = in[n:]
		}
		return act
	}
	feed(cmds)
	if n := testing.AllocsPerRun(100, func() { feed(cmds) }); n != 0 {
		t.Fatalf("EHLO + NOOP: %v allocations", n)
	}
	auth := []byte("AUTH PLAIN AHVAeABwIHc=\r\n")
	if n := testing.AllocsPerRun(100, func() {
		if act := feed(auth); act.Kind != Login || act.Creds.Username != "u@x" || act.Creds.Password != "p w" {
			t.Fatalf("%+v", act)
		}
		m.LoginFailed("x", false)
	}); n > 1 {
		t.Fatalf("AUTH PLAIN: %v allocations", n)
	}
}
