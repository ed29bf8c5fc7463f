package pop3

import "testing"

// The pre-login hot path allocates nothing; PASS allocates only the one
// string holding both credentials.
func TestParsingDoesNotAllocate(t *testing.T) {
	m := New(testProf, TLS{}, DefaultLimits)
	feed := func(in string) Action {
		b := []byte(in)
		var act Action
		for len(b) > 0 {
			var n int
			n, act = m.Next(b)
			b = b[n:]
		}
		return act
	}
	cmds := "CAPA\r\nUSER someone@example.com\r\n"
	feed(cmds)
	in := []byte(cmds)
	if n := testing.AllocsPerRun(100, func() {
		b := in
		for len(b) > 0 {
			k, _ := m.Next(b)
			b = b[k:]
		}
	}); n != 0 {
		t.Fatalf("CAPA + USER: %v allocations", n)
	}
	pass, user := []byte("PASS pass word\r\n"), []byte("USER someone@example.com\r\n")
	if n := testing.AllocsPerRun(100, func() {
		_, act := m.Next(pass)
		if act.Kind != Login || act.Creds.Username != "someone@example.com" || act.Creds.Password != "pass word" {
			t.Fatalf("%+v", act)
		}
		m.LoginFailed("x", false)
		m.Next(user)
	}); n > 1 {
		t.Fatalf("PASS: %v allocations", n)
	}
}
