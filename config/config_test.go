package config

import (
	"crypto/tls"
	"net/netip"
	"strings"
	"testing"
)

func TestIssueSampleLoads(t *testing.T) {
	cfg, err := Load("testdata/issue2-o365-ccg.config")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Servers) != 2 {
		t.Fatalf("servers %d", len(cfg.Servers))
	}
	pop, imap := cfg.Servers[0], cfg.Servers[1]
	if pop.Protocol != POP || pop.LocalPort != 1995 || pop.ListenAddr() != "127.0.0.1:1995" || pop.UpstreamAddr() != "outlook.office365.com:995" {
		t.Fatalf("pop %+v", pop)
	}
	if imap.Protocol != IMAP || imap.LocalPort != 1993 || imap.ServerPort != 993 {
		t.Fatalf("imap %+v", imap)
	}
	if !cfg.Global.DeleteAccountTokenOnPasswordError || cfg.Global.EncryptClientSecretOnFirstUse {
		t.Fatalf("global %+v", cfg.Global)
	}
	a, err := cfg.Account("app@yourdomain.com")
	if err != nil {
		t.Fatal(err)
	}
	if a.Flow() != "client_credentials" || a.Get("client_secret") != "YYYYY" || a.Get("oauth2_scope") != "https://outlook.office365.com/.default" {
		t.Fatalf("account %v %v", a.Flow(), a.Get("client_secret"))
	}
	if _, err := cfg.Account("App@yourdomain.com"); err == nil {
		t.Fatal("account names must match case-sensitively")
	}
}

