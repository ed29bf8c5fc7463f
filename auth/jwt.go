package auth

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// jwtLifetime is the exp of a client assertion (emailproxy.py JWT_LIFETIME).
const jwtLifetime = 300 * time.Second

// signRS256 makes a compact JWS with an RS256 signature.
func signRS256(header, claims map[string]any, key *rsa.PrivateKey) (string, error) {
	header["alg"], header["typ"] = "RS256", "JWT"
	h, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// clientAssertion is the certificate credential of Entra ID (§3.4): RS256,
// header x5t#S256 = the certificate's SHA-256 (base64url with padding),
// aud = token_url, iss = sub = client_id, a random jti, nbf = now, exp =
// now + 300 s. The files are read on every call, so a renewed certificate
// is picked up without a restart.
func clientAssertion(certPath, keyPath, clientID, tokenURL string) (string, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return "", fmt.Errorf("jwt_certificate_path: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", errors.New("jwt_certificate_path holds no PEM certificate")
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return "", fmt.Errorf("jwt_key_path: %w", err)
	}
	key, err := parseRSAKey(keyPEM)
	if err != nil {
		return "", fmt.Errorf("jwt_key_path: %w", err)
	}
	thumb := sha256.Sum256(block.Bytes)
	jti := make([]byte, 16)
	rand.Read(jti)
	now := time.Now().Unix()
	return signRS256(map[string]any{"x5t#S256": base64.URLEncoding.EncodeToString(thumb[:])},
		map[string]any{"aud": tokenURL, "iss": clientID, "sub": clientID, "jti": fmt.Sprintf("%x", jti),
			"nbf": now, "exp": now + int64(jwtLifetime/time.Second)}, key)
}

// parseRSAKey reads an unencrypted PKCS#1 or PKCS#8 RSA key.
func parseRSAKey(pemBytes []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM private key")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cannot parse the private key (it must not be passphrase-protected): %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("the private key is not RSA")
	}
	return rk, nil
}
