package engine

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Python's standard mail clients (imaplib, poplib, smtplib), the kind of
// client many legacy polling apps are, through the proxy to a real
// Dovecot: testdata/python_clients.py logs in, appends, fetches,
// retrieves and sends, and checks each answer; here the messages it sent
// are checked as Dovecot relayed them. Both front ends (the goroutine one
// is Windows' default), and IMAP session reuse.
func TestDovecotPythonClients(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("this test needs python3: apt-get install python3 (bash .ci/run does)")
	}
	for _, run := range []struct {
		name string
		opts Options
	}{
		{FrontEndGnet, Options{FrontEnd: FrontEndGnet}},
		{FrontEndGoroutines, Options{FrontEnd: FrontEndGoroutines}},
		// The script's second IMAP login takes the session its first
		// one's LOGOUT left, and each second SMTP login the session its
		// first one's QUIT left.
		{"session-reuse", Options{IMAPSessionReuse: time.Minute, SMTPSessionReuse: time.Minute}},
	} {
		t.Run(run.name, func(t *testing.T) {
			dv, _ := startDovecotWithIdP(t)
			px := startProxyFor(t, dv, run.opts)
			const password = "the app's password"
			runClient(t, px.logs, python, "testdata/python_clients.py", px.imap, px.pop, px.smtpStartTLS, px.smtp465, dovecotUser, password)
			requireNoSecrets(t, px.logs.String(), dovecotUser, password)
			if reuse := run.opts.IMAPSessionReuse > 0; reuse {
				// Two IMAP logins and four SMTP ones, each second one of
				// a kind taking the session the first left.
				if n := px.srv.linger.Snapshot().Reused; n != 3 {
					t.Fatalf("%d logins reused a kept session, want 3", n)
				}
			}
			relayed := dv.relay.messages()
			if len(relayed) != 4 {
				t.Fatalf("Dovecot relayed %d messages, want 4 (two per SMTP port)", len(relayed))
			}
			for i, subject := range []string{"starttls #1", "starttls #2", "implicit-tls #1", "implicit-tls #2"} {
				m := relayed[i]
				data := string(m.data)
				if m.from != dovecotUser || len(m.to) != 1 || m.to[0] != "python@example.net" ||
					!strings.Contains(data, "Subject: python via "+subject+"\r\n") || !strings.Contains(data, "\r\n.leading dot\r\nQUIT\r\n") {
					t.Fatalf("relayed message %d: from %q to %v\n%s", i+1, m.from, m.to, data)
				}
			}
		})
	}
}
