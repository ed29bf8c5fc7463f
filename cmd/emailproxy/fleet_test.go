package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/internal/awstest"
	"github.com/emailproxy/emailproxy/internal/redistest"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

// fleetProxy is one emailproxy process of a fleet.
type fleetProxy struct {
	popAddr string
	logs    syncbuf.Buffer
	cmd     *exec.Cmd
}

func (p *fleetProxy) log() string { return p.logs.String() }

// startFleetProxy runs the real binary with its own configuration file
// (its own POP3 port) and the token cache in store (--cache-store).
func startFleetProxy(t *testing.T, up *mock.Upstream, caFile, store string, accounts []string) *fleetProxy {
	t.Helper()
	port := freePort(t)
	_, upPort, _ := net.SplitHostPort(up.POPAddr)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "[POP-%d]\nserver_address = localhost\nserver_port = %s\nlocal_address = 127.0.0.1\n", port, upPort)
	for _, a := range accounts {
		fmt.Fprintf(&cfg, "\n[%s]\ntoken_url = %s\noauth2_scope = s\noauth2_flow = client_credentials\nredirect_uri = http://localhost\nclient_id = cid\nclient_secret = sec\n", a, up.TokenURL)
	}
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(path, []byte(cfg.String()), 0o600)
	p := &fleetProxy{popAddr: fmt.Sprintf("127.0.0.1:%d", port)}
	p.cmd = exec.Command(binary, "--no-gui", "--config-file", path, "--cache-store", store, "--mailbox-limit", "2", "--log-format", "json")
	p.cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile)
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Signal(syscall.SIGTERM); p.cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", p.popAddr); err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not listen:\n%s", p.log())
		}
	}
}

// poll is one POP3 poll through addr: log in, STAT, wait hold, QUIT.
func poll(addr, user, password string, hold time.Duration) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	expect := func(what string) error {
		l, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(l, "+OK") {
			return fmt.Errorf("%s: %q %v", what, strings.TrimSpace(l), err)
		}
		return nil
	}
	if err := expect("greeting"); err != nil {
		return err
	}
	fmt.Fprintf(c, "USER %s\r\n", user)
	if err := expect("USER"); err != nil {
		return err
	}
	fmt.Fprintf(c, "PASS %s\r\n", password)
	if err := expect("PASS"); err != nil {
		return err
	}
	fmt.Fprintf(c, "STAT\r\n")
	if err := expect("STAT"); err != nil {
		return err
	}
	time.Sleep(hold)
	fmt.Fprintf(c, "QUIT\r\n")
	return expect("QUIT")
}

