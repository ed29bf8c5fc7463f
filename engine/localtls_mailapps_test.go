package engine

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/bench/mock"
)

// Mail programs nobody here wrote, with TLS to the proxy's own listeners
// (a certificate for localhost from a CA they are told to trust), set up
// as the README says for the apps that insist on TLS: curl over implicit
// TLS and STARTTLS/STLS for all three protocols, fetchmail's STLS with
// its certificate check, mbsync's STARTTLS, msmtp's STARTTLS with "auth
// on", .NET's SmtpClient with EnableSsl (STARTTLS), ImapFlow over
// implicit TLS and Nodemailer over STARTTLS, and PHP's imap_open over
// implicit TLS. Each must log in and get
// the mailbox's message, or send one.
func TestLocalTLSMailApps(t *testing.T) {
	for _, name := range []string{"curl", "fetchmail", "mbsync", "msmtp", "php", "mono", "node"} {
		if _, err := exec.LookPath(name); err != nil {
			t.Fatalf("this test needs %s: apt-get install curl fetchmail isync msmtp php-cli php-imap mono-mcs nodejs (bash .ci/run does)", name)
		}
	}
	pc := newProxyCert(t)
	// A section for legacy apps that offer TLS 1.0 only.
	legacy := []serverSpec{
		{name: "smtp-starttls-tls10", proto: "SMTP", upstream: func(up *mock.Upstream) string { return up.SMTPAddr }, keys: pc.keys(true) + "\nlocal_tls_min_version = 1.0"},
	}
	env := startEnv(t, envOptions{servers: append(tlsServers(pc), legacy...)})
	apps := mailApps{t: t, dir: t.TempDir()}
	caFile := apps.write("ca.pem", 0o600, string(pc.ca.PEM))
	const user, password = testAccount, "correct horse 9"
	creds := user + ":" + password
	port := func(name string) string { _, p := splitHostPort(t, env.addrs[name]); return p }
	// The certificate names localhost: the clients connect by that name.
	url := func(scheme, name, path string) string {
		return scheme + "://localhost:" + port(name) + path
	}

	t.Run("curl", func(t *testing.T) {
		for _, u := range []string{url("pop3s", "pop3s", "/1"), url("pop3", "pop3-stls", "/1"),
			url("imaps", "imaps", "/INBOX;MAILINDEX=1"), url("imap", "imap-starttls", "/INBOX;MAILINDEX=1")} {
			if out := apps.run(nil, "curl", "-sS", "--ssl-reqd", "--cacert", caFile, "--user", creds, u); !strings.Contains(out, "hello") {
				t.Fatalf("curl %s: %q", u, out)
			}
		}
		for _, u := range []string{url("smtps", "smtps", ""), url("smtp", "smtp-starttls", "")} {
			apps.run([]byte("Subject: curl over TLS\r\n\r\nsent\r\n"), "curl", "-sS", "--ssl-reqd", "--cacert", caFile, "--user", creds,
				"--mail-from", user, "--mail-rcpt", "curl@example.net", "-T", "-", u)
		}
	})

	t.Run("fetchmail", func(t *testing.T) {
		out := apps.mkdir("fetchmail")
		rc := apps.write("fetchmailrc", 0o600, fmt.Sprintf(`set no syslog
poll localhost service %s protocol POP3 auth password
  user "%s" there password "%s" sslcertck sslcertfile "%s" keep fetchall
  mda "/bin/sh -c 'cat > %s/m.$$'"
`, port("pop3-stls"), user, password, caFile, out))
		apps.run(nil, "fetchmail", "-f", rc)
		if got := apps.files(out); len(got) != 1 || !strings.Contains(string(got[0]), "hello") {
			t.Fatalf("fetchmail over STLS delivered %q", got)
		}
	})

	t.Run("mbsync", func(t *testing.T) {
		local := apps.mkdir("mbsync")
		rc := apps.write("mbsyncrc", 0o600, mbsyncRC("localhost", port("imap-starttls"), user, password,
			"SSLType STARTTLS\nCertificateFile "+caFile, local))
		apps.run(nil, "mbsync", "-c", rc, "-a")
		// Unseen on the server: mbsync files it under new.
		if got := apps.files(local + "/INBOX/new"); len(got) != 1 || !strings.Contains(string(got[0]), "hello") {
			t.Fatalf("mbsync over STARTTLS synced %q", got)
		}
	})

	t.Run("msmtp", func(t *testing.T) {
		apps.run([]byte("Subject: msmtp over TLS\r\n\r\nsent\r\n"), "msmtp", "--host=localhost", "--port="+port("smtp-starttls"),
			"--tls=on", "--tls-starttls=on", "--tls-trust-file="+caFile, "--auth=on",
			"--user="+user, "--passwordeval=echo "+password, "--from="+user, "msmtp@example.net")
	})

	t.Run("dotnet", func(t *testing.T) {
		// SmtpClient with EnableSsl, as apps set up for Office 365's
		// port 587 have it: STARTTLS, the proxy's certificate pinned.
		// Mono offers only TLS 1.0 (the old .NET default): refused, as
		// Exchange Online refuses it, and logged so; served by a section
		// with local_tls_min_version = 1.0.
		client := buildDotNetSmtpClient(t)
		runClient(t, env.logs, "mono", client, "starttls-refused", "localhost:"+port("smtp-starttls"), user, password, pc.certPath)
		if !strings.Contains(env.logs.String(), "client offered only unsupported versions: [301] (the client offers only TLS versions older than this section takes") {
			t.Fatal("the proxy's log does not say why SmtpClient's TLS 1.0 handshake failed")
		}
		runClient(t, env.logs, "mono", client, "starttls", "localhost:"+port("smtp-starttls-tls10"), user, password, pc.certPath)
	})

	t.Run("node", func(t *testing.T) {
		if _, err := os.Stat("testdata/node/node_modules/imapflow"); err != nil {
			t.Fatal("this test needs its npm packages: run npm ci in engine/testdata/node (bash .ci/run does)")
		}
		runClient(t, env.logs, "node", "testdata/node/node_tls_clients.mjs", "localhost:"+port("imaps"), "localhost:"+port("smtp-starttls"), user, password, caFile)
	})

	t.Run("php", func(t *testing.T) {
		// c-client over implicit TLS (/ssl), checking the certificate
		// against OpenSSL's trust, which SSL_CERT_FILE names. (Its
		// STARTTLS offers only TLS 1.0, which the proxy refuses, as
		// servers on today's OpenSSL defaults do; and even a section
		// that allows TLS 1.0 does not help, since Debian's OpenSSL then
		// refuses the server's TLS 1.0 signature itself: the README says
		// to use /ssl, and the last checks here keep its reason true.)
		open := func(mailbox string) (string, error) {
			script := fmt.Sprintf(`$m = imap_open(%q, %q, %q, 0, 0);
if ($m === false) { fwrite(STDERR, implode("\n", imap_errors() ?: [])); exit(1); }
echo imap_body($m, 1);`, mailbox, user, password)
			cmd := apps.command(nil, "php", "-r", script)
			cmd.Env = append(cmd.Env, "SSL_CERT_FILE="+caFile)
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		if out, err := open("{localhost:" + port("imaps") + "/imap/ssl}INBOX"); err != nil || !strings.Contains(out, "hello") {
			t.Fatalf("php imap_open over TLS: %v\n%s", err, out)
		}
		if out, err := open("{localhost:" + port("imap-starttls") + "/imap}INBOX"); err == nil || !strings.Contains(out, "SSL negotiation failed") {
			t.Fatalf("php imap_open over STARTTLS (TLS 1.0): %v\n%s", err, out)
		}
		if !strings.Contains(env.logs.String(), "client offered only unsupported versions: [301] (the client offers only TLS versions older than this section takes") {
			t.Fatal("the proxy's log does not say why c-client's STARTTLS failed")
		}
	})

	sent := map[string]bool{}
	for _, m := range env.up.SMTPMessages() {
		sent[m.To[0]] = true
	}
	if !sent["curl@example.net"] || !sent["msmtp@example.net"] || !sent["dotnet@example.net"] || !sent["nodemailer@example.net"] || len(env.up.SMTPMessages()) != 5 {
		t.Fatalf("the mock accepted %d messages, want curl's two and one each from msmtp, SmtpClient and Nodemailer: %+v", len(env.up.SMTPMessages()), env.up.SMTPMessages())
	}
	requireNoSecrets(t, env.logs.String(), user, password)
}
