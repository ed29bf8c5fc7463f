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

// Following a session's commands, content and replies allocates nothing:
// the relay runs it on every chunk.
func TestStreamsDoNotAllocate(t *testing.T) {
	session := []byte("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: s\r\n\r\nbody line\r\n.\r\nQUIT\r\n")
	replies := []byte("250 2.1.0 OK\r\n250-a\r\n250 b\r\n354 go\r\n250 2.0.0 queued\r\n")
	if n := testing.AllocsPerRun(100, func() {
		var c Commands
		for b := session; len(b) > 0; {
			n, ev := c.Scan(b)
			b = b[n:]
			if ev == CommandEnd && string(Verb(c.Head())) == "DATA" {
				c.StartContent()
			}
		}
		var r Replies
		for b := replies; len(b) > 0; {
			n, done := r.Scan(b)
			b = b[n:]
			if done {
				r.Reply()
			}
		}
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}
