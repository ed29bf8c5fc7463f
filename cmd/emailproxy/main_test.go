package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/bench/mock"
	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

var binary string

// TestMain builds the real binary once: these tests run it as a user would.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "emailproxy-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "emailproxy")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func runBinary(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func TestVersionHelpAndBadArguments(t *testing.T) {
	if out, code := runBinary(t, nil, "--version"); code != 0 || !strings.HasPrefix(out, "Email OAuth 2.0 Proxy (Go) ") {
		t.Fatalf("--version: %d %q", code, out)
	}
	if out, code := runBinary(t, nil, "--help"); code != 0 || !strings.Contains(out, "--config-file") || !strings.Contains(out, "--no-gui\n") {
		t.Fatalf("--help: %d %q", code, out)
	}
	if out, code := runBinary(t, nil, "--no-such-flag"); code != 2 || !strings.Contains(out, "no-such-flag") {
		t.Fatalf("bad flag: %d %q", code, out)
	}
}

func TestConfigAndBindErrorsExitNonZero(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.config")
	os.WriteFile(bad, []byte("[IMAP-1993]\nserver_address = x\nserver_port = 993\nserver_port = 994\n"), 0o600)
	out, code := runBinary(t, nil, "--no-gui", "--config-file", bad)
	if code != 1 || !strings.Contains(out, "line 4") || !strings.Contains(out, "server_port") {
		t.Fatalf("duplicate key: %d %q", code, out)
	}
	out, code = runBinary(t, nil, "--no-gui", "--config-file", filepath.Join(dir, "missing.config"))
	if code != 1 || !strings.Contains(out, "unable to load configuration file") {
		t.Fatalf("missing file: %d %q", code, out)
	}
	// A port that is already taken.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := filepath.Join(dir, "busy.config")
	os.WriteFile(busy, []byte(fmt.Sprintf("[IMAP-%d]\nserver_address = 127.0.0.1\nserver_port = 993\nlocal_address = 127.0.0.1\n", ln.Addr().(*net.TCPAddr).Port)), 0o600)
	out, code = runBinary(t, nil, "--no-gui", "--config-file", busy)
	if code != 1 || !strings.Contains(out, "cannot listen") {
		t.Fatalf("busy port: %d %q", code, out)
	}
}

