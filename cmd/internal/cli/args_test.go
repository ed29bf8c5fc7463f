package cli

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

func run(args ...string) (code int, stdout, stderr string) {
	var out, errOut syncbuf.Buffer
	code = Run(args, &out, &errOut, nil)
	return code, out.String(), errOut.String()
}

// --help goes to stdout with status 0, emailproxy.py's options apart from
// the tuning ones, and the subcommands listed.
func TestHelp(t *testing.T) {
	code, out, errOut := run("--help")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	ref := strings.Index(out, "Options (emailproxy.py's):")
	tuning := strings.Index(out, "Options (tuning and extras):")
	if ref < 0 || tuning < ref || !strings.Contains(out, "authorise ACCOUNT") || !strings.Contains(out, "service ...") {
		t.Fatalf("help:\n%s", out)
	}
	if section := out[ref:tuning]; !strings.Contains(section, "--config-file") || strings.Contains(section, "--warm-connections") {
		t.Fatalf("emailproxy.py's options:\n%s", section)
	}
	if code, out, _ := run("authorise", "--help"); code != 0 || !strings.Contains(out, "Usage: emailproxy authorise") {
		t.Fatalf("authorise --help: %d %q", code, out)
	}
}

// A mistake is one line and a hint, not the whole usage.
func TestUnknownOption(t *testing.T) {
	code, out, errOut := run("--no-such-option")
	if code != 2 || out != "" || strings.Count(errOut, "\n") != 2 || !strings.Contains(errOut, "unknown option --no-such-option") ||
		!strings.Contains(errOut, "--help") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := run("--lo", "x"); code != 2 || !strings.Contains(errOut, "ambiguous option --lo: could be --") {
		t.Fatalf("ambiguous: %d %q", code, errOut)
	}
}

// As with argparse, a unique prefix names an option: scripts and service
// definitions written for emailproxy.py keep working.
func TestOptionPrefixes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.config")
	os.WriteFile(path, []byte("[emailproxy]\n"), 0o600)
	for _, args := range [][]string{{"--config", path}, {"--config=" + path}, {"--conf", path, "--no-gui"}} {
		code, _, errOut := run(append(args, "--no-such-option")...)
		if code != 2 || !strings.Contains(errOut, "unknown option --no-such-option") {
			t.Fatalf("%q: %d %q", args, code, errOut)
		}
	}
	// The config named by the prefix is the one loaded.
	code, _, errOut := run("--config", filepath.Join(t.TempDir(), "missing.config"))
	if code != 1 || !strings.Contains(errOut, "missing.config") {
		t.Fatalf("exit %d: %q", code, errOut)
	}
}

// Start-up errors say what failed and stop the proxy: a log file that
// cannot be written (nothing would be logged), a port in use (named, with
// the system's reason).
func TestStartupErrors(t *testing.T) {
	dir := t.TempDir()
	code, _, errOut := run("--log-file", filepath.Join(dir, "missing", "ep.log"))
	if code != 1 || !strings.Contains(errOut, "cannot write the log file") {
		t.Fatalf("log file: %d %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a folder was created for the log file")
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	path := filepath.Join(dir, "busy.config")
	os.WriteFile(path, []byte(fmt.Sprintf("[IMAP-%d]\nserver_address = localhost\nserver_port = 993\nlocal_address = 127.0.0.1\n", port)), 0o600)
	code, _, errOut = run("--config-file", path)
	want := fmt.Sprintf("127.0.0.1:%d", port)
	if code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "address already in use") || strings.Contains(errOut, "bad file descriptor") {
		t.Fatalf("busy port: %d %q", code, errOut)
	}
	// Said once where the log is stderr; with a log file, in the file
	// and on stderr.
	missing := filepath.Join(dir, "missing.config")
	code, _, errOut = run("--config-file", missing)
	if n := strings.Count(errOut, "unable to load configuration file"); code != 1 || n != 1 {
		t.Fatalf("missing file, logging to stderr: %d, said %d times: %q", code, n, errOut)
	}
	if !strings.Contains(errOut, "write one there") || !strings.Contains(errOut, "--demo") {
		t.Fatalf("a missing file's error does not say what to do: %q", errOut)
	}
	logFile := filepath.Join(dir, "ep.log")
	code, _, errOut = run("--config-file", missing, "--log-file", logFile)
	logged, _ := os.ReadFile(logFile)
	if code != 1 || strings.Count(errOut, "unable to load configuration file") != 1 || !strings.Contains(string(logged), "unable to load configuration file") {
		t.Fatalf("missing file, logging to a file: %d %q, log %q", code, errOut, logged)
	}
}

// --check-config prints what the file holds and what is wrong, and exits
// 0 or 1 without starting anything.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.config")
	os.WriteFile(good, []byte("[IMAP-1993]\nserver_address = outlook.office365.com\nserver_port = 993\n\n"+
		"[a@x]\ntoken_url = https://t\noauth2_scope = s\noauth2_flow = client_credentials\nclient_id = c\n"), 0o600)
	code, out, _ := run("--check-config", "--config-file", good)
	if code != 0 || !strings.Contains(out, "1 server section, 1 account\n") || !strings.Contains(out, "a@x: client_credentials") ||
		!strings.Contains(out, "configuration OK") {
		t.Fatalf("good: %d\n%s", code, out)
	}
	bad := filepath.Join(dir, "bad.config")
	os.WriteFile(bad, []byte("[Imap-1993]\nserver_address = x\n\n[a@x]\noauth2_flow = magic\n"), 0o600)
	code, out, _ = run("--check", "--config", bad) // prefixes, as scripts write them
	if code != 1 || !strings.Contains(out, "[Imap-1993] looks like a server section") || !strings.Contains(out, "no server sections") ||
		!strings.Contains(out, "errors") {
		t.Fatalf("bad: %d\n%s", code, out)
	}
}
