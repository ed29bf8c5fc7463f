package engine

import (
	"io"
	"net"
	"testing"
)

// benchRelay measures one relay direction: sender writes b.N chunks of
// 64 KiB, the relay copies src to io.Discard.
func benchRelay(b *testing.B, src, sender net.Conn) {
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
	if n := s.pipe(io.Discard, src); n != int64(b.N*len(chunk)) {
		b.Fatalf("relayed %d bytes, want %d", n, b.N*len(chunk))
	}
}

// The client side of a relay: a plain socket, waited on without a buffer.
func BenchmarkRelayPlain(b *testing.B) {
	server, client := tcpPair(b)
	benchRelay(b, server, client)
}

// The upstream side of a relay: a TLS connection.
func BenchmarkRelayTLS(b *testing.B) {
	srv, cl := tlsPair(b)
	benchRelay(b, cl, srv)
}

// pipe copies src to dst as a relay direction does (one that never
// parks) until either ends, and returns the bytes written.
func (s *Server) pipe(dst io.Writer, src net.Conn) int64 {
	var c copier
	d := s.newRelayDir(nil, src)
	d.start, d.take = c.to(dst, nil, nil)
	d.pump()
	d.cr.release()
	return c.total
}
