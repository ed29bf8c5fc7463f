//go:build linux

package main

import (
	"bufio"
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
// accept took EMFILE as fatal. Both front ends share the accept loop.
func TestOpenFileLimit(t *testing.T) {
	for _, fe := range []string{"gnet", "goroutines"} {
		t.Run(fe, func(t *testing.T) { testOpenFileLimit(t, fe) })
	}
}

func testOpenFileLimit(t *testing.T, frontEnd string) {
	const limit = 200
	// The demo's mock provider shares the proxy's limit, so at the limit
	// it accepts nothing either: a login's dial waits for --dial-timeout.
	d := startDemo(t, exec.Command("sh", "-c", fmt.Sprintf("ulimit -n %d && exec %s --demo --log-format json --dial-timeout 2s --front-end %s", limit, binary, frontEnd)))
	held, br := d.popLogin(t)

	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	// From 127.0.0.2: hundreds of connections from 127.0.0.1 would hold
	// as many of its port numbers, which tests running beside this one
	// may have picked to listen on.
	flooder := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	for i := 0; i < 2*limit; i++ {
		c, err := flooder.Dial("tcp", d.popAddr)
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
	// Clients greeted before the limit was reached log in: each gets an
	// answer, a session or a temporary failure, never silence.
	answered := 0
	for _, c := range flood {
		if answered == 3 {
			break
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		br := bufio.NewReader(c)
		if g, _ := br.ReadString('\n'); !strings.HasPrefix(g, "+OK") {
			continue // not accepted yet
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "USER demo@example.com\r\nPASS try\r\n")
		br.ReadString('\n')
		if l, err := br.ReadString('\n'); !strings.HasPrefix(l, "+OK") && !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
			t.Fatalf("a login at the limit was answered %q (%v)\n%s", l, err, d.logs.String())
		}
		answered++
	}
	if answered == 0 {
		t.Fatal("no client of the burst was greeted")
	}
	if err := d.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the proxy is gone: %v\n%s", err, d.logs.String())
	}

	for _, c := range flood {
		c.Close()
	}
	flood = nil
	waitLog(t, d, "accepting clients again")
	// Served again once the burst's descriptors are given back (the
	// clients it left in the kernel's queue are accepted and found gone
	// first).
	for deadline := time.Now().Add(20 * time.Second); !popWorks(d.popAddr); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no login worked after the burst\n%s", d.logs.String())
		}
	}
	if n := strings.Count(d.logs.String(), "cannot accept clients"); n > 5 {
		t.Errorf("the accept failures were logged %d times, not once per episode", n)
	}
}

// popWorks reports whether a POP3 login and STAT work at addr.
func popWorks(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "USER demo@example.com\r\nPASS try\r\nSTAT\r\n")
	var last string
	for i := 0; i < 4; i++ {
		last, _ = br.ReadString('\n')
	}
	return strings.HasPrefix(last, "+OK 1 ")
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
