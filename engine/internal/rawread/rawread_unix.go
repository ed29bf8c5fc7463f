//go:build !windows

package rawread

import "syscall"

// supported: sockets are waited on for readability, then read with a
// read(2) that may say "would block".
const supported = true

var errWouldBlock error = syscall.EAGAIN

func readFD(fd uintptr, buf []byte) (int, error) { return syscall.Read(int(fd), buf) }
