package imap

import (
	"bytes"
	"testing"
)

// The greeting and capabilities come from the upstream server: whatever
// it sends (one line each, as the dialer reads them), reading them and
// the profile built from them must not panic, and every answer made from
// it must be exactly one line.
func FuzzProfile(f *testing.F) {
	f.Add([]byte("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready"), []byte("IMAP4rev1 AUTH=XOAUTH2 STARTTLS"))
	f.Add([]byte("* ok [capability imap4rev1] hi"), []byte(""))
	f.Add([]byte("* OK ɐɐɐɐɐɐɐɐɐɐɐɐɐɐɐɐɐɐɐɐ[CAPABILITY "), []byte("IMAP4rev1"))
	f.Add([]byte("garbage"), []byte("LOGINDISABLED"))
	f.Fuzz(func(t *testing.T, greeting, capLine []byte) {
		if bytes.ContainsAny(greeting, "\r\n") || bytes.ContainsAny(capLine, "\r\n") {
			return // the dialer reads lines: neither can hold a line end
		}
		GreetingCapabilities(greeting)
		ParseResponse(greeting)
		caps, _ := ParseCapabilityLine(append([]byte("* CAPABILITY "), capLine...))
		p := NewProfile(greeting, caps)
		for _, tls := range []TLS{{}, {Offered: true}, {Offered: true, Active: true}} {
			for _, out := range [][]byte{p.Greeting(tls), p.CapabilityLine(tls)} {
				if !bytes.HasSuffix(out, []byte("\r\n")) || bytes.Count(out, []byte("\n")) != 1 {
					t.Fatalf("not one line: %q", out)
				}
			}
		}
	})
}
