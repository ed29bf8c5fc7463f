package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Mail programs nobody here wrote, of the kinds that scripts and legacy
// apps poll and send with, through the proxy to a real Dovecot: curl,
// fetchmail, getmail and mbsync read (POP3 and IMAP), curl, msmtp, swaks
// and neomutt send. Every reader must get each message as it was stored
// (up to the headers it adds and its line endings), every sender's
// message must reach Dovecot's relay, a wrong password must be reported
// as one, and no password may reach the proxy's log.
func TestDovecotMailApps(t *testing.T) {
	for _, name := range []string{"curl", "fetchmail", "getmail", "mbsync", "msmtp", "swaks", "neomutt"} {
		if _, err := exec.LookPath(name); err != nil {
			t.Fatalf("this test needs %s: apt-get install curl fetchmail getmail6 isync msmtp swaks neomutt (bash .ci/run does)", name)
		}
	}
	// Both front ends: the goroutine one is Windows' default.
	for _, frontEnd := range []string{FrontEndGnet, FrontEndGoroutines} {
		t.Run(frontEnd, func(t *testing.T) { testMailApps(t, frontEnd) })
	}
}

func testMailApps(t *testing.T, frontEnd string) {
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{FrontEnd: frontEnd})
	const user, password = dovecotUser, "correct horse 9"
	apps := mailApps{t: t, dir: t.TempDir()}

	// Two messages: one small with lines that POP3 must dot-stuff and
	// 8-bit text, one large enough to cross every buffer on the way.
	small := []byte("From: " + user + "\r\nTo: someone@example.net\r\nSubject: small\r\n\r\n" +
		".leading dot\r\n..two dots\r\n.\r\nna\xc3\xafve\r\n")
	var big bytes.Buffer
	big.WriteString("From: " + user + "\r\nTo: someone@example.net\r\nSubject: big\r\n\r\n")
	for i := 0; big.Len() < 300_000; i++ {
		fmt.Fprintf(&big, "%06d %s\r\n", i, strings.Repeat("x", 70))
	}
	stored := [][]byte{small, big.Bytes()}
	creds := user + ":" + password
	for i, m := range stored {
		// A file, not standard input: curl must know the size for the
		// literal.
		file := apps.write(fmt.Sprintf("stored-%d.eml", i+1), 0o600, string(m))
		apps.run(nil, "curl", "-sS", "--user", creds, "-T", file, "imap://"+px.imap+"/INBOX")
		if out := apps.run(nil, "curl", "-sS", "--user", creds, "imap://"+px.imap+"/INBOX?ALL"); !strings.Contains(out, fmt.Sprint(" ", i+1)) {
			t.Fatalf("curl: the message appended is not in INBOX: %q", out)
		}
	}
	host, imapPort := splitHostPort(t, px.imap)
	_, popPort := splitHostPort(t, px.pop)
	_, smtpPort := splitHostPort(t, px.smtpStartTLS)

	t.Run("curl", func(t *testing.T) {
		var imap, pop [][]byte
		for i := range stored {
			imap = append(imap, []byte(apps.run(nil, "curl", "-sS", "--user", creds, fmt.Sprintf("imap://%s/INBOX;UID=%d", px.imap, i+1))))
			pop = append(pop, []byte(apps.run(nil, "curl", "-sS", "--user", creds, fmt.Sprintf("pop3://%s/%d", px.pop, i+1))))
		}
		expectMessages(t, "curl (IMAP)", imap, stored)
		expectMessages(t, "curl (POP3)", pop, stored)
	})

	t.Run("fetchmail", func(t *testing.T) {
		for _, proto := range []string{"POP3", "IMAP"} {
			port := map[string]string{"POP3": popPort, "IMAP": imapPort}[proto]
			out := apps.mkdir("fetchmail-" + proto)
			// sslproto '': this listener speaks plaintext, and fetchmail
			// would otherwise insist on STLS (the README says so).
			rc := apps.write("fetchmailrc-"+proto, 0o600, fmt.Sprintf(`set no syslog
poll %s service %s protocol %s auth password
  user "%s" there password "%s" sslproto '' keep fetchall
  mda "/bin/sh -c 'cat > %s/m.$$'"
`, host, port, proto, user, password, out))
			apps.run(nil, "fetchmail", "-f", rc)
			expectMessages(t, "fetchmail ("+proto+")", apps.files(out), stored)
		}
		// A wrong password: fetchmail's own exit status for a failed
		// login (3), nothing delivered.
		out := apps.mkdir("fetchmail-wrong")
		rc := apps.write("fetchmailrc-wrong", 0o600, fmt.Sprintf(`set no syslog
poll %s service %s protocol POP3 auth password
  user "%s" there password "not the password" sslproto '' keep fetchall
  mda "/bin/sh -c 'cat > %s/m.$$'"
`, host, popPort, user, out))
		if code, text := apps.runStatus("fetchmail", "-f", rc); code != 3 {
			t.Fatalf("fetchmail with a wrong password: exit status %d, want 3 (authentication failed)\n%s", code, text)
		}
		if got := apps.files(out); len(got) != 0 {
			t.Fatalf("fetchmail with a wrong password delivered %d messages", len(got))
		}
	})

	t.Run("getmail", func(t *testing.T) {
		for _, retriever := range []string{"SimplePOP3Retriever", "SimpleIMAPRetriever"} {
			port := map[string]string{"SimplePOP3Retriever": popPort, "SimpleIMAPRetriever": imapPort}[retriever]
			out := apps.mkdir("getmail-" + retriever)
			// An external MDA: getmail will not deliver to a maildir as
			// root, which CI runs as.
			rc := apps.write("getmailrc-"+retriever, 0o600, fmt.Sprintf(`[retriever]
type = %s
server = %s
port = %s
username = %s
password = %s

[destination]
type = MDA_external
path = /bin/sh
arguments = ("-c", "cat > %s/m.$$")
allow_root_commands = true

[options]
read_all = true
delete = false
`, retriever, host, port, user, password, out))
			apps.run(nil, "getmail", "--rcfile", rc, "--getmaildir", apps.mkdir("getmail-state-"+retriever))
			expectMessages(t, "getmail ("+retriever+")", apps.files(out), stored)
		}
	})

	t.Run("mbsync", func(t *testing.T) {
		local := apps.mkdir("mbsync")
		rc := apps.write("mbsyncrc", 0o600, mbsyncRC(host, imapPort, user, password, "SSLType None", local))
		apps.run(nil, "mbsync", "-c", rc, "-a")
		expectMessages(t, "mbsync", apps.files(filepath.Join(local, "INBOX", "cur")), stored)
	})

	t.Run("senders", func(t *testing.T) {
		before := len(dv.relay.messages())
		message := func(subject string) []byte {
			return []byte("From: " + user + "\r\nTo: x@example.net\r\nSubject: " + subject + "\r\n\r\nsent by " + subject + "\r\n.dot line\r\n")
		}
		apps.run(message("curl"), "curl", "-sS", "--user", creds, "--mail-from", user, "--mail-rcpt", "curl@example.net", "-T", "-", "smtp://"+px.smtpStartTLS)
		// msmtp will not send a password over plaintext with "auth on";
		// "auth plain" is the README's advice for such a listener.
		apps.run(message("msmtp"), "msmtp", "--host="+host, "--port="+smtpPort, "--tls=off", "--auth=plain",
			"--user="+user, "--passwordeval=echo "+password, "--from="+user, "msmtp@example.net")
		for _, mech := range []string{"LOGIN", "PLAIN"} {
			apps.run(nil, "swaks", "--server", px.smtpStartTLS, "--auth", mech, "--auth-user", user, "--auth-password", password,
				"--from", user, "--to", "swaks@example.net", "--h-Subject", "swaks "+mech)
		}
		apps.run([]byte("sent by neomutt\n"), "neomutt", "-n", "-F", "/dev/null", "-e",
			fmt.Sprintf("set smtp_url='smtp://%s@%s' smtp_pass='%s' from='%s' ssl_starttls=no ssl_force_tls=no",
				strings.ReplaceAll(user, "@", "%40"), px.smtpStartTLS, password, user),
			"-s", "neomutt", "neomutt@example.net")
		relayed := dv.relay.messages()[before:]
		want := []struct{ to, subject string }{
			{"curl@example.net", "curl"}, {"msmtp@example.net", "msmtp"},
			{"swaks@example.net", "swaks LOGIN"}, {"swaks@example.net", "swaks PLAIN"}, {"neomutt@example.net", "neomutt"},
		}
		if len(relayed) != len(want) {
			t.Fatalf("Dovecot relayed %d messages, want %d", len(relayed), len(want))
		}
		for i, w := range want {
			m := relayed[i]
			if m.from != user || len(m.to) != 1 || m.to[0] != w.to || !bytes.Contains(m.data, []byte("\r\nSubject: "+w.subject+"\r\n")) {
				t.Fatalf("message %d: from %q to %v, want %s's to %s:\n%s", i+1, m.from, m.to, w.subject, w.to, m.data)
			}
		}
	})

	requireNoSecrets(t, px.logs.String(), user, password)
}

