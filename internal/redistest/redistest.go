// Package redistest runs a real redis-server (Debian's package; .ci/run
// installs it) for tests, on a free 127.0.0.1 port, saving nothing to disk.
package redistest

import (
	"fmt"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Start runs redis-server and returns its URL (redis://127.0.0.1:port/0).
// It is killed at the end of the test.
func Start(t testing.TB) string {
	url, _ := StartOn(t, FreePort(t))
	return url
}

// StartOn runs redis-server on port (to restart one on the same port
// after kill) and returns its URL and a func that kills it.
func StartOn(t testing.TB, port int) (url string, kill func()) {
	t.Helper()
	s := Run(t, port)
	return s.URL, s.Kill
}

// Server is a running redis-server.
type Server struct {
	URL  string
	Kill func()
	cmd  *exec.Cmd
}

// Run runs redis-server on port; it is killed at the end of the test.
func Run(t testing.TB, port int) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("this test needs redis-server: apt-get install redis-server (bash .ci/run does)")
	}
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill := func() { once.Do(func() { cmd.Process.Kill(); cmd.Wait() }) }
	t.Cleanup(kill)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			kill()
			t.Fatal("redis-server did not start")
		}
	}
	return &Server{URL: "redis://" + addr + "/0", Kill: kill, cmd: cmd}
}

// FreePort is a TCP port on 127.0.0.1 that nothing listened on a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
