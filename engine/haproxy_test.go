package engine

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

// A real HAProxy (Debian's haproxy; .ci/run installs it) with
// send-proxy-v2 in front of a proxy_protocol section: the proxy serves
// the client through it and logs the client's own address and port, not
// HAProxy's.
func TestBehindHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatal("this test needs HAProxy: apt-get install haproxy (bash .ci/run does)")
	}
	pop := func(up *mock.Upstream) string { return up.POPAddr }
	env := startEnv(t, envOptions{servers: []serverSpec{{name: "pp", proto: "POP", upstream: pop, keys: "proxy_protocol = True"}}})
	front := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`global
  log stderr format raw local0 warning
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend mail
  bind %s
  default_backend proxy
backend proxy
  server emailproxy %s send-proxy-v2
`, front, env.addrs["pp"])), 0o600)
	cmd := exec.Command(bin, "-db", "-f", cfg)
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitFor(t, "HAProxy to listen", func() bool {
		c, err := net.DialTimeout("tcp", front, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	p := dialPOP(t, front)
	client := p.c.LocalAddr().String()
	p.ok("USER %s", testAccount)
	p.ok("PASS pw")
	p.ok("STAT")
	p.ok("QUIT")
	waitFor(t, "the log line naming the client", func() bool {
		return strings.Contains(env.logs.String(), `"client":"`+client+`"`)
	})
	if t.Failed() {
		t.Log(out.String())
	}
}