// mbsyncRC is an mbsync configuration that pulls INBOX from the proxy's
// IMAP listener at host:port into the maildir local, with tls the
// account's TLS lines.
func mbsyncRC(host, port, user, password, tls, local string) string {
	return fmt.Sprintf(`IMAPAccount proxy
Host %s
Port %s
User %s
Pass "%s"
%s

IMAPStore remote
Account proxy

MaildirStore local
Path %s/
Inbox %s/INBOX

Channel inbox
Far :remote:
Near :local:
Patterns INBOX
Create Near
Sync Pull
SyncState *
`, host, port, user, password, tls, local, local)
}

// mailApps runs mail programs in a temporary directory.
type mailApps struct {
	t   *testing.T
	dir string
}

func (a mailApps) mkdir(name string) string {
	p := filepath.Join(a.dir, name)
	if err := os.MkdirAll(p, 0o700); err != nil {
		a.t.Fatal(err)
	}
	return p
}

func (a mailApps) write(name string, mode os.FileMode, text string) string {
	p := filepath.Join(a.dir, name)
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		a.t.Fatal(err)
	}
	return p
}

// files reads every file in dir.
func (a mailApps) files(dir string) [][]byte {
	entries, err := os.ReadDir(dir)
	if err != nil {
		a.t.Fatal(err)
	}
	var got [][]byte
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			a.t.Fatal(err)
		}
		got = append(got, b)
	}
	return got
}

