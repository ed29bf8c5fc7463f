package cli

import (
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/internal/syncbuf"
)

// The service runs with the flags given at install; file paths become
// absolute (a service starts in System32) and a log file next to the
// executable is added unless one was given.
func TestServiceArgs(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	got := serviceArgs([]string{"--config-file", "emailproxy.config", "--cache-store=aws:my-secret", "--debug", "--idle-timeout", "5m"}, "/opt/ep")
	want := []string{"--config-file", filepath.Join(dir, "emailproxy.config"), "--cache-store", "aws:my-secret", "--debug", "--idle-timeout", "5m",
		"--log-file", filepath.Join("/opt/ep", "emailproxy.log")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	for _, store := range []string{"redis://:pw@cache:6379/0", "rediss://cache:6380/1", "cache.ini"} {
		got = serviceArgs([]string{"--cache-store", store, "--log-file", "/var/ep.log"}, "/opt/ep")
		want := store
		if store == "cache.ini" {
			want = filepath.Join(dir, store)
		}
		if got[1] != want {
			t.Fatalf("--cache-store %s became %s", store, got[1])
		}
	}
	got = serviceArgs([]string{"-log-file=logs/ep.log"}, "/opt/ep")
	if want := []string{"--log-file", filepath.Join(dir, "logs", "ep.log")}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// Elsewhere than on Windows the service command says where to look.
func TestServiceElsewhere(t *testing.T) {
	if runtime.GOOS == "windows" {
		return // the Windows command is exercised under Wine (scripts/wine-test.sh)
	}
	var out, errOut syncbuf.Buffer
	if code := Run([]string{"service", "install"}, &out, &errOut, nil); code != 2 || !strings.Contains(errOut.String(), "systemd") {
		t.Fatalf("exit %d: %q", code, errOut.String())
	}
	var help syncbuf.Buffer
	if code := Run([]string{"service", "--help"}, &help, &errOut, nil); code != 0 || !strings.Contains(help.String(), "uninstall") {
		t.Fatalf("help: exit %d: %q", code, help.String())
	}
}

// A service's crash report goes beside its log file.
func TestCrashFileBesideTheLog(t *testing.T) {
	logDir := t.TempDir()
	flags := serviceArgs([]string{"--config-file", "c.config", "--log-file", filepath.Join(logDir, "ep.log")}, "/opt/ep")
	if got, want := crashFile(flags), filepath.Join(logDir, "emailproxy-crash.log"); got != want {
		t.Fatalf("crash report in %s, want %s", got, want)
	}
}
