package pop3

import (
	"bytes"
	"strings"
	"testing"
)

// The greeting and CAPA lines come from the upstream server: whatever it
// sends (lines, the "." that ends CAPA excluded, as the dialer reads
// them), the greeting made from them must be one line and the CAPA
// answer a well-formed multi-line response that ends only at its end.
func FuzzProfile(f *testing.F) {
	f.Add([]byte("+OK ready <1.2@host>"), "USER\nSASL XOAUTH2 PLAIN\nSTLS\nTOP")
	f.Add([]byte("-ERR no"), "")
	f.Add([]byte("+OK <@"), "..\n. \nsasl")
	f.Add([]byte("+OK"), "USER\n \t\nTOP")
	f.Fuzz(func(t *testing.T, greeting []byte, capa string) {
		if bytes.ContainsAny(greeting, "\r\n") || strings.Contains(capa, "\r") {
			return // the dialer reads lines: none can hold a line end
		}
		var lines []string
		for _, l := range strings.Split(capa, "\n") {
			if l != "." && l != "" {
				lines = append(lines, l)
			}
		}
		p := NewProfile(greeting, lines)
		if g := p.Greeting; !bytes.HasPrefix(g, []byte("+OK")) || !bytes.HasSuffix(g, []byte("\r\n")) || bytes.Count(g, []byte("\n")) != 1 {
			t.Fatalf("greeting %q", g)
		}
		for _, tls := range []TLS{{}, {Offered: true}, {Offered: true, Active: true}} {
			out := strings.Split(strings.TrimSuffix(string(p.Capa(tls)), "\r\n"), "\r\n")
			if !strings.HasPrefix(out[0], "+OK") || out[len(out)-1] != "." {
				t.Fatalf("CAPA %q", out)
			}
			for _, l := range out[1 : len(out)-1] {
				if l == "." || strings.Contains(l, "\n") {
					t.Fatalf("CAPA line %q ends or splits the answer early: %q", l, out)
				}
				if strings.TrimSpace(l) == "" {
					t.Fatalf("CAPA answer holds a blank line: %q", out)
				}
			}
		}
	})
}