// run runs a program to success, with stdin, and returns its output.
func (a mailApps) run(stdin []byte, name string, args ...string) string {
	a.t.Helper()
	out, err := a.command(stdin, name, args...).Output()
	if err != nil {
		var stderr []byte
		if e, ok := err.(*exec.ExitError); ok {
			stderr = e.Stderr
		}
		a.t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr)
	}
	return string(out)
}

// runStatus runs a program and returns its exit status and output.
func (a mailApps) runStatus(name string, args ...string) (int, string) {
	a.t.Helper()
	out, err := a.command(nil, name, args...).CombinedOutput()
	if e, ok := err.(*exec.ExitError); ok {
		return e.ExitCode(), string(out)
	} else if err != nil {
		a.t.Fatalf("%s: %v", name, err)
	}
	return 0, string(out)
}

// command makes a program's command, its home the test's own: no
// configuration of the machine's user is read, and what the program
// keeps (fetchmail's UIDs, neomutt's cache) stays in the test.
func (a mailApps) command(stdin []byte, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	a.t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = a.dir, append(os.Environ(), "HOME="+a.mkdir("home"))
	cmd.Stdin = bytes.NewReader(stdin)
	return cmd
}

// expectMessages checks that the messages a program retrieved are the
// ones stored, in any order: the same body, and every header stored,
// whatever headers the program added and whichever line endings it
// writes.
func expectMessages(t *testing.T, who string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s retrieved %d messages, want %d", who, len(got), len(want))
	}
	used := make([]bool, len(got))
next:
	for i, w := range want {
		for j, g := range got {
			if !used[j] && sameMessage(g, w) {
				used[j] = true
				continue next
			}
		}
		t.Fatalf("%s did not retrieve message %d as stored; what it retrieved begins:\n%.400s", who, i+1, got[0])
	}
}