// The binary, started as a user would with the config shape,
// trusts the mock provider only through SSL_CERT_FILE, and serves a POP3
// client and an IMAP client; SIGTERM stops it cleanly.
func TestBinaryEndToEndWithSSLCertFile(t *testing.T) {
	const account, secret = "app@yourdomain.com", "YYYYY-client-secret"
	up, err := mock.Start(mock.Options{ClientID: "XXXXX", ClientSecret: secret, Scope: "https://outlook.office365.com/.default",
		Mailboxes: map[string][]mock.Message{account: {{UID: "1", Body: []byte("Subject: x\r\n\r\n.dot\r\nbody\r\n")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, up.CA.PEM, 0o600)
	popPort, imapPort := freePort(t), freePort(t)
	_, pp, _ := net.SplitHostPort(up.POPAddr)
	_, ip, _ := net.SplitHostPort(up.IMAPAddr)
	cfg := fmt.Sprintf(`[Email OAuth 2.0 Proxy configuration file]

[Server setup]

[POP-%d]
server_address = localhost
server_port = %s
local_address = 127.0.0.1

[IMAP-%d]
server_address = localhost
server_port = %s
local_address = 127.0.0.1

[SMTP-%d]
server_address = localhost
server_port = 465
local_address = 127.0.0.1

[%s]
documentation = *** note: this is an advanced O365 account example ***
token_url = %s
oauth2_scope = https://outlook.office365.com/.default
oauth2_flow = client_credentials
redirect_uri = http://localhost
client_id = XXXXX
client_secret = %s

[Advanced proxy configuration]

[emailproxy]
delete_account_token_on_password_error = True
encrypt_client_secret_on_first_use = False
`, popPort, pp, imapPort, ip, freePort(t), account, up.TokenURL, secret)
	cfgPath := filepath.Join(dir, "emailproxy.config")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)

	cmd := exec.Command(binary, "--no-gui", "--debug", "--log-format", "json", "--config-file", cfgPath)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	popAddr := fmt.Sprintf("127.0.0.1:%d", popPort)
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err = net.Dial("tcp", popAddr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not listen: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(conn)
	read := func() string { l, _ := br.ReadString('\n'); return strings.TrimRight(l, "\r\n") }
	if g := read(); !strings.HasPrefix(g, "+OK POP3 mock ready") || strings.Contains(g, "<") {
		t.Fatalf("greeting %q", g)
	}
	const pass = "app-local-password"
	fmt.Fprintf(conn, "USER %s\r\nPASS %s\r\nRETR 1\r\nQUIT\r\n", account, pass)
	var got []string
	for l := read(); l != "+OK bye"; l = read() {
		got = append(got, l)
		if len(got) > 20 {
			t.Fatalf("no QUIT answer: %q\n%s", got, logs.String())
		}
	}
	want := []string{"+OK Send your password", "+OK User successfully authenticated.", "+OK 26 octets", "Subject: x", "", "..dot", "body", "."}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("POP3 session:\n got %q\nwant %q", got, want)
	}
	conn.Close()

	ic, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", imapPort))
	if err != nil {
		t.Fatal(err)
	}
	ic.SetDeadline(time.Now().Add(15 * time.Second))
	ibr := bufio.NewReader(ic)
	iread := func() string { l, _ := ibr.ReadString('\n'); return strings.TrimRight(l, "\r\n") }
	if g := iread(); !strings.Contains(g, "AUTH=PLAIN") {
		t.Fatalf("IMAP greeting %q", g)
	}
	fmt.Fprintf(ic, "a LOGIN %s %s\r\nb LOGOUT\r\n", account, pass)
	var last string
	for l := iread(); ; l = iread() {
		if strings.HasPrefix(l, "b ") || l == "" {
			last = l
			break
		}
	}
	if !strings.HasPrefix(last, "b OK") {
		t.Fatalf("IMAP LOGOUT answer %q", last)
	}
	ic.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", waitErr, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("did not stop on SIGTERM")
	}
	out := logs.String()
	for _, want := range []string{`"message":"listening"`, `"server":"SMTP-`, `"message":"login"`, `"ok":true`, `"message":"shutting down: no new clients; sessions may finish (a second signal stops at once)"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	tokenRE := regexp.MustCompile(`mock-[0-9a-f]{48}`)
	for _, s := range []string{pass, secret} {
		if strings.Contains(out, s) {
			t.Errorf("secret %q in the log", s)
		}
	}
	if tokenRE.MatchString(out) {
		t.Error("access token in the log")
	}

	// The token was cached, encrypted, in the config file; a restarted
	// proxy serves the same password without asking the token endpoint,
	// and refuses another one.
	saved, _ := os.ReadFile(cfgPath)
	if !strings.Contains(string(saved), "access_token = gAAAAA") || !strings.Contains(string(saved), "documentation = *** note") {
		t.Fatalf("config after the run:\n%s", saved)
	}
	requests := up.Authority.Requests()
	cmd2 := exec.Command(binary, "--no-gui", "--config-file", cfgPath)
	cmd2.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile)
	var logs2 bytes.Buffer
	cmd2.Stdout, cmd2.Stderr = &logs2, &logs2
	if err := cmd2.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd2.Process.Signal(syscall.SIGTERM); cmd2.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err = net.Dial("tcp", popAddr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted proxy did not listen: %v\n%s", err, logs2.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	br = bufio.NewReader(conn)
	read()
	fmt.Fprintf(conn, "USER %s\r\nPASS wrong-one\r\nUSER %s\r\nPASS %s\r\nSTAT\r\n", account, account, pass)
	got = []string{read(), read(), read(), read(), read()}
	if !strings.HasPrefix(got[1], "-ERR [AUTH]") || !strings.HasPrefix(got[3], "+OK User") || !strings.HasPrefix(got[4], "+OK 1 ") {
		t.Fatalf("after restart: %q\n%s", got, logs2.String())
	}
	if n := up.Authority.Requests(); n != requests {
		t.Fatalf("the restarted proxy made %d token requests", n-requests)
	}
}

// demoRun is `emailproxy --demo` running: the addresses it printed, its
// log, and the lines it prints later.
type demoRun struct {
	popAddr, smtpAddr string
	logs              *syncbuf.Buffer
	printed           chan string
	cmd               *exec.Cmd
}

// startDemo runs cmd (the binary with --demo, perhaps under a shell) and
// waits for it to say where it listens; it is stopped when the test ends.
func startDemo(t *testing.T, cmd *exec.Cmd) *demoRun {
	t.Helper()
	stdout, _ := cmd.StdoutPipe()
	d := &demoRun{logs: &syncbuf.Buffer{}, printed: make(chan string, 16), cmd: cmd}
	cmd.Stderr = d.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	popRE := regexp.MustCompile(`POP3 on (127\.0\.0\.1:\d+)`)
	smtpRE := regexp.MustCompile(`SMTP on (127\.0\.0\.1:\d+)`)
	for sc.Scan() {
		if m := popRE.FindStringSubmatch(sc.Text()); m != nil {
			d.popAddr = m[1]
		}
		if m := smtpRE.FindStringSubmatch(sc.Text()); m != nil {
			d.smtpAddr = m[1]
		}
		if strings.Contains(sc.Text(), "Ctrl-C") {
			break
		}
	}
	if d.popAddr == "" || d.smtpAddr == "" {
		t.Fatalf("demo printed no POP3 or SMTP address; log:\n%s", d.logs.String())
	}
	go func() {
		for sc.Scan() {
			select {
			case d.printed <- sc.Text():
			default:
			}
		}
	}()
	return d
}

// popLogin logs in to the demo's POP3 port and checks STAT's reply; the
// connection stays open until the test ends.
func (d *demoRun) popLogin(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err = net.Dial("tcp", d.popAddr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(conn)
	br.ReadString('\n')
	fmt.Fprintf(conn, "USER demo@example.com\r\nPASS try\r\nSTAT\r\n")
	br.ReadString('\n')
	br.ReadString('\n')
	if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "+OK 1 ") {
		t.Fatalf("STAT %q\n%s", l, d.logs.String())
	}
	return conn, br
}

// The README's first command: --demo serves the mock mailbox over POP3
// and takes a message over SMTP, which the mock provider reports.
func TestDemo(t *testing.T) {
	d := startDemo(t, exec.Command(binary, "--demo", "--log-format", "json"))
	d.popLogin(t)

	host, _, _ := net.SplitHostPort(d.smtpAddr)
	auth := smtp.PlainAuth("", "demo@example.com", "try", host)
	msg := "Subject: hello\r\n\r\nsent through the demo\r\n"
	if err := smtp.SendMail(d.smtpAddr, auth, "demo@example.com", []string{"someone@example.com"}, []byte(msg)); err != nil {
		t.Fatalf("send: %v\n%s", err, d.logs.String())
	}
	want := fmt.Sprintf("accepted a message from demo@example.com to someone@example.com (%d bytes), sent as demo@example.com", len(msg))
	for timeout := time.After(10 * time.Second); ; {
		select {
		case l := <-d.printed:
			if strings.Contains(l, want) {
				return
			}
		case <-timeout:
			t.Fatalf("the demo did not print %q", want)
		}
	}
}

// `emailproxy authorise` enrols a client_credentials account with the
// password from standard input; the tokens land encrypted in the config,
// comments and other keys untouched.
func TestAuthoriseSubcommand(t *testing.T) {
	up, err := mock.Start(mock.Options{ClientID: "cid", ClientSecret: "csecret", Scope: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	path := filepath.Join(t.TempDir(), "emailproxy.config")
	src := "# keep this comment\n[a@x]\ntoken_url = " + up.TokenURL + "\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = cid\nclient_secret = csecret\n"
	os.WriteFile(path, []byte(src), 0o600)
	cmd := exec.Command(binary, "authorise", "--config-file", path, "a@x")
	cmd.Stdin = strings.NewReader("enrolled-pass\n")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Account a@x is authorised") {
		t.Fatalf("authorise: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{"# keep this comment", "client_secret = csecret", "token_salt = ", "token_iterations = 1200000", "access_token = gAAAAA"} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("config lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "enrolled-pass") {
		t.Fatal("password written to the config")
	}
	if out, code := runBinary(t, nil, "authorise", "--config-file", path); code != 2 || !strings.Contains(out, "which account?") {
		t.Fatalf("no account: %d %s", code, out)
	}
}
