package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.config")
	os.WriteFile(path, []byte(`[IMAP-1993]
server_address = outlook.office365.com
server_port = 993
local_address = 127.0.0.1

[Imap-1994]
server_address = x
server_port = 993

[IMAP-1995x]
server_address = x

[POP-1996]
server_address = outlook.office365.com
server_port = 995

[SMTP-1588]
server_address = smtp.office365.com
server_port = 587
local_address = localhost
local_certificate_path = `+filepath.Join(dir, "missing.pem")+`
local_key_path = `+filepath.Join(dir, "missing.key")+`
local_tls_min_version = 1.0

[SMTP-1587]
server_address = smtp.office365.com
server_port = 587
server_starttls = True
local_certificate_path = `+filepath.Join(dir, "missing.pem")+`
local_key_path = `+filepath.Join(dir, "missing.key")+`

[POP-1997]
server_address = outlook.office365.com
server_port = 995
allowed_clients = 127.0.0.1, ::1

[good@example.com]
token_url = https://t
oauth2_scope = s
oauth2_flow = client_credentials
client_id = c
client_secret = s

[sample@example.com]
token_url = https://t
oauth2_scope = s
oauth2_flow = client_credentials
client_id = *** your client id here ***
client_secret = *** your client secret here ***

[typo@example.com]
token_url = https://t
oauth2_scope = s
oauth2_flow = client-credentials
client_id = c

[half@example.com]
oauth2_flow = device

[@example.com]
token_url = https://t
`), 0o600)
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r := Check(cfg)
	all := strings.Join(r.Errors, "\n") + "\n" + strings.Join(r.Warnings, "\n")
	for _, want := range []string{
		"[Imap-1994] looks like a server section but is ignored",
		"[IMAP-1995x] looks like a server section but is ignored",
		`oauth2_flow "client-credentials" is not supported; use one of client_credentials, authorization_code`,
		"account half@example.com: set token_url, oauth2_scope, client_id",
		"[SMTP-1587]: local_certificate_path / local_key_path",
		"[@example.com] is a catch-all section",
		"[POP-1996]: plaintext on local_address ::, which other machines may reach",
		"[SMTP-1588]: local_tls_min_version lets clients use TLS 1.0",
		"account sample@example.com: client_id is still the sample configuration's placeholder",
		"account sample@example.com: client_secret is still the sample configuration's placeholder",
	} {
		if !strings.Contains(all, strings.Replace(want, "account half@example.com: set", "entry for account half@example.com: set", 1)) {
			t.Errorf("missing %q in:\n%s", want, all)
		}
	}
	if len(r.Servers) != 5 || !strings.Contains(r.Servers[0], "IMAP-1993: 127.0.0.1:1993 (plaintext) -> outlook.office365.com:993 (TLS)") ||
		!strings.Contains(r.Servers[3], "(STARTTLS)") || !strings.HasSuffix(r.Servers[4], "(TLS); clients from 127.0.0.1, ::1 only") {
		t.Errorf("servers: %q", r.Servers)
	}
	if len(r.Accounts) != 2 || r.Accounts[0] != "good@example.com: client_credentials" {
		t.Errorf("accounts: %q", r.Accounts)
	}
	for _, w := range r.Warnings {
		if strings.Contains(w, "IMAP-1993]") || strings.Contains(w, "[SMTP-1587]") || strings.Contains(w, "[SMTP-1588]: plaintext") || strings.Contains(w, "[POP-1997]") {
			t.Errorf("a section on loopback, with TLS, or for this machine's clients only, was warned about: %q", w)
		}
	}
	for host, want := range map[string]bool{"localhost": true, "LOCALHOST": true, "127.0.0.1": true, "127.1.2.3": true, "::1": true, "[::1]": true,
		"::": false, "0.0.0.0": false, "192.0.2.1": false, "mail.example.com": false} {
		if got := loopbackName(host); got != want {
			t.Errorf("loopbackName(%q) = %v, want %v", host, got, want)
		}
	}
}
