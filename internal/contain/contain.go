// Package contain keeps a panic in the code that serves one connection
// from ending the process, and with it every other session: the code
// that reads what a client or a server sent recovers at its goroutine's
// top, reports the panic here, and ends only its own connection, as
// net/http does for its handlers. A panic is a bug, so it is logged as
// one, with its stack, and counted (emailproxy_panics_total).
package contain

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/telemetry"
)

// Error is what a recovered panic becomes for the code that goes on.
type Error struct{ What string }

func (e *Error) Error() string { return "internal error: " + e.What }

// Recovered reports v, a value recover returned in the goroutine serving
// where ("relay", "login", ...), to log and returns it as an error. Only
// a runtime error's own message is kept, never a panic value's contents:
// a value built from what a client sent could hold its password.
func Recovered(log zerolog.Logger, where string, v any) error {
	err := &Error{What: describe(v)}
	telemetry.Panicked(where)
	log.Error().Str("where", where).Str("panic", err.What).Bytes("stack", debug.Stack()).
		Msg("internal error: a panic ended one connection; the proxy goes on (please report this with the stack)")
	return err
}

func describe(v any) string {
	if re, ok := v.(runtime.Error); ok {
		return re.Error()
	}
	return fmt.Sprintf("panic with a %T", v)
}