// Two proxy processes sharing one Redis serve one fleet as one proxy
// would: logins alternating between them cause exactly one token request
// per account (the second proxy checks the password against the first's
// key and uses its token), a mailbox cap of 2 holds across both, and
// Redis killed mid-run (then started again) loses no login.
func TestTwoProxiesShareOneRedis(t *testing.T) {
	accounts := []string{"a@x", "b@x", "c@x"}
	boxes := map[string][]mock.Message{}
	for _, a := range accounts {
		boxes[a] = []mock.Message{{UID: "1", Body: []byte("Subject: hi\r\n\r\nhi\r\n")}}
	}
	up, err := mock.Start(mock.Options{ClientID: "cid", ClientSecret: "sec", Scope: "s", Mailboxes: boxes, MailboxLimit: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, up.CA.PEM, 0o600)
	redisPort := redistest.FreePort(t)
	redisURL, killRedis := redistest.StartOn(t, redisPort)
	proxies := []*fleetProxy{
		startFleetProxy(t, up, caFile, redisURL, accounts),
		startFleetProxy(t, up, caFile, redisURL, accounts),
	}
	password := func(account string) string { return "pw-" + account }
	dump := func() string { return "proxy 1:\n" + proxies[0].log() + "\nproxy 2:\n" + proxies[1].log() }

	// 1. First logins at the same moment on both proxies, then logins
	// alternating between them: one token request per account.
	var first sync.WaitGroup
	firstErrs := make(chan error, 2*len(accounts))
	for _, a := range accounts {
		for _, p := range proxies {
			first.Add(1)
			go func() { defer first.Done(); firstErrs <- poll(p.popAddr, a, password(a), 0) }()
		}
	}
	first.Wait()
	close(firstErrs)
	for err := range firstErrs {
		if err != nil {
			t.Fatalf("simultaneous first logins: %v\n%s", err, dump())
		}
	}
	for round := range 4 {
		for i, a := range accounts {
			if err := poll(proxies[(round+i)%2].popAddr, a, password(a), 0); err != nil {
				t.Fatalf("round %d, %s: %v\n%s", round, a, err, dump())
			}
		}
	}
	if n := up.Authority.Requests(); n != len(accounts) {
		t.Fatalf("%d token requests for %d accounts through two proxies\n%s", n, len(accounts), dump())
	}
	if err := poll(proxies[1].popAddr, "a@x", "not-the-password", 0); err == nil || !strings.Contains(err.Error(), "-ERR") {
		t.Fatalf("another password on the second proxy: %v", err)
	}

	// 2. A cap of 2 across both: six polls of one mailbox at once, three
	// per proxy, each holding its session a while. The server (which
	// refuses a third session) sees two at most, and every poll succeeds.
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- poll(proxies[i%2].popAddr, "a@x", password("a@x"), 300*time.Millisecond)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a poll under the shared cap failed: %v\n%s", err, dump())
		}
	}
	if _, peak := up.Sessions("pop3", "a@x"); peak != 2 || up.LimitRefusals() != 0 {
		t.Fatalf("the server saw up to %d sessions of one mailbox and refused %d (cap 2 across two proxies)", peak, up.LimitRefusals())
	}

	// 3. Redis killed in the middle of a stream of polls, then started
	// again: no poll fails, and both proxies report the outage and the
	// return.
	stop := make(chan struct{})
	var polls, failures sync.Map
	var streams sync.WaitGroup
	for i, a := range accounts {
		streams.Add(1)
		go func() {
			defer streams.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				err := poll(proxies[(i+n)%2].popAddr, a, password(a), 20*time.Millisecond)
				polls.Store(fmt.Sprint(a, n), true)
				if err != nil {
					failures.Store(fmt.Sprint(a, n), err)
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	killRedis()
	time.Sleep(1500 * time.Millisecond)
	again := redistest.Run(t, redisPort)
	time.Sleep(6 * time.Second) // a lease renewal (every 5 s) meets the new Redis
	// 4. Redis hangs instead of failing (stopped, connections open) for
	// 3 s: every call to it times out; still no poll fails.
	again.Freeze()
	time.Sleep(3 * time.Second)
	again.Thaw()
	// Polls go on until both proxies have seen Redis come back twice.
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if strings.Count(proxies[0].log(), "Redis is back") >= 2 && strings.Count(proxies[1].log(), "Redis is back") >= 2 {
			break
		}
		if time.Now().After(end) {
			break // reported below
		}
	}
	close(stop)
	streams.Wait()
	count := 0
	polls.Range(func(any, any) bool { count++; return true })
	failures.Range(func(k, v any) bool { t.Errorf("poll %v failed: %v", k, v); return true })
	if count < 20 {
		t.Fatalf("only %d polls ran", count)
	}
	for i, p := range proxies {
		out := p.log()
		// Twice each: killed, then frozen.
		if strings.Count(out, "Redis unavailable") < 2 || strings.Count(out, "Redis is back") < 2 {
			t.Errorf("proxy %d did not log both outages and returns:\n%s", i+1, out)
		}
		for _, a := range accounts {
			if strings.Contains(out, password(a)) {
				t.Errorf("proxy %d logged a password", i+1)
			}
		}
	}
}

// --cache-store aws:NAME, as emailproxy.py offers it: the real binary,
// configured through the AWS SDK's usual environment variables, creates
// the secret at its first save, with the token encrypted; a restarted
// proxy logs in from it without a token request.
func TestAWSSecretsManagerCache(t *testing.T) {
	up, err := mock.Start(mock.Options{ClientID: "cid", ClientSecret: "sec", Scope: "s",
		Mailboxes: map[string][]mock.Message{"a@x": {{UID: "1", Body: []byte("Subject: hi\r\n\r\nhi\r\n")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, up.CA.PEM, 0o600)
	sm := awstest.New()
	awstest.Env(t, sm)
	p := startFleetProxy(t, up, caFile, "aws:emailproxy-cache", []string{"a@x"})
	if err := poll(p.popAddr, "a@x", "app-password", 0); err != nil {
		t.Fatalf("%v\n%s", err, p.log())
	}
	for end := time.Now().Add(10 * time.Second); !strings.Contains(sm.Secret("emailproxy-cache"), `"access_token":"gAAAAA`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the token never reached the secret (calls: %s)\n%s", sm.Log(), p.log())
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
	requests := up.Authority.Requests()
	p2 := startFleetProxy(t, up, caFile, "aws:emailproxy-cache", []string{"a@x"})
	if err := poll(p2.popAddr, "a@x", "app-password", 0); err != nil {
		t.Fatalf("after a restart: %v\n%s", err, p2.log())
	}
	if err := poll(p2.popAddr, "a@x", "another-password", 0); err == nil {
		t.Fatal("after a restart, another password was accepted")
	}
	if n := up.Authority.Requests(); n != requests {
		t.Fatalf("the restarted proxy made %d token requests", n-requests)
	}
	if out := p.log() + p2.log(); strings.Contains(out, "app-password") || strings.Contains(out, "env-secret-key") {
		t.Fatalf("a secret in the log:\n%s", out)
	}
}

// rediss://: the token cache over TLS to a real redis-server with a TLS
// port only, its certificate trusted through SSL_CERT_FILE as any other.
func TestRedisOverTLS(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("this test needs redis-server: apt-get install redis-server (bash .ci/run does)")
	}
	up, err := mock.Start(mock.Options{ClientID: "cid", ClientSecret: "sec", Scope: "s",
		Mailboxes: map[string][]mock.Message{"a@x": {{UID: "1", Body: []byte("Subject: hi\r\n\r\nhi\r\n")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	dir := t.TempDir()
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "redis.pem"), filepath.Join(dir, "redis.key")
	os.WriteFile(caFile, up.CA.PEM, 0o600)
	certPEM, keyPEM, err := up.CA.LeafPEM()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, certPEM, 0o600)
	os.WriteFile(keyFile, keyPEM, 0o600)
	port := redistest.FreePort(t)
	redis := exec.Command(bin, "--port", "0", "--tls-port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no")
	var redisLog bytes.Buffer
	redis.Stdout, redis.Stderr = &redisLog, &redisLog
	if err := redis.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { redis.Process.Kill(); redis.Wait() }()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		if time.Now().After(end) {
			t.Fatal("redis-server did not start with TLS")
		}
	}
	p := startFleetProxy(t, up, caFile, fmt.Sprintf("rediss://localhost:%d/0", port), []string{"a@x"})
	if err := poll(p.popAddr, "a@x", "pw", 0); err != nil {
		t.Fatalf("%v\n%s", err, p.log())
	}
	// The cache reached Redis: a second proxy on it logs in with no token
	// request, and the first logged no outage.
	requests := up.Authority.Requests()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		p2 := startFleetProxy(t, up, caFile, fmt.Sprintf("rediss://localhost:%d/0", port), []string{"a@x"})
		err := poll(p2.popAddr, "a@x", "pw", 0)
		p2.cmd.Process.Signal(syscall.SIGTERM)
		p2.cmd.Wait()
		if err == nil && up.Authority.Requests() == requests {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("a second proxy on the TLS Redis: %v, %d token requests\n%s", err, up.Authority.Requests()-requests, p2.log())
		}
	}
	if strings.Contains(p.log(), "Redis unavailable") {
		t.Fatalf("the TLS connection to Redis failed:\n%s", p.log())
	}
}