func sameMessage(got, want []byte) bool {
	lf := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }
	gotHead, gotBody, ok1 := bytes.Cut(lf(got), []byte("\n\n"))
	wantHead, wantBody, ok2 := bytes.Cut(lf(want), []byte("\n\n"))
	if !ok1 || !ok2 || !bytes.Equal(gotBody, wantBody) {
		return false
	}
	have := map[string]bool{}
	for _, h := range strings.Split(string(gotHead), "\n") {
		have[h] = true
	}
	for _, h := range strings.Split(string(wantHead), "\n") {
		if !have[h] {
			return false
		}
	}
	return true
}

func splitHostPort(t *testing.T, addr string) (host, port string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

// requireNoSecrets fails the test if the proxy's debug log, protocol
// trace included, holds the password in any form a client sends it (as is
// in LOGIN and PASS, in SASL PLAIN, in AUTH LOGIN's base64) or a token.
func requireNoSecrets(t *testing.T, logs, user, password string) {
	t.Helper()
	if !strings.Contains(logs, `"dir":"client->proxy"`) {
		t.Fatal("no protocol trace in the log: the checks below would prove nothing")
	}
	b64 := base64.StdEncoding.EncodeToString
	for _, secret := range []string{password, b64([]byte(password)), b64([]byte("\x00" + user + "\x00" + password))} {
		if strings.Contains(logs, secret) {
			t.Fatalf("the log holds a password: %q", secret)
		}
	}
	if tok := regexp.MustCompile(`mock-[0-9a-f]{16,}`).FindString(logs); tok != "" {
		t.Fatalf("the log holds a token: %q", tok)
	}
}

// Jakarta Mail (JavaMail), the library most Java business apps poll and
// send with, through the proxy to a real Dovecot with its default
// settings: testdata/JakartaMailClient.java logs in over IMAP, appends a
// message and reads it back, is refused a wrong password, reads the
// message over POP3 and sends one over SMTP; here the message it sent is
// checked as Dovecot relayed it.
func TestDovecotJakartaMail(t *testing.T) {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Fatal("this test needs Java: apt-get install default-jdk-headless (bash .ci/run does)")
	}
	const jars = "/usr/share/java/jakarta-mail.jar:/usr/share/java/jakarta-activation.jar"
	for _, jar := range strings.Split(jars, ":") {
		if _, err := os.Stat(jar); err != nil {
			t.Fatalf("this test needs Jakarta Mail: apt-get install libjakarta-mail-java (bash .ci/run does): %v", err)
		}
	}
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{})
	const user, password = dovecotUser, "correct horse 9"
	// A single-file program: java compiles it in memory.
	runClient(t, px.logs, java, "-cp", jars, "testdata/JakartaMailClient.java", px.imap, px.pop, px.smtpStartTLS, user, password)
	requireSentBy(t, dv.relay.messages(), user, "jakarta")
	requireNoSecrets(t, px.logs.String(), user, password)
}

// .NET's System.Net.Mail.SmtpClient (on Mono), which Windows business
// apps send their notifications with, through the proxy to a real
// Dovecot: it logs in (AUTH LOGIN) and sends, and a wrong password is
// refused with an SmtpException.
func TestDovecotDotNetSmtp(t *testing.T) {
	client := buildDotNetSmtpClient(t)
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{})
	const user, password = dovecotUser, "correct horse 9"
	runClient(t, px.logs, "mono", client, "plain", px.smtpStartTLS, user, password)
	requireSentBy(t, dv.relay.messages(), user, "dotnet")
	requireNoSecrets(t, px.logs.String(), user, password)
}

// Node.js mail libraries, as Node apps and automation tools (n8n's IMAP
// and e-mail nodes) read and send with, through the proxy to a real
// Dovecot: ImapFlow appends, finds and reads back a message, node-imap
// reads it too, Nodemailer sends; a wrong password is refused to each.
func TestDovecotNodeClients(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("this test needs Node.js 20 or later (bash .ci/run installs it when missing)")
	}
	if _, err := os.Stat("testdata/node/node_modules/imapflow"); err != nil {
		t.Fatal("this test needs its npm packages: run npm ci in engine/testdata/node (bash .ci/run does)")
	}
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{})
	const user, password = dovecotUser, "correct horse 9"
	runClient(t, px.logs, node, "testdata/node/node_clients.mjs", px.imap, px.smtpStartTLS, user, password)
	requireSentBy(t, dv.relay.messages(), user, "nodemailer")
	requireNoSecrets(t, px.logs.String(), user, password)
}

