package cli

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

// Go reads SSL_CERT_FILE once per process: every mock of these tests
// signs with the same CA.
var (
	caOnce   sync.Once
	sharedCA *mock.CA
)

func testCA(t *testing.T) *mock.CA {
	caOnce.Do(func() {
		var err error
		if sharedCA, err = mock.NewCA("cli test CA"); err != nil {
			t.Fatal(err)
		}
	})
	return sharedCA
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startUpstream starts a mock upstream (client cid/sec, scope s, mailbox
// a@x with one message) whose CA the proxy under test trusts, and returns
// it with a temporary directory for the test's files.
func startUpstream(t *testing.T) (*mock.Upstream, string) {
	t.Helper()
	up, err := mock.Start(mock.Options{ClientID: "cid", ClientSecret: "sec", Scope: "s", CA: testCA(t),
		Mailboxes: map[string][]mock.Message{"a@x": {{UID: "1", Body: []byte("Subject: hi\r\n\r\nhi\r\n")}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, up.CA.PEM, 0o600)
	t.Setenv("SSL_CERT_FILE", ca)
	return up, dir
}

// runWithIMAP writes a configuration with one IMAP section in front of up
// and its account a@x (client credentials), runs the proxy with it and
// args, and returns the file's path, a client connected to the section
// whose greeting was read, and stop, which ends the run and returns its
// exit code (at cleanup if the test has not).
func runWithIMAP(t *testing.T, up *mock.Upstream, dir string, args ...string) (cfg string, c net.Conn, br *bufio.Reader, stop func() int) {
	t.Helper()
	_, upPort, _ := net.SplitHostPort(up.IMAPAddr)
	imapAddr := freeAddr(t)
	_, imapPort, _ := net.SplitHostPort(imapAddr)
	cfg = filepath.Join(dir, "emailproxy.config")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[IMAP-%s]\nserver_address = localhost\nserver_port = %s\nlocal_address = 127.0.0.1\n\n"+
		"[a@x]\ntoken_url = %s\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = cid\nclient_secret = sec\n",
		imapPort, upPort, up.TokenURL)), 0o600)
	quit := make(chan struct{})
	done := make(chan int, 1)
	go func() {
		done <- Run(append([]string{"--config-file", cfg, "--drain-timeout", "1s"}, args...), io.Discard, io.Discard, quit)
	}()
	var once sync.Once
	code := -1
	stop = func() int {
		once.Do(func() { close(quit); code = <-done })
		return code
	}
	t.Cleanup(func() { stop() })
	var err error
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("tcp", imapAddr); err == nil || time.Now().After(end) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br = bufio.NewReader(c)
	br.ReadString('\n')
	return cfg, c, br, stop
}

// --metrics-addr: /healthz answers, /readyz says which account cannot be
// served, and /metrics counts logins by protocol, section and result,
// with no client address in any label.
func TestMetricsAndHealth(t *testing.T) {
	up, dir := startUpstream(t)
	imapAddr, metricsAddr, deadAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	_, imapPort, _ := net.SplitHostPort(imapAddr)
	_, upPort, _ := net.SplitHostPort(up.IMAPAddr)
	cfg := filepath.Join(dir, "emailproxy.config")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[IMAP-%s]
server_address = localhost
server_port = %s
local_address = 127.0.0.1

[a@x]
token_url = %s
oauth2_scope = s
oauth2_flow = client_credentials
client_id = cid
client_secret = sec

[broken@x]
token_url = http://%s/token
oauth2_scope = s
oauth2_flow = client_credentials
client_id = cid
client_secret = sec
`, imapPort, upPort, up.TokenURL, deadAddr)), 0o600)
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		done <- Run([]string{"--config-file", cfg, "--metrics-addr", metricsAddr, "--drain-timeout", "1s"}, io.Discard, io.Discard, stop)
	}()
	defer func() { close(stop); <-done }()
	base := "http://" + metricsAddr
	waitUntil := func(what string, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitUntil("/healthz", func() bool { code, _ := get(t, base+"/healthz"); return code == 200 })
	waitUntil("the token fetches", func() bool {
		code, body := get(t, base+"/readyz")
		return code == 503 && strings.Contains(body, "broken@x") && !strings.Contains(body, "a@x") && !strings.Contains(body, "fetching")
	})

	login := func(pw string) string {
		c, err := net.Dial("tcp", imapAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		br.ReadString('\n')
		fmt.Fprintf(c, "L LOGIN a@x %s\r\n", pw)
		for {
			l, err := br.ReadString('\n')
			if err != nil || strings.HasPrefix(l, "L ") {
				fmt.Fprint(c, "Q LOGOUT\r\n")
				return l
			}
		}
	}
	if l := login("right"); !strings.HasPrefix(l, "L OK") {
		t.Fatal(l)
	}
	login("wrong")
	_, body := get(t, base+"/metrics")
	for _, want := range []string{
		fmt.Sprintf(`emailproxy_logins_total{proto="IMAP",server="IMAP-%s",result="ok"} 1`, imapPort),
		fmt.Sprintf(`emailproxy_logins_total{proto="IMAP",server="IMAP-%s",result="wrong_password"} 1`, imapPort),
		`emailproxy_token_fetches_total{account="broken@x",result="error"}`,
		`emailproxy_token_expiry_seconds{account="a@x"}`,
		`emailproxy_login_duration_seconds_bucket`,
		fmt.Sprintf(`emailproxy_warm_pool_hits_total{server="IMAP-%s"}`, imapPort),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, "127.0.0.1") {
		t.Error("a client address is in the metrics")
	}
	if t.Failed() {
		t.Log(body)
	}
}

// A reload request applies a changed file, and a file that does not
// parse leaves the running configuration in place, with the line in the
// log.
func TestReloadKeepsRunningOnABadFile(t *testing.T) {
	up, dir := startUpstream(t)
	_, upPort, _ := net.SplitHostPort(up.POPAddr)
	section := func(addr string) string {
		_, port, _ := net.SplitHostPort(addr)
		return fmt.Sprintf("[POP-%s]\nserver_address = localhost\nserver_port = %s\nlocal_address = 127.0.0.1\n\n", port, upPort)
	}
	account := fmt.Sprintf("[a@x]\ntoken_url = %s\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = cid\nclient_secret = sec\n", up.TokenURL)
	first, second := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "emailproxy.config")
	os.WriteFile(cfg, []byte(section(first)+account), 0o600)
	var logs syncbuf.Buffer
	stop := make(chan struct{})
	done := make(chan int)
	go func() { done <- Run([]string{"--config-file", cfg, "--drain-timeout", "1s"}, io.Discard, &logs, stop) }()
	defer func() { close(stop); <-done }()
	pop := func(addr string) error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		br.ReadString('\n')
		fmt.Fprint(c, "USER a@x\r\nPASS pw\r\n")
		br.ReadString('\n')
		l, _ := br.ReadString('\n')
		if !strings.HasPrefix(l, "+OK") {
			return fmt.Errorf("login: %q", l)
		}
		return nil
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s\n%s", what, logs.String())
			}
		}
	}
	waitFor("the first section", func() bool { return pop(first) == nil })
	os.WriteFile(cfg, []byte("this is not INI\n"), 0o600)
	reloads <- struct{}{}
	waitFor("the failed reload's log line", func() bool { return strings.Contains(logs.String(), "reload failed") })
	if !strings.Contains(logs.String(), "line 1") {
		t.Fatalf("the log does not name the line:\n%s", logs.String())
	}
	if err := pop(first); err != nil {
		t.Fatalf("after a bad file: %v", err)
	}
	os.WriteFile(cfg, []byte(section(second)+account), 0o600)
	reloads <- struct{}{}
	waitFor("the added section", func() bool { return pop(second) == nil })
}

// --cache-store redis:// with Redis unreachable: the proxy starts, serves
// from memory and exports the degraded state; the URL's password is in no
// output.
func TestSharedStoreDownAtStart(t *testing.T) {
	imapAddr, metricsAddr, redisAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	_, imapPort, _ := net.SplitHostPort(imapAddr)
	cfg := filepath.Join(t.TempDir(), "emailproxy.config")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[IMAP-%s]\nserver_address = localhost\nserver_port = 993\nlocal_address = 127.0.0.1\n", imapPort)), 0o600)
	var logs strings.Builder
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		done <- Run([]string{"--config-file", cfg, "--metrics-addr", metricsAddr, "--drain-timeout", "1s",
			"--cache-store", "redis://u:s3cret-pw@" + redisAddr + "/0"}, &logs, &logs, stop)
	}()
	var body string
	for end := time.Now().Add(10 * time.Second); !strings.Contains(body, "emailproxy_shared_store_up 0"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no degraded state in /metrics:\n%s", body)
		}
		_, body = get(t, "http://"+metricsAddr+"/metrics")
	}
	if c, err := net.Dial("tcp", imapAddr); err != nil {
		t.Fatalf("the IMAP listener is not serving: %v", err)
	} else {
		c.Close()
	}
	close(stop)
	<-done
	if out := logs.String(); !strings.Contains(out, "Redis unavailable") || strings.Contains(out, "s3cret-pw") {
		t.Fatalf("log:\n%s", out)
	}
}
