package engine

import (
	"testing"
	"unsafe"
)

// Every client on the event loop that has sent something has a session
// until it is relayed, and a fleet holds many of them at once (clients
// that answered the greeting and are slow, or that failed a login and
// wait). A field added here is paid by each of them, so the struct stays
// in the 160-byte size class; state only a login needs goes in loginState.
func TestSessionStaysInItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 160 {
		t.Fatalf("session is %d bytes, more than the 160 a held connection may cost; move login-only state to loginState", n)
	}
}
