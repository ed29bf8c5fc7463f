// Package tlstrim gives back the read buffers a crypto/tls connection
// keeps between reads. crypto/tls grows its record buffer to fit the
// largest record read and never shrinks it: a session that has
// downloaded anything keeps 32 KiB for the rest of its life, more than
// everything else a parked session holds. crypto/tls has no call for
// this, so Trim reaches its unexported fields by name; where they are not
// what it expects (another Go version), it does nothing.
package tlstrim

import (
	"bytes"
	"crypto/tls"
	"reflect"
	"unsafe"
)

// offsets of tls.Conn's read-side buffers: rawInput (records read from
// the socket), input (the current record's plaintext, a window on
// rawInput's array) and hand (handshake messages). ok is false if any is
// missing or of another type.
var offsets = func() (o struct {
	rawInput, input, hand uintptr
	ok                    bool
}) {
	t := reflect.TypeOf(tls.Conn{})
	field := func(name string, want reflect.Type) (uintptr, bool) {
		f, found := t.FieldByName(name)
		return f.Offset, found && f.Type == want
	}
	buffer, reader := reflect.TypeOf(bytes.Buffer{}), reflect.TypeOf(bytes.Reader{})
	var ok1, ok2, ok3 bool
	o.rawInput, ok1 = field("rawInput", buffer)
	o.input, ok2 = field("input", reader)
	o.hand, ok3 = field("hand", buffer)
	o.ok = ok1 && ok2 && ok3
	return o
}()

// Supported reports whether Trim can work with this Go's crypto/tls.
func Supported() bool { return offsets.ok }

// Trim gives c's empty read buffers back to the collector and reports
// whether it did. It does nothing if any of them holds bytes not yet
// read (a record partly received, plaintext not yet taken). Call it only
// while no goroutine is reading c; writes may go on.
func Trim(c *tls.Conn) bool {
	if !offsets.ok || c == nil {
		return false
	}
	base := unsafe.Pointer(c)
	rawInput := (*bytes.Buffer)(unsafe.Add(base, offsets.rawInput))
	input := (*bytes.Reader)(unsafe.Add(base, offsets.input))
	hand := (*bytes.Buffer)(unsafe.Add(base, offsets.hand))
	if rawInput.Len() != 0 || input.Len() != 0 || hand.Len() != 0 {
		return false
	}
	*rawInput = bytes.Buffer{}
	input.Reset(nil)
	*hand = bytes.Buffer{}
	return true
}
