//go:build !windows

package engine

import "syscall"

// rawReads: plain sockets are waited on without a buffer (RawConn.Read
// with a read(2) that may say "would block").
const rawReads = true

var errWouldBlock error = syscall.EAGAIN

func readFD(fd uintptr, buf []byte) (int, error) { return syscall.Read(int(fd), buf) }
