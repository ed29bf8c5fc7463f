//go:build linux

package cli

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// --park-after: a quiet session parks (the stats endpoint's /debug/heap
// counts its two directions) and still answers when the client speaks;
// --park-after 0 turns parking off.
func TestParkAfterFlag(t *testing.T) {
	up, dir := startUpstream(t)
	_, upPort, _ := net.SplitHostPort(up.IMAPAddr)
	for _, tc := range []struct {
		flag   string
		parked string
	}{{"50ms", `"parked":2`}, {"0", `"parked":0`}} {
		t.Run(tc.flag, func(t *testing.T) {
			imapAddr, statsAddr := freeAddr(t), freeAddr(t)
			_, imapPort, _ := net.SplitHostPort(imapAddr)
			cfg := filepath.Join(dir, "emailproxy.config")
			os.WriteFile(cfg, []byte(fmt.Sprintf("[IMAP-%s]\nserver_address = localhost\nserver_port = %s\nlocal_address = 127.0.0.1\n\n"+
				"[a@x]\ntoken_url = %s\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = cid\nclient_secret = sec\n",
				imapPort, upPort, up.TokenURL)), 0o600)
			stop := make(chan struct{})
			done := make(chan int)
			go func() {
				done <- Run([]string{"--config-file", cfg, "--stats-addr", statsAddr, "--park-after", tc.flag, "--drain-timeout", "1s"}, io.Discard, io.Discard, stop)
			}()
			defer func() { close(stop); <-done }()
			var c net.Conn
			var err error
			for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if c, err = net.Dial("tcp", imapAddr); err == nil || time.Now().After(end) {
					break
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			br.ReadString('\n')
			fmt.Fprint(c, "L LOGIN a@x pw\r\n")
			if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "L OK") {
				t.Fatalf("login: %q", l)
			}
			time.Sleep(300 * time.Millisecond) // six times --park-after, for the 50ms case
			var body string
			for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if _, body = get(t, "http://"+statsAddr+"/debug/heap"); strings.Contains(body, tc.parked) {
					break
				}
			}
			if !strings.Contains(body, tc.parked) {
				t.Fatalf("/debug/heap: %s, want %s", body, tc.parked)
			}
			fmt.Fprint(c, "N NOOP\r\n")
			if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "N OK") {
				t.Fatalf("NOOP after parking: %q", l)
			}
		})
	}
}
