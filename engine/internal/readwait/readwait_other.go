//go:build !linux

package readwait

import (
	"errors"
	"syscall"
)

// Waiter is not available here: New reports errors.ErrUnsupported.
type Waiter struct{}

// New reports that sockets cannot be watched here.
func New() (*Waiter, error) { return nil, errors.ErrUnsupported }

// Wait is never reached (New returned no Waiter).
func (w *Waiter) Wait(syscall.RawConn, func()) (Ticket, error) {
	return Ticket{}, errors.ErrUnsupported
}

// Cancel has nothing to forget.
func (w *Waiter) Cancel(Ticket) bool { return false }

// Waiting is always 0.
func (w *Waiter) Waiting() int { return 0 }

// Close has nothing to end.
func (w *Waiter) Close() {}