func TestDialect(t *testing.T) {
	src := "\ufeff# a comment\n; another\n[DEFAULT]\nlocal_address = ::1\n\n[IMAP-1143]\nServer_Address: imap.example.com\nserver_port=993\n" +
		"[u@x]\ndocumentation = first line\n    second line\n\n    after a blank\nclient_secret = a ; not a comment %s\n" +
		"  client_id = indented key\n"
	f, err := Parse(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Lookup("IMAP-1143", "server_address"); v != "imap.example.com" {
		t.Fatalf("colon delimiter / key case: %q", v)
	}
	if v, _ := f.Lookup("IMAP-1143", "local_address"); v != "::1" {
		t.Fatalf("DEFAULT fallback: %q", v)
	}
	if v, _ := f.Lookup("u@x", "documentation"); v != "first line\nsecond line\n\nafter a blank" {
		t.Fatalf("multi-line: %q", v)
	}
	// No inline comments, no interpolation; and, as in configparser, an
	// indented "key = value" line continues the value above it.
	if v, _ := f.Lookup("u@x", "client_secret"); v != "a ; not a comment %s\nclient_id = indented key" {
		t.Fatalf("inline text kept: %q", v)
	}
	if _, ok := f.Lookup("u@x", "client_id"); ok {
		t.Fatal("an indented line became a key")
	}
	cfg, err := FromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Servers[0].ListenAddr() != "[::1]:1143" {
		t.Fatalf("listen %q", cfg.Servers[0].ListenAddr())
	}
}

func TestErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"duplicate key", "[s]\na = 1\nA = 2\n", "line 3: key \"a\" appears more than once in section [s]"},
		{"duplicate section", "[s]\n[t]\n[s]\n", "line 3: section [s] appears more than once"},
		{"no header", "a = 1\n", "line 1: text before the first [section] header"},
		{"no delimiter", "[s]\njust words\n", "line 2: expected \"key = value\""},
		{"bad port", "[IMAP-1993]\nserver_address = x\nserver_port = 99999\n", "server_port \"99999\" must be a number"},
		{"port not a number", "[IMAP-1993]\nserver_address = x\nserver_port = imaps\n", "must be a number"},
		{"no server address", "[POP-1995]\nserver_port = 995\n", "[POP-1995]: server_address is missing"},
		{"local port zero", "[IMAP-0]\nserver_address = x\nserver_port = 993\n", "local port must be between 1 and 65535"},
		{"bad boolean", "[emailproxy]\nallow_catch_all_accounts = maybe\n", "allow_catch_all_accounts: not a boolean"},
		{"local starttls without cert", "[SMTP-1587]\nserver_address = x\nserver_port = 587\nlocal_starttls = True\n", "needs both local_certificate_path and local_key_path"},
		{"TLS version unknown", "[SMTP-1587]\nserver_address = x\nserver_port = 587\nlocal_certificate_path = c\nlocal_key_path = k\nlocal_tls_min_version = 1\n", "local_tls_min_version \"1\" must be 1.0, 1.1, 1.2 or 1.3"},
		{"allowed clients not a network", "[IMAP-1993]\nserver_address = x\nserver_port = 993\nallowed_clients = 10.0.0.0/8, office\n", "allowed_clients: \"office\" is neither an address nor a network"},
		{"allowed clients empty list", "[IMAP-1993]\nserver_address = x\nserver_port = 993\nallowed_clients = ,\n", "allowed_clients \",\" names no address or network"},
		{"TLS version without cert", "[SMTP-1587]\nserver_address = x\nserver_port = 587\nlocal_tls_min_version = 1.0\n", "local_tls_min_version needs both local_certificate_path and local_key_path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(strings.NewReader(tc.src))
			if err == nil {
				_, err = FromFile(f)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSMTPAndBooleans(t *testing.T) {
	src := "[SMTP-1587]\nserver_address = smtp.office365.com\nserver_port = 587\nstarttls = yes\n" +
		"[IMAP-1993]\nserver_address = x\nserver_port = 993\n[emailproxy]\nallow_catch_all_accounts = ON\n"
	f, err := Parse(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := FromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Servers) != 2 || cfg.Servers[0].Protocol != SMTP || !cfg.Servers[0].ServerStartTLS {
		t.Fatalf("servers %+v", cfg.Servers[0])
	}
	if cfg.Servers[1].ServerStartTLS {
		t.Fatal("server_starttls defaults to false")
	}
	if !cfg.Global.AllowCatchAllAccounts {
		t.Fatal("ON is true")
	}
}

func TestCatchAll(t *testing.T) {
	src := "[@example.com]\ntoken_url = https://domain\nclient_id = d\n[@]\ntoken_url = https://any\noauth2_scope = s\n" +
		"[own@example.com]\nclient_id = own\n"
	for _, allow := range []bool{false, true} {
		f, _ := Parse(strings.NewReader(src))
		cfg, err := FromFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Global.AllowCatchAllAccounts = allow
		own, err := cfg.Account("own@example.com")
		if err != nil {
			t.Fatal(err)
		}
		other, otherErr := cfg.Account("other@example.com")
		far, farErr := cfg.Account("x@elsewhere.org")
		if !allow {
			if otherErr == nil || farErr == nil || own.Get("token_url") != "" {
				t.Fatalf("catch-all used while disabled")
			}
			continue
		}
		if own.Get("client_id") != "own" || own.Get("token_url") != "https://domain" || own.Get("oauth2_scope") != "s" {
			t.Fatalf("own chain: %q %q %q", own.Get("client_id"), own.Get("token_url"), own.Get("oauth2_scope"))
		}
		if otherErr != nil || other.Get("client_id") != "d" || other.Section != "@example.com" {
			t.Fatalf("domain catch-all: %v", otherErr)
		}
		if farErr != nil || far.Get("token_url") != "https://any" || far.Get("client_id") != "" {
			t.Fatalf("global catch-all: %v", farErr)
		}
	}
}

func TestFlowForcedByPermissionURL(t *testing.T) {
	f, _ := Parse(strings.NewReader("[a@x]\npermission_url = https://p\noauth2_flow = client_credentials\n[b@x]\npermission_url = https://p\noauth2_flow = device\n"))
	cfg, _ := FromFile(f)
	a, _ := cfg.Account("a@x")
	b, _ := cfg.Account("b@x")
	if a.Flow() != "authorization_code" || b.Flow() != "device" {
		t.Fatalf("%q %q", a.Flow(), b.Flow())
	}
}

// local_tls_min_version: TLS 1.2 unless a section names another version.
func TestLocalTLSMinVersion(t *testing.T) {
	for _, tc := range []struct {
		line string
		want uint16
	}{
		{"", tls.VersionTLS12},
		{"local_tls_min_version = 1.0\n", tls.VersionTLS10},
		{"local_tls_min_version = 1.1\n", tls.VersionTLS11},
		{"local_tls_min_version =  1.3 \n", tls.VersionTLS13},
	} {
		f, err := Parse(strings.NewReader("[SMTP-1587]\nserver_address = x\nserver_port = 587\nlocal_certificate_path = c\nlocal_key_path = k\n" + tc.line))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := FromFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Servers[0].LocalTLSMin; got != tc.want {
			t.Errorf("%q: LocalTLSMin = %#x, want %#x", tc.line, got, tc.want)
		}
	}
}

func TestAllowedClients(t *testing.T) {
	for _, c := range []struct {
		value        string
		in, out      []string
		loopbackOnly bool
	}{
		{"", nil, nil, false}, // every client: no networks to check
		{"10.0.0.0/8, 192.168.1.7, 2001:db8::/32", []string{"10.1.2.3", "192.168.1.7", "::ffff:10.9.9.9", "2001:db8::1"}, []string{"192.168.1.8", "11.0.0.1", "2001:db9::1"}, false},
		{"127.0.0.1, ::1", []string{"127.0.0.1", "::1"}, []string{"127.0.0.2", "10.0.0.1"}, true},
		{"127.0.0.0/8", []string{"127.9.9.9"}, []string{"128.0.0.1"}, true},
		{"127.0.0.0/7", nil, nil, false},
		{"::/0", nil, nil, false},
	} {
		f, err := Parse(strings.NewReader("[IMAP-1993]\nserver_address = x\nserver_port = 993\nallowed_clients = " + c.value + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := FromFile(f)
		if err != nil {
			t.Fatalf("%q: %v", c.value, err)
		}
		srv := cfg.Servers[0]
		nets, err := srv.ClientNetworks()
		if err != nil {
			t.Fatal(err)
		}
		if (c.value == "") != (nets == nil) {
			t.Fatalf("%q: networks %v", c.value, nets)
		}
		for _, a := range c.in {
			if !InNetworks(nets, netip.MustParseAddr(a)) {
				t.Errorf("%q: %s refused", c.value, a)
			}
		}
		for _, a := range c.out {
			if InNetworks(nets, netip.MustParseAddr(a)) {
				t.Errorf("%q: %s allowed", c.value, a)
			}
		}
		if got := srv.LoopbackClientsOnly(); got != c.loopbackOnly {
			t.Errorf("%q: loopback only %v, want %v", c.value, got, c.loopbackOnly)
		}
	}
}
