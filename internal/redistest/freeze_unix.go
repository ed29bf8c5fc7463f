//go:build !windows

package redistest

import "syscall"

// Freeze stops the server without closing its connections (SIGSTOP): a
// Redis that hangs rather than fails. Thaw resumes it.
func (s *Server) Freeze() { s.cmd.Process.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *Server) Thaw() { s.cmd.Process.Signal(syscall.SIGCONT) }
