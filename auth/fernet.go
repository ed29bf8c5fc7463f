package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"time"
)

// The token cache is encrypted exactly as emailproxy.py does it, so both
// proxies read each other's files: Fernet (spec version 0x80: AES-128-CBC
// with PKCS#7 padding, then HMAC-SHA256) under a key derived from the login
// password with PBKDF2-HMAC-SHA256 and a per-account 16-byte salt.

const (
	// CurrentIterations is the PBKDF2 count for new values (emailproxy.py
	// since 2025-03).
	CurrentIterations = 1_200_000
	// LegacyIterations is assumed when token_iterations is absent.
	LegacyIterations = 100_000
	fernetVersion    = 0x80
)

// ErrDecrypt means a value did not decrypt: wrong password, or damaged.
var ErrDecrypt = errors.New("cannot decrypt the cached value with this password")

// fernetKey is one derived key: signing half and encryption half.
type fernetKey struct {
	iterations int
	sign, enc  []byte
}

// deriveKey runs PBKDF2; at 1.2M iterations this costs a few hundred
// milliseconds, so it never runs on the event loop and runs once per
// (account, password) per process.
func deriveKey(password string, salt []byte, iterations int) (*fernetKey, error) {
	k, err := pbkdf2.Key(sha256.New, password, salt, iterations, 32)
	if err != nil {
		return nil, err
	}
	return &fernetKey{iterations: iterations, sign: k[:16], enc: k[16:]}, nil
}

// keyring is emailproxy.py's MultiFernet: the newest key encrypts, every
// key is tried to decrypt.
type keyring []*fernetKey

// openKeyring finds the key of password that decrypts probe, trying the
// stored iteration count first, then the current and the legacy ones, and
// returns the keyring that encrypts with the current count and decrypts
// with that key too (values it decrypts are then reported stale). The
// right password costs one derivation, two when the stored count is not
// the current one (to re-encrypt); a wrong one costs every count. It
// returns ErrDecrypt when no key decrypts probe.
func openKeyring(password string, salt []byte, stored, current int, probe string) (keyring, error) {
	var cur *fernetKey
	tried := map[int]bool{}
	for _, n := range []int{stored, current, LegacyIterations} {
		if n <= 0 || tried[n] {
			continue
		}
		tried[n] = true
		k, err := deriveKey(password, salt, n)
		if err != nil {
			return nil, err
		}
		if n == current {
			cur = k
		}
		if _, err := k.decrypt(probe); err != nil {
			continue
		}
		if n == current {
			return keyring{k}, nil
		}
		if cur == nil {
			if cur, err = deriveKey(password, salt, current); err != nil {
				return nil, err
			}
		}
		return keyring{cur, k}, nil
	}
	return nil, ErrDecrypt
}

// encrypt uses the newest key.
func (r keyring) encrypt(plain []byte) string { return r[0].encrypt(plain, time.Now()) }

// decrypt tries each key; it also says whether a key other than the newest
// was needed (the value should be re-encrypted).
func (r keyring) decrypt(token string) (plain []byte, stale bool, err error) {
	for i, k := range r {
		if p, err := k.decrypt(token); err == nil {
			return p, i > 0, nil
		}
	}
	return nil, false, ErrDecrypt
}

func (k *fernetKey) encrypt(plain []byte, now time.Time) string {
	iv := make([]byte, aes.BlockSize)
	if _, err := rand.Read(iv); err != nil {
		panic("auth: no randomness: " + err.Error())
	}
	pad := aes.BlockSize - len(plain)%aes.BlockSize
	padded := append(append(make([]byte, 0, len(plain)+pad), plain...), bytesOf(byte(pad), pad)...)
	block, _ := aes.NewCipher(k.enc)
	msg := make([]byte, 0, 1+8+len(iv)+len(padded)+sha256.Size)
	msg = append(msg, fernetVersion)
	msg = binary.BigEndian.AppendUint64(msg, uint64(now.Unix()))
	msg = append(msg, iv...)
	ct := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, padded)
	msg = append(msg, ct...)
	mac := hmac.New(sha256.New, k.sign)
	mac.Write(msg)
	msg = mac.Sum(msg)
	return base64.URLEncoding.EncodeToString(msg)
}

// decrypt checks the HMAC before anything else. No TTL is enforced, as in
// emailproxy.py.
func (k *fernetKey) decrypt(token string) ([]byte, error) {
	raw, err := base64.URLEncoding.DecodeString(token)
	if err != nil {
		return nil, ErrDecrypt
	}
	if len(raw) < 1+8+aes.BlockSize+aes.BlockSize+sha256.Size || raw[0] != fernetVersion {
		return nil, ErrDecrypt
	}
	body, sum := raw[:len(raw)-sha256.Size], raw[len(raw)-sha256.Size:]
	mac := hmac.New(sha256.New, k.sign)
	mac.Write(body)
	if !hmac.Equal(mac.Sum(nil), sum) {
		return nil, ErrDecrypt
	}
	iv, ct := body[9:9+aes.BlockSize], body[9+aes.BlockSize:]
	if len(ct)%aes.BlockSize != 0 {
		return nil, ErrDecrypt
	}
	block, _ := aes.NewCipher(k.enc)
	plain := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(plain, ct)
	pad := int(plain[len(plain)-1])
	if pad < 1 || pad > aes.BlockSize {
		return nil, ErrDecrypt
	}
	for _, b := range plain[len(plain)-pad:] {
		if int(b) != pad {
			return nil, ErrDecrypt
		}
	}
	return plain[:len(plain)-pad], nil
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

// newSalt returns 16 random bytes, base64 as token_salt stores them.
func newSalt() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("auth: no randomness: " + err.Error())
	}
	return base64.StdEncoding.EncodeToString(b)
}
