package sasl

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// Whatever a client sends as a PLAIN response, DecodePlain returns
// credentials or an error without panicking; what it accepts encodes back
// to the same credentials, and an accepted username is never empty.
func FuzzDecodePlain(f *testing.F) {
	for _, s := range []string{"\x00u@x\x00pw", "u@x\x00u@x\x00pw", "\x00u\x00", "a\x00b\x00c", "\x00\x00"} {
		f.Add([]byte(base64.StdEncoding.EncodeToString([]byte(s))))
	}
	f.Add([]byte("*"))
	f.Add([]byte("="))
	f.Add([]byte("AHVAeABwdw"))
	f.Add([]byte(strings.Repeat("QUFB", 300)))
	f.Fuzz(func(t *testing.T, in []byte) {
		keep := append([]byte(nil), in...)
		c, err := DecodePlain(in)
		if !bytes.Equal(in, keep) {
			t.Fatal("DecodePlain changed its input")
		}
		if err != nil {
			if c != (Credentials{}) {
				t.Fatalf("credentials %+v with error %v", c, err)
			}
			return
		}
		if c.Username == "" || strings.ContainsRune(c.Username, 0) || strings.ContainsRune(c.Password, 0) {
			t.Fatalf("accepted %+v", c)
		}
		again, err := DecodePlain([]byte(EncodePlain(c.Username, c.Password)))
		if err != nil || again != c {
			t.Fatalf("round trip: %+v %v, want %+v", again, err, c)
		}
	})
}

// XOAUTH2 responses parse back to the user and token they were built from.
func FuzzXOAUTH2RoundTrip(f *testing.F) {
	f.Add("app@yourdomain.com", "eyJ0eXAiOiJKV1Qi.x.y")
	f.Add("u", "t")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, user, token string) {
		raw, err := DecodeBase64(XOAUTH2(user, token))
		if err != nil {
			t.Fatal(err)
		}
		u, tok, err := ParseXOAUTH2(raw)
		ok := user != "" && token != "" && !strings.ContainsRune(user, 1) && !strings.ContainsRune(token, 1)
		if !ok {
			return // the mock upstream may refuse these; it must not panic
		}
		if err != nil || u != user || tok != token {
			t.Fatalf("got %q %q %v", u, tok, err)
		}
	})
}
