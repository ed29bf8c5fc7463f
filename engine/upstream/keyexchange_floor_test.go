package upstream

import (
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/rand"
	"testing"
)

// The part of a session's CPU that no change in the proxy can remove:
// each upstream session begins with a TLS handshake (POP3 and SMTP
// sessions cannot be handed from one login to the next), and a TLS 1.3
// client makes a fresh key exchange even when it resumes a session (Go
// offers no PSK-only resumption). These are the client's operations in
// one handshake: against a server that picks the post-quantum hybrid
// X25519MLKEM768 (Go's default, and the bench's mock), an ML-KEM-768 key
// pair, its decapsulation and an X25519 key pair and shared secret;
// against a classical server (the dialer then offers classical groups
// only, see learnGroup), the X25519 half. Compare with the bench's
// "proxy CPU/sess" (docs/SPEED.md).
//
//	go test -run '^$' -bench KeyExchangeFloor ./engine/upstream
func BenchmarkKeyExchangeFloor(b *testing.B) {
	// What the server sends back: an ML-KEM ciphertext for the client's
	// key and an X25519 public key.
	serverKey, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	x25519 := func(b *testing.B) {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := k.ECDH(serverKey.PublicKey()); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("hybrid", func(b *testing.B) {
		for b.Loop() {
			dk, err := mlkem.GenerateKey768()
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer() // the server's part
			_, ct := dk.EncapsulationKey().Encapsulate()
			b.StartTimer()
			if _, err := dk.Decapsulate(ct); err != nil {
				b.Fatal(err)
			}
			x25519(b)
		}
	})
	b.Run("classical", func(b *testing.B) {
		for b.Loop() {
			x25519(b)
		}
	})
}
