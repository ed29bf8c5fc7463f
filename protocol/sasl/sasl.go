// Package sasl decodes the SASL credentials clients send to the proxy
// (PLAIN, LOGIN) and encodes the ones the proxy sends upstream (XOAUTH2,
// OAUTHBEARER). It does no I/O.
package sasl

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// Credentials are a username and password a client gave the proxy.
type Credentials struct {
	Username string
	Password string
}

// ErrMalformed is returned for base64 or SASL payloads that do not parse.
var ErrMalformed = errors.New("malformed SASL response")

// ErrCancelled is returned when the client answers a challenge with "*".
var ErrCancelled = errors.New("authentication cancelled")

// DecodeBase64 decodes a client SASL response line. "=" is the empty
// response (RFC 4959); "*" cancels.
func DecodeBase64(line []byte) ([]byte, error) {
	return decodeInto(nil, line)
}

// decodeInto is DecodeBase64 decoding into dst when it is large enough.
func decodeInto(dst, line []byte) ([]byte, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 1 && line[0] == '*' {
		return nil, ErrCancelled
	}
	if len(line) == 1 && line[0] == '=' {
		return []byte{}, nil
	}
	out := dst
	if len(out) < len(line) { // decoded data is never longer than its base64
		out = make([]byte, len(line))
	}
	n, err := base64.StdEncoding.Decode(out, line)
	if err != nil {
		// Some clients leave off the padding.
		n, err = base64.RawStdEncoding.Decode(out, bytes.TrimRight(line, "="))
		if err != nil {
			return nil, ErrMalformed
		}
	}
	return out[:n], nil
}

// DecodePlain parses a base64 PLAIN response: authzid NUL authcid NUL passwd
// (RFC 4616). The authcid is the username; an authzid is accepted only when
// empty or equal to it, since the proxy cannot act on behalf of another user.
func DecodePlain(b64 []byte) (Credentials, error) {
	var buf [512]byte // usual responses decode on the stack
	raw, err := decodeInto(buf[:], b64)
	if err != nil {
		return Credentials{}, err
	}
	nul := bytes.IndexByte(raw, 0)
	if nul < 0 {
		return Credentials{}, ErrMalformed
	}
	authz, rest := raw[:nul], raw[nul+1:]
	nul = bytes.IndexByte(rest, 0)
	if nul <= 0 || bytes.IndexByte(rest[nul+1:], 0) >= 0 {
		return Credentials{}, ErrMalformed
	}
	if len(authz) > 0 && !bytes.Equal(authz, rest[:nul]) {
		return Credentials{}, ErrMalformed
	}
	both := string(rest) // one allocation: "user NUL password"
	return Credentials{Username: both[:nul], Password: both[nul+1:]}, nil
}

// EncodePlain is the client side of PLAIN, used by tests and the bench
// harness.
func EncodePlain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

// XOAUTH2 returns the base64 XOAUTH2 initial response for user and an
// access token: "user=U\x01auth=Bearer T\x01\x01".
func XOAUTH2(user, token string) []byte {
	raw := make([]byte, 0, len(user)+len(token)+20)
	raw = append(raw, "user="...)
	raw = append(raw, user...)
	raw = append(raw, "\x01auth=Bearer "...)
	raw = append(raw, token...)
	raw = append(raw, "\x01\x01"...)
	out := make([]byte, base64.StdEncoding.EncodedLen(len(raw)))
	base64.StdEncoding.Encode(out, raw)
	return out
}

// OAUTHBEARER returns the base64 OAUTHBEARER initial response (RFC 7628)
// for user at host:port with an access token.
func OAUTHBEARER(user, host string, port int, token string) []byte {
	raw := "n,a=" + saslName(user) + ",\x01host=" + host + "\x01port=" + strconv.Itoa(port) +
		"\x01auth=Bearer " + token + "\x01\x01"
	return []byte(base64.StdEncoding.EncodeToString([]byte(raw)))
}

// saslName escapes "," and "=" in a GS2 authzid (RFC 5801).
func saslName(s string) string {
	s = strings.ReplaceAll(s, "=", "=3D")
	return strings.ReplaceAll(s, ",", "=2C")
}

// ParseXOAUTH2 is the server side of XOAUTH2, used by the mock upstream.
func ParseXOAUTH2(raw []byte) (user, token string, err error) {
	s := string(raw)
	if len(s) < 2 || s[len(s)-2:] != "\x01\x01" {
		return "", "", ErrMalformed
	}
	for _, field := range bytes.Split([]byte(s[:len(s)-2]), []byte{1}) {
		switch {
		case bytes.HasPrefix(field, []byte("user=")):
			user = string(field[5:])
		case bytes.HasPrefix(field, []byte("auth=Bearer ")):
			token = string(field[12:])
		}
	}
	if user == "" || token == "" {
		return "", "", ErrMalformed
	}
	return user, token, nil
}
