//go:build linux

package engine

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fetchmail in IMAP IDLE, as a daemon that waits for new mail instead of
// polling, through the proxy to a real Dovecot: its session parks while
// nothing happens (no goroutine, no buffer), and a message appended by
// another client wakes it, reaches fetchmail and is delivered.
func TestDovecotFetchmailIdle(t *testing.T) {
	if _, err := os.Stat("/usr/bin/fetchmail"); err != nil {
		t.Fatal("this test needs fetchmail: apt-get install fetchmail (bash .ci/run does)")
	}
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{ParkAfter: 50 * time.Millisecond})
	const user, password = dovecotUser, "correct horse 9"
	apps := mailApps{t: t, dir: t.TempDir()}
	creds := user + ":" + password
	stored := func(subject string) []byte {
		return []byte("From: " + user + "\r\nSubject: " + subject + "\r\n\r\n" + subject + " body\r\n")
	}
	first := apps.write("first.eml", 0o600, string(stored("before idle")))
	apps.run(nil, "curl", "-sS", "--user", creds, "-T", first, "imap://"+px.imap+"/INBOX")

	host, port := splitHostPort(t, px.imap)
	// The MDA writes each message beside the folder and moves it in
	// whole, so that the test never reads one half written.
	out, tmp := apps.mkdir("delivered"), apps.mkdir("delivering")
	rc := apps.write("fetchmailrc", 0o600, fmt.Sprintf(`set no syslog
poll %s service %s protocol IMAP auth password
  user "%s" there password "%s" sslproto '' fetchall idle
  mda "/bin/sh -c 'cat > %[5]s/m.$$ && mv %[5]s/m.$$ %[6]s/'"
`, host, port, user, password, tmp, out))
	// A daemon polling every 10 minutes, so only IDLE can bring the second
	// message within the test's time. It deletes what it has delivered
	// (curl's APPEND stores messages as seen, which fetchall takes too),
	// so each message is delivered once.
	daemon := apps.command(nil, "fetchmail", "--nodetach", "--daemon", "600", "-f", rc)
	var log strings.Builder
	daemon.Stdout, daemon.Stderr = &log, &log
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	defer func() {
		daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			daemon.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("fetchmail:\n%s", log.String())
		}
	}()
	delivered := func(n int) func() bool {
		return func() bool { return len(apps.files(out)) == n }
	}
	waitFor(t, "fetchmail to deliver the first message", delivered(1))
	// Both directions of fetchmail's IDLE session park.
	waitFor(t, "fetchmail's IDLE session to park", func() bool { return px.srv.Stats().Parked == 2 })

	second := apps.write("second.eml", 0o600, string(stored("during idle")))
	apps.run(nil, "curl", "-sS", "--user", creds, "-T", second, "imap://"+px.imap+"/INBOX")
	waitFor(t, "fetchmail to deliver the message appended while it idled", delivered(2))
	expectMessages(t, "fetchmail in IDLE", apps.files(out), [][]byte{stored("before idle"), stored("during idle")})
	select {
	case err := <-exited:
		t.Fatalf("fetchmail exited: %v", err)
	default:
	}
	requireNoSecrets(t, px.logs.String(), user, password)
}
