package engine

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emailproxy/emailproxy/auth"
)

// A port in use fails the start with a clear reason, and the ports bound
// before it are let go: the proxy holds none of them.
func TestStartFailingReleasesThePortsItBound(t *testing.T) {
	eachFrontEnd(t, func(t *testing.T, fe string) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		free := freePort(t)
		text := fmt.Sprintf("[POP-%d]\nserver_address = 127.0.0.1\nserver_port = 995\nlocal_address = 127.0.0.1\n\n"+
			"[IMAP-%d]\nserver_address = 127.0.0.1\nserver_port = 993\nlocal_address = 127.0.0.1\n",
			free, busy.Addr().(*net.TCPAddr).Port)
		cfg := writeConfig(t, filepath.Join(t.TempDir(), "emailproxy.config"), text)
		provider := auth.NewProvider(cfg, auth.Options{})
		defer provider.Close()
		srv := New(cfg, provider, Options{FrontEnd: fe})
		err = srv.Start()
		if err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
			t.Fatalf("Start with a port in use: %v", err)
		}
		again, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", free))
		if err != nil {
			t.Fatalf("the port bound before the failure is still held: %v", err)
		}
		again.Close()
	})
}

// When the event loops cannot take a client (gnet's hand-over duplicates
// the descriptor, which fails at the open-file limit, and closes the
// client), the plaintext clients after it are served on goroutines,
// which need no second descriptor: they are greeted and log in, and the
// failure is logged once.
func TestClientsGoToGoroutinesWhenTheLoopsCannotTakeThem(t *testing.T) {
	// Every hand-over fails, as while the process stays at its limit.
	var enrolls atomic.Int32
	testHookEnroll = func(c net.Conn) error {
		enrolls.Add(1)
		c.Close()
		return errors.New("dup: too many open files")
	}
	t.Cleanup(func() { testHookEnroll = nil })
	env := startEnv(t, envOptions{engine: Options{FrontEnd: FrontEndGnet}})
	dialRaw(t, env.popAddr).expectEOF() // the client the loops could not take
	for i := 0; i < 3; i++ {
		p := popLogin(t, env.popAddr, testAccount, testPassword)
		p.ok("STAT")
		p.ok("QUIT")
	}
	if n := enrolls.Load(); n != 1 {
		t.Fatalf("%d hand-overs to the event loops, want only the one that failed", n)
	}
	if n := strings.Count(env.logs.String(), "the event loops cannot take clients"); n != 1 {
		t.Fatalf("the failure was logged %d times, want once:\n%s", n, env.logs.String())
	}
}
