// Package protocol holds what the I/O-free state machines of its
// subpackages (imap, pop3, smtp) share: the action a machine asks its
// connection to take after each step.
package protocol

import "github.com/emailproxy/emailproxy/protocol/sasl"

// Kind is what the engine must do after a step.
type Kind int

const (
	// NeedMore: all input was consumed (or is incomplete); wait for more.
	NeedMore Kind = iota
	// Reply: send Out to the client and call Next again.
	Reply
	// Login: send Out (if any), then log in upstream with Creds; do not
	// call Next until the machine's LoginFailed is called or the session is
	// relayed.
	Login
	// Close: send Out, then close the connection.
	Close
	// StartTLS: send Out, drop any input already buffered (it was sent in
	// plaintext and could be injected), switch the connection to TLS, then
	// call the machine's TLSStarted.
	StartTLS
)

// Action is the result of one step.
type Action struct {
	Kind  Kind
	Out   []byte // valid until the next call on the machine
	Creds sasl.Credentials
	Tag   string // IMAP: the client's tag for the login command
}

// Run drives a machine's step function over in: it stops at the first
// action that is not NeedMore, when a step consumes nothing, or when the
// input is used up, and returns the bytes used and that action.
func Run(in []byte, step func([]byte) (int, Action)) (int, Action) {
	used := 0
	for {
		n, act := step(in[used:])
		used += n
		if act.Kind != NeedMore || n == 0 || used == len(in) {
			return used, act
		}
	}
}
