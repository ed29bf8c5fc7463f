//go:build windows

package redistest

// Freeze is not available on Windows (no SIGSTOP); the tests that use it
// need Debian's redis-server anyway.
func (s *Server) Freeze() { panic("redistest: Freeze needs Unix signals") }

// Thaw: see Freeze.
func (s *Server) Thaw() {}