// buildDotNetSmtpClient compiles testdata/DotNetSmtpClient.cs with Mono's
// C# compiler and returns the program's path.
func buildDotNetSmtpClient(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"mcs", "mono"} {
		if _, err := exec.LookPath(name); err != nil {
			t.Fatalf("this test needs Mono: apt-get install mono-mcs (bash .ci/run does): %v", err)
		}
	}
	exe := filepath.Join(t.TempDir(), "DotNetSmtpClient.exe")
	// 618: SmtpClient is marked obsolete, and is what the apps use.
	if out, err := exec.Command("mcs", "-nologo", "-nowarn:618", "-r:System.dll", "-out:"+exe, "testdata/DotNetSmtpClient.cs").CombinedOutput(); err != nil {
		t.Fatalf("mcs: %v\n%s", err, out)
	}
	return exe
}

// The script languages help desks and CRMs poll mailboxes with, through
// the proxy to a real Dovecot: PHP's imap extension (the UW c-client
// library) over IMAP and POP3, Perl's Mail::IMAPClient, Net::POP3 and
// Net::SMTP, and Ruby's net-imap, net-pop and net-smtp. Each script
// appends a message, finds it and reads it back, is refused a wrong
// password, and checks each answer; here the messages Perl and Ruby sent
// are checked as Dovecot relayed them.
func TestDovecotScriptClients(t *testing.T) {
	php, err := exec.LookPath("php")
	if err != nil {
		t.Fatal("this test needs PHP: apt-get install php-cli php-imap (bash .ci/run does)")
	}
	perl, err := exec.LookPath("perl")
	if err != nil {
		t.Fatal("this test needs Perl: apt-get install perl libmail-imapclient-perl libauthen-sasl-perl (bash .ci/run does)")
	}
	ruby, err := exec.LookPath("ruby")
	if err != nil {
		t.Fatal("this test needs Ruby: apt-get install ruby (bash .ci/run does)")
	}
	dv, _ := startDovecotWithIdP(t)
	px := startProxyFor(t, dv, Options{})
	const user, password = dovecotUser, "correct horse 9"
	runClient(t, px.logs, php, "testdata/php_imap_client.php", px.imap, px.pop, user, password)
	runClient(t, px.logs, perl, "testdata/perl_clients.pl", px.imap, px.pop, px.smtpStartTLS, user, password)
	runClient(t, px.logs, ruby, "testdata/ruby_clients.rb", px.imap, px.pop, px.smtpStartTLS, user, password)
	requireSentBy(t, dv.relay.messages(), user, "perl", "ruby")
	requireNoSecrets(t, px.logs.String(), user, password)
}

// runClient runs a client program of testdata through the proxy (whose log is proxyLog): it
// checks every answer itself and says "all checks passed" when all held.
func runClient(t *testing.T, proxyLog fmt.Stringer, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "all checks passed") {
		t.Fatalf("%s %s: %v\n%s\nproxy log:\n%s", name, strings.Join(args, " "), err, out, proxyLog.String())
	}
}

// requireSentBy checks that Dovecot relayed one message from each client
// named, in order, as the client programs send it: from user to
// NAME@example.net, with the subject "sent by NAME" and a dot line.
func requireSentBy(t *testing.T, relayed []relayed, user string, names ...string) {
	t.Helper()
	if len(relayed) != len(names) {
		t.Fatalf("Dovecot relayed %d messages, want one from each of %v: %q", len(relayed), names, relayed)
	}
	for i, name := range names {
		if m := relayed[i]; m.from != user || len(m.to) != 1 || m.to[0] != name+"@example.net" ||
			!bytes.Contains(m.data, []byte("\r\nSubject: sent by "+name+"\r\n")) || !bytes.Contains(m.data, []byte("\r\n\r\nsent\r\n.dot line\r\n")) {
			t.Fatalf("message %d relayed: from %q to %v, want %s's:\n%s", i+1, m.from, m.to, name, m.data)
		}
	}
}
