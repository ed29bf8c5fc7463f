// Package loopback makes connected pairs of sockets on 127.0.0.1 for the
// engine's tests.
package loopback

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/emailproxy/emailproxy/bench/mock"
)

// TCPPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func TCPPair(tb testing.TB) (server, client net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); got <- c }()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	server = <-got
	tb.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// TLSPair is a TLS connection over loopback TCP, both ends handshaken;
// wrap, if not nil, sits between the client's TLS and its socket (as the
// upstream side feeds crypto/tls one record at a time).
func TLSPair(tb testing.TB, wrap func(net.Conn) net.Conn) (server, client *tls.Conn) {
	tb.Helper()
	ca, err := mock.NewCA("test CA")
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := ca.Leaf()
	if err != nil {
		tb.Fatal(err)
	}
	s, c := TCPPair(tb)
	if wrap != nil {
		c = wrap(c)
	}
	server = tls.Server(s, &tls.Config{Certificates: []tls.Certificate{leaf}})
	client = tls.Client(c, &tls.Config{RootCAs: ca.Pool, ServerName: "localhost"})
	go server.Handshake()
	if err := client.Handshake(); err != nil {
		tb.Fatal(err)
	}
	return server, client
}
