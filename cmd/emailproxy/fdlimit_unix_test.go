//go:build unix

package main

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A burst of clients at the open-file limit: the proxy stops accepting
// while it has no descriptor left (the clients wait in the kernel's
// queue), says so once, goes on relaying the sessions it has, and serves
// clients again once descriptors are free. It used to exit: gnet's own
// accept took EMFILE as fatal.
func TestOpenFileLimit(t *testing.T) {
	const limit = 200
	d := startDemo(t, exec.Command("sh", "-c", fmt.Sprintf("ulimit -n %d && exec %s --demo --log-format json", limit, binary)))
	held, br := d.popLogin(t)

	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for i := 0; i < 2*limit; i++ {
		c, err := net.DialTimeout("tcp", d.popAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d refused: %v\n%s", i, err, d.logs.String())
		}
		flood = append(flood, c)
	}
	waitLog(t, d, "cannot accept clients")

	// The session logged in before goes on.
	fmt.Fprintf(held, "STAT\r\n")
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "+OK 1 ") {
		t.Fatalf("STAT on the session held through the burst: %q\n%s", l, d.logs.String())
	}
	if err := d.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the proxy is gone: %v\n%s", err, d.logs.String())
	}

	for _, c := range flood {
		c.Close()
	}
	flood = nil
	d.popLogin(t) // served again
	waitLog(t, d, "accepting clients again")
	if n := strings.Count(d.logs.String(), "cannot accept clients"); n > 5 {
		t.Errorf("the accept failures were logged %d times, not once per episode", n)
	}
}

// waitLog waits until the proxy's log holds want.
func waitLog(t *testing.T, d *demoRun, want string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(d.logs.String(), want); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the log never said %q:\n%s", want, d.logs.String())
		}
	}
}
