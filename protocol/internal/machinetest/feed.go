// Package machinetest drives the protocol state machines in tests the way
// the engine does.
package machinetest

import (
	"testing"

	"github.com/emailproxy/emailproxy/protocol"
)

// Machine is a pre-login state machine.
type Machine interface {
	Next(in []byte) (int, protocol.Action)
	TLSStarted()
}

// Feed gives data to m in chunks of chunk bytes, as successive reads would,
// and fails t if m panics, consumes more than it was given, or stops
// making progress. loginFailed must end a Login action (as the engine does
// when a login fails); StartTLS drops the buffered input, as the engine
// does. Feeding stops at Close.
func Feed(t *testing.T, m Machine, data []byte, chunk int, loginFailed func(protocol.Action)) {
	t.Helper()
	var buf []byte
	for off := 0; off < len(data); off += chunk {
		buf = append(buf, data[off:min(off+chunk, len(data))]...)
		for guard := 0; ; guard++ {
			if guard > 10000 {
				t.Fatal("no progress")
			}
			n, act := m.Next(buf)
			if n < 0 || n > len(buf) {
				t.Fatalf("consumed %d of %d", n, len(buf))
			}
			buf = buf[n:]
			switch act.Kind {
			case protocol.Login:
				loginFailed(act)
				continue
			case protocol.StartTLS:
				buf = buf[:0]
				m.TLSStarted()
				continue
			case protocol.Close:
				return
			case protocol.Reply:
				continue
			}
			break
		}
	}
}

// Drain runs every command in in through m and returns the last action.
// It allocates nothing itself, for allocation tests.
func Drain(m Machine, in []byte) protocol.Action {
	var act protocol.Action
	for len(in) > 0 {
		n, a := m.Next(in)
		if n == 0 {
			return a
		}
		in, act = in[n:], a
	}
	return act
}
