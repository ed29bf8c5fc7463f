package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
)

// verifier holds a keyed hash of an accepted password, never the password:
// HMAC-SHA256 under a key that exists only in this process's memory, so a
// memory dump cannot be brute-forced offline without the key, and the check
// costs microseconds instead of a PBKDF2.
type verifier struct {
	key []byte
}

func newVerifier() verifier {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("auth: no randomness: " + err.Error())
	}
	return verifier{key: k}
}

func (v verifier) sum(account, password string) []byte {
	m := hmac.New(sha256.New, v.key)
	m.Write([]byte(account))
	m.Write([]byte{0})
	m.Write([]byte(password))
	return m.Sum(nil)
}

// equal compares in constant time.
func (v verifier) equal(stored []byte, account, password string) bool {
	return hmac.Equal(stored, v.sum(account, password))
}
