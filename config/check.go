package config

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
)

// Report is what Check found: a summary for the operator, warnings
// (things that are probably mistakes but do not stop the proxy) and
// errors (things that will fail).
type Report struct {
	Servers  []string // "IMAP-1993: 127.0.0.1:1993 -> outlook.office365.com:993 (TLS)"
	Accounts []string // "a@example.com: client_credentials"
	Warnings []string
	Errors   []string
}

// almostServer matches a section name meant to be a server section:
// emailproxy.py (and this proxy) take only [IMAP-port], [POP-port] and
// [SMTP-port] exactly, and silently ignore anything else.
var almostServer = regexp.MustCompile(`(?i)^\s*(imap|pop3?|smtp)\s*[-_ ]?\s*\d`)

// Check validates what Load does not check until a login needs it:
// account sections (keys, flow), certificate and key files, and section
// names that look like a mistyped server section.
func Check(cfg *Config) Report {
	var r Report
	for _, s := range cfg.Servers {
		up := "TLS"
		if s.ServerStartTLS {
			up = "STARTTLS"
		}
		local := "plaintext"
		if s.LocalCertPath != "" && s.LocalKeyPath != "" {
			local = "TLS"
			if s.LocalStartTLS {
				local = "STARTTLS"
			}
			if _, err := tls.LoadX509KeyPair(s.LocalCertPath, s.LocalKeyPath); err != nil {
				r.Errors = append(r.Errors, fmt.Sprintf("[%s]: local_certificate_path / local_key_path: %v", s.Section, err))
			}
			if s.LocalTLSMin != 0 && s.LocalTLSMin < tls.VersionTLS12 {
				r.Warnings = append(r.Warnings, fmt.Sprintf("[%s]: local_tls_min_version lets clients use %s: for a legacy app on this machine or a trusted network only",
					s.Section, tls.VersionName(s.LocalTLSMin)))
			}
		} else if !loopbackName(s.LocalAddress) && !s.LoopbackClientsOnly() {
			r.Warnings = append(r.Warnings, fmt.Sprintf("[%s]: plaintext on local_address %s, which other machines may reach: their passwords would cross the network unencrypted; %s",
				s.Section, s.LocalAddress, ExposedAdvice))
		}
		line := fmt.Sprintf("%s: %s (%s) -> %s (%s)", s.Section, s.ListenAddr(), local, s.UpstreamAddr(), up)
		if s.AllowedClients != "" {
			line += "; clients from " + s.AllowedClients + " only"
		}
		r.Servers = append(r.Servers, line)
	}
	for _, sec := range cfg.File.Sections {
		name := sec.Name
		switch {
		case serverSectionRE.MatchString(name):
		case almostServer.MatchString(name):
			r.Warnings = append(r.Warnings, fmt.Sprintf("[%s] looks like a server section but is ignored: write [IMAP-port], [POP-port] or [SMTP-port] exactly", name))
		case strings.Contains(name, "@"):
			r.checkAccount(cfg, name)
		}
	}
	if len(cfg.Servers) == 0 {
		r.Errors = append(r.Errors, "no server sections: add an [IMAP-port], [POP-port] or [SMTP-port] section")
	}
	return r
}

func (r *Report) checkAccount(cfg *Config, name string) {
	if strings.HasPrefix(name, "@") {
		if !cfg.Global.AllowCatchAllAccounts {
			r.Warnings = append(r.Warnings, fmt.Sprintf("[%s] is a catch-all section, used only with allow_catch_all_accounts = True", name))
		}
		return
	}
	a, err := cfg.Account(name)
	if err == nil {
		err = a.Validate()
	}
	if err != nil {
		r.Errors = append(r.Errors, err.Error())
		return
	}
	r.Accounts = append(r.Accounts, fmt.Sprintf("%s: %s", name, a.Flow()))
	for _, k := range a.Placeholders() {
		r.Warnings = append(r.Warnings, fmt.Sprintf("account %s: %s is still the sample configuration's placeholder: put your app registration's value there", name, k))
	}
	files := []string{"jwt_certificate_path", "jwt_key_path"}
	if a.Flow() == "service_account" && a.Get("client_id") == "file" {
		files = append(files, "client_secret") // the key file's path
	}
	for _, k := range files {
		if p := a.Get(k); p != "" {
			if f, err := os.Open(p); err != nil {
				r.Errors = append(r.Errors, fmt.Sprintf("account %s: %s: %v", name, k, err))
			} else {
				f.Close()
			}
		}
	}
}

// ExposedAdvice is what to do about a plaintext section other machines
// may reach (said by Check, and by the proxy when it listens).
const ExposedAdvice = "set local_address = 127.0.0.1 if the apps run on this machine, or give the section local_certificate_path and local_key_path"

// loopbackName reports whether a local_address names this machine only.
func loopbackName(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && a.IsLoopback()
}
