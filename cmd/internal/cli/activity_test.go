package cli

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/config"
)

// A session's activity reaches the configuration file as emailproxy.py's
// last_activity (Unix seconds, in the account's section) once the proxy
// stops, beside the cached tokens.
func TestLastActivityInConfig(t *testing.T) {
	up, dir := startUpstream(t)
	cfg, c, br, stop := runWithIMAP(t, up, dir)
	before := time.Now().Unix()
	fmt.Fprint(c, "L LOGIN a@x pw\r\nS SELECT INBOX\r\nO LOGOUT\r\n")
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("before LOGOUT's answer: %v", err)
		}
		if strings.HasPrefix(l, "O OK") {
			break
		}
	}
	after := time.Now().Unix()
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	loaded, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sec := loaded.File.Section("a@x")
	v, _ := sec.Get("last_activity")
	if at, err := strconv.ParseInt(v, 10, 64); err != nil || at < before || at > after {
		t.Fatalf("last_activity = %q, want a time in [%d, %d]", v, before, after)
	}
	if _, ok := sec.Get("access_token"); !ok {
		t.Fatal("the cached tokens are missing beside it")
	}
}
