// Package readwait watches many quiet sockets for data with one goroutine
// for all of them. A relay direction whose source has been quiet for a
// while hands its socket here and ends its goroutine; when the socket
// becomes readable (or the peer hangs up), the callback it left starts a
// new one. An idle session then holds no goroutine stack at all.
//
// It is implemented with epoll on Linux; elsewhere New reports
// errors.ErrUnsupported and sessions keep their goroutines.
package readwait

import "errors"

// ErrClosed is returned by Wait after Close.
var ErrClosed = errors.New("readwait: closed")

// Ticket names one Wait, for Cancel.
type Ticket struct {
	fd  int32
	gen uint32
}
