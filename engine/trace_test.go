package engine

import (
	"strings"
	"testing"

	"github.com/emailproxy/emailproxy/config"
)

// The trace shows commands that carry no credential, and of the others
// only the tag, the command word and a SASL mechanism.
func TestRedactClient(t *testing.T) {
	for _, c := range []struct {
		proto config.Protocol
		in    string
		want  string
	}{
		{config.IMAP, "a1 CAPABILITY", "a1 CAPABILITY"},
		{config.IMAP, `a2 LOGIN user "pa ss"`, "a2 LOGIN [redacted]"},
		{config.IMAP, "a3 AUTHENTICATE PLAIN AHUAcHc=", "a3 AUTHENTICATE PLAIN [redacted]"},
		{config.IMAP, "a4 authenticate plain", "a4 AUTHENTICATE PLAIN"},
		{config.IMAP, "a5 LOGIN user {6+}\r\nx CAPABILITY\r\n", "a5 LOGIN [redacted]|[literal redacted]"},
		{config.IMAP, "AHVzZXIAcGFzcw==", "[client data redacted]"},
		{config.POP, "USER app@x", "USER app@x"},
		{config.POP, "c2VjcmV0", "[client data redacted]"},
		{config.SMTP, "secretpassword", "[client data redacted]"},
		{config.POP, "PASS secret word", "PASS [redacted]"},
		{config.POP, "AUTH PLAIN AHUAcA==", "AUTH PLAIN [redacted]"},
		{config.SMTP, "EHLO client.example", "EHLO client.example"},
		{config.SMTP, "AUTH LOGIN dXNlcg==", "AUTH LOGIN [redacted]"},
		{config.SMTP, "AUTH PLAIN", "AUTH PLAIN"},
	} {
		if got := strings.Join(redactClient(c.proto, []byte(c.in)), "|"); got != c.want {
			t.Errorf("%s %q: %q, want %q", c.proto, c.in, got, c.want)
		}
	}
}
