//go:build !windows

package upstream

import "syscall"

// rawReads: sockets can be waited on without a buffer and then read with
// a read(2) that may say "would block".
const rawReads = true

func readFD(fd uintptr, buf []byte) (int, error) { return syscall.Read(int(fd), buf) }
