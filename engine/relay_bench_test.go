package engine

import (
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/emailproxy/emailproxy/bench/mock"
)

// benchRelay measures one relay direction: a sender writes b.N chunks of
// 64 KiB into src's peer, the relay copies src to io.Discard.
func benchRelay(b *testing.B, wrap func(server, client net.Conn) (src, sender net.Conn)) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	server := <-accepted
	src, sender := wrap(server, client)
	defer src.Close()
	defer sender.Close()
	s := &Server{opts: Options{RelayBuffer: 16 << 10}}
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for range b.N {
			if _, err := sender.Write(chunk); err != nil {
				return
			}
		}
		sender.Close()
	}()
	if n := s.pipe(io.Discard, src, nil, nil); n != int64(b.N*len(chunk)) {
		b.Fatalf("relayed %d bytes, want %d", n, b.N*len(chunk))
	}
}

// The client side of a relay: a plain socket, waited on without a buffer.
func BenchmarkRelayPlain(b *testing.B) {
	benchRelay(b, func(server, client net.Conn) (net.Conn, net.Conn) { return server, client })
}

// The upstream side of a relay: a TLS connection.
func BenchmarkRelayTLS(b *testing.B) {
	ca, err := mock.NewCA("bench CA")
	if err != nil {
		b.Fatal(err)
	}
	leaf, err := ca.Leaf()
	if err != nil {
		b.Fatal(err)
	}
	benchRelay(b, func(server, client net.Conn) (net.Conn, net.Conn) {
		srv := tls.Server(server, &tls.Config{Certificates: []tls.Certificate{leaf}})
		cl := tls.Client(&recordConn{Conn: client}, &tls.Config{RootCAs: ca.Pool, ServerName: "localhost"}) // as dialer.dial does
		go srv.Handshake()
		if err := cl.Handshake(); err != nil {
			b.Fatal(err)
		}
		return cl, srv
	})
}
