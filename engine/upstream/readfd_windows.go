//go:build windows

package upstream

import "errors"

// rawReads: Windows sockets are read the ordinary way.
const rawReads = false

func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
