package sasl

import (
	"encoding/base64"
	"testing"
)

func TestDecodePlain(t *testing.T) {
	b64 := func(s string) []byte { return []byte(base64.StdEncoding.EncodeToString([]byte(s))) }
	tests := []struct {
		in         []byte
		user, pass string
		err        error
	}{
		{b64("\x00u@x\x00p w"), "u@x", "p w", nil},
		{b64("u@x\x00u@x\x00pw"), "u@x", "pw", nil},
		{[]byte(base64.RawStdEncoding.EncodeToString([]byte("\x00u@x\x00pw"))), "u@x", "pw", nil},
		{b64("\x00u@x\x00"), "u@x", "", nil},
		{b64("admin\x00u@x\x00pw"), "", "", ErrMalformed},
		{b64("u@x\x00pw"), "", "", ErrMalformed},
		{b64("\x00\x00pw"), "", "", ErrMalformed},
		{[]byte("*"), "", "", ErrCancelled},
		{[]byte("="), "", "", ErrMalformed},
		{[]byte("%%%"), "", "", ErrMalformed},
		{[]byte("cA="), "", "", ErrMalformed},
	}
	for _, tc := range tests {
		c, err := DecodePlain(tc.in)
		if err != tc.err || c.Username != tc.user || c.Password != tc.pass {
			t.Errorf("%q: got %+v %v", tc.in, c, err)
		}
	}
}

func TestXOAUTH2RoundTrip(t *testing.T) {
	enc := XOAUTH2("user@example.com", "tok.en")
	raw, err := base64.StdEncoding.DecodeString(string(enc))
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != "user=user@example.com\x01auth=Bearer tok.en\x01\x01" {
		t.Fatalf("raw %q", raw)
	}
	u, tok, err := ParseXOAUTH2(raw)
	if err != nil || u != "user@example.com" || tok != "tok.en" {
		t.Fatalf("parse: %q %q %v", u, tok, err)
	}
	if _, _, err := ParseXOAUTH2([]byte("user=a\x01")); err == nil {
		t.Fatal("accepted a truncated XOAUTH2 response")
	}
}

func BenchmarkXOAUTH2(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		XOAUTH2("user@example.com", "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature")
	}
}
