package imap

import "testing"

// The pre-login hot path allocates nothing; a login allocates only the
// one string holding its tag and credentials.
func TestParsingDoesNotAllocate(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	cmds := []byte("a1 CAPABILITY\r\na2 NOOP\r\n")
	feed := func(in []byte) Action {
		var act Action
		for len(in) > 0 {
			var n int
			n, act = m.Next(in)
			in = in[n:]
		}
		return act
	}
	feed(cmds) // warm the machine's buffers
	if n := testing.AllocsPerRun(100, func() { feed(cmds) }); n != 0 {
		t.Fatalf("CAPABILITY + NOOP: %v allocations", n)
	}
	login := []byte("a3 LOGIN user@example.com \"pa\\\"ss\"\r\n")
	if n := testing.AllocsPerRun(100, func() {
		if act := feed(append([]byte(nil), login...)); act.Kind != Login || act.Creds.Password != `pa"ss` {
			t.Fatalf("%+v", act)
		}
		m.LoginFailed("a3", "x", false)
	}); n > 2 { // the copy of the input above, and the credentials
		t.Fatalf("LOGIN: %v allocations", n)
	}
}
