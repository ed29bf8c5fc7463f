//go:build windows

package rawread

import "errors"

// supported: Windows sockets are read the ordinary way (overlapped I/O has
// no "would block" read to wait on without a buffer).
const supported = false

var errWouldBlock = errors.New("would block")

func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
