package smtp

import (
	"bytes"
	"strings"
	"testing"
)

// The greeting and the EHLO keywords come from the upstream server:
// whatever it sends (as the dialer reads it: lines without their line
// ends), the greeting made from them must be one 220 line, HELO must be
// answered with one 250 line, and every EHLO answer must be a well-formed
// multi-line 250 reply that ends only at its end and offers AUTH and
// STARTTLS only as the proxy does (once each, and STARTTLS only when a
// local certificate lets the proxy do it).
func FuzzProfile(f *testing.F) {
	f.Add([]byte("mx.example.com ESMTP ready"), "SIZE 35882577\n8BITMIME\nAUTH LOGIN XOAUTH2\nAUTH=LOGIN\nSTARTTLS\nPIPELINING")
	f.Add([]byte(""), "")
	f.Add([]byte("  "), "starttls \n\nauth\tplain\nAuth")
	f.Fuzz(func(t *testing.T, greeting []byte, ehlo string) {
		if bytes.ContainsAny(greeting, "\r\n") || strings.Contains(ehlo, "\r") {
			return // the dialer reads lines: none can hold a line end
		}
		var caps []string
		if ehlo != "" {
			caps = strings.Split(ehlo, "\n")
		}
		p := NewProfile(greeting, caps)
		if g := p.Greeting; !bytes.HasPrefix(g, []byte("220 ")) || !bytes.HasSuffix(g, []byte("\r\n")) || bytes.Count(g, []byte("\n")) != 1 {
			t.Fatalf("greeting %q", g)
		}
		if helo, _, _ := run(New(p, TLS{}, DefaultLimits), "HELO c\r\n"); !strings.HasPrefix(helo, "250 ") || strings.Count(helo, "\n") != 1 {
			t.Fatalf("HELO answer %q", helo)
		}
		for _, tls := range []TLS{{}, {Offered: true, Required: true}, {Offered: true, Active: true, Required: true}} {
			out, _, _ := run(New(p, tls, DefaultLimits), "EHLO c\r\n")
			lines := strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n")
			auth, starttls := 0, 0
			for i, l := range lines {
				last := i == len(lines)-1
				if strings.Contains(l, "\n") || (last && !strings.HasPrefix(l, "250 ")) || (!last && !strings.HasPrefix(l, "250-")) {
					t.Fatalf("EHLO answer line %d %q is not where it belongs: %q", i, l, out)
				}
				if i == 0 {
					continue // the domain
				}
				words := strings.Fields(l[4:])
				if len(words) == 0 {
					t.Fatalf("EHLO answer line %d is blank: %q", i, out)
				}
				word := strings.ToUpper(words[0])
				switch {
				case word == "AUTH" || strings.HasPrefix(word, "AUTH="):
					auth++
				case word == "STARTTLS":
					starttls++
				}
			}
			wantAuth, wantSTLS := 1, 0
			if tls.Required && !tls.Active {
				wantAuth = 0
			}
			if tls.Offered && !tls.Active {
				wantSTLS = 1
			}
			if auth != wantAuth || starttls != wantSTLS {
				t.Fatalf("TLS %+v: EHLO answer offers AUTH %d times and STARTTLS %d times, want %d and %d: %q", tls, auth, starttls, wantAuth, wantSTLS, out)
			}
		}
	})
}
