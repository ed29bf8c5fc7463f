package engine

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
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
