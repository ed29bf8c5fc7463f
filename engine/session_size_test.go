package engine

import (
	"testing"
	"unsafe"
)

// Every client connection the event loop holds has a session, and most
// of them are idle pollers that have not logged in: the budget
// for one is 0.6 KB, of which gnet takes about 360 bytes. A field added
// here is paid by each of them, so the struct stays in the 160-byte size
// class; state only a login needs goes in loginState.
func TestSessionStaysInItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 160 {
		t.Fatalf("session is %d bytes, more than the 160 a held connection may cost; move login-only state to loginState", n)
	}
}
