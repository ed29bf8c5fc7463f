package auth

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// startRedis runs a real redis-server (Debian's; .ci/run installs it) on a
// free 127.0.0.1 port, with nothing saved to disk.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("this test needs redis-server: apt-get install redis-server (bash .ci/run does)")
	}
	port := freeTCPPort(t)
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
	}
	return "redis://" + addr + "/0"
}

// Tokens cached in Redis are encrypted as in the file, and a new process
// (a restart, or another instance) uses them without a token request.
func TestRedisStore(t *testing.T) {
	url := startRedis(t)
	ts := newTokenServer(t, 0, 3600)
	cfg := testConfig(t, ts.URL, "")
	store, err := NewRedisStore(url)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	p := NewProvider(cfg, Options{Store: store, Iterations: testIterations})
	tok, err := p.authorize(context.Background(), "a@x", "pw", "")
	if err != nil {
		t.Fatal(err)
	}
	p.confirm("a@x", "pw")
	p.Close() // waits for the save
	cached, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	v := cached["a@x"]
	if !strings.HasPrefix(v["access_token"], "gAAAAA") || v["token_salt"] == "" || strings.Contains(fmt.Sprint(cached), tok) {
		t.Fatalf("what Redis holds: %v", cached)
	}
	n := ts.requests.Load()
	p2 := NewProvider(cfg, Options{Store: store, Iterations: testIterations})
	defer p2.Close()
	again, err := p2.authorize(context.Background(), "a@x", "pw", "")
	if err != nil || again != tok || ts.requests.Load() != n {
		t.Fatalf("second instance: %q %v, %d token requests (want the cached token, none)", again, err, ts.requests.Load()-n)
	}
	if _, err := p2.authorize(context.Background(), "a@x", "wrong", ""); err == nil {
		t.Fatal("the second instance took a wrong password")
	}
}

// A Redis that is down costs a login no more than the store's short
// timeout: the provider goes on from memory, and the error names Redis
// without its password.
func TestRedisDown(t *testing.T) {
	ts := newTokenServer(t, 0, 3600)
	store, err := NewRedisStore(fmt.Sprintf("redis://user:s3cret@127.0.0.1:%d/0", freeTCPPort(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, lerr := store.Load()
	if lerr == nil || strings.Contains(lerr.Error(), "s3cret") || !strings.Contains(lerr.Error(), "Redis at redis://user:xxxxx@127.0.0.1") {
		t.Fatalf("load from a Redis that is down: %v", lerr)
	}
	p := NewProvider(testConfig(t, ts.URL, ""), Options{Store: store, Iterations: testIterations})
	defer p.Close()
	if _, err := p.authorize(context.Background(), "a@x", "pw", ""); err != nil {
		t.Fatalf("login without Redis: %v", err)
	}
	p.confirm("a@x", "pw")
}
