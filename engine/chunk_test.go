package engine

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/valyala/bytebufferpool"

	"github.com/emailproxy/emailproxy/engine/internal/loopback"
	"github.com/emailproxy/emailproxy/engine/upstream"
)

func tcpPair(tb testing.TB) (server, client net.Conn) { return loopback.TCPPair(tb) }

// tlsPair is a TLS connection with the client side set up as the upstream
// side does it (one record at a time).
func tlsPair(tb testing.TB) (server, client *tls.Conn) {
	return loopback.TLSPair(tb, upstream.RecordReader)
}

// readAll reads n bytes through cr.
func readAll(t *testing.T, cr *chunkReader, n int) []byte {
	t.Helper()
	var got []byte
	for len(got) < n {
		chunk, err := cr.next()
		got = append(got, chunk...)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
	}
	return got
}

// expectIdleWithoutBuffer checks that a reader blocked on a quiet source
// gives its full-size buffer back, then still reads what comes next.
func expectIdleWithoutBuffer(t *testing.T, cr *chunkReader, sender net.Conn) {
	t.Helper()
	done := make(chan []byte, 1)
	go func() {
		chunk, _ := cr.next()
		done <- append([]byte(nil), chunk...)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for cr.holding.Load() {
		if time.Now().After(deadline) {
			t.Fatal("a quiet reader still holds its full-size buffer")
		}
		time.Sleep(5 * time.Millisecond)
	}
	sender.Write([]byte("next"))
	select {
	case got := <-done:
		if string(got) != "next" {
			t.Fatalf("read %q after the quiet spell", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no read after the quiet spell")
	}
}

func TestChunkReaderPlainHoldsNoBufferWhileQuiet(t *testing.T) {
	server, client := tcpPair(t)
	var pool bytebufferpool.Pool
	cr := newChunkReader(&pool, server, 16<<10)
	defer cr.release()
	if cr.raw == nil {
		t.Fatal("a TCP connection should be read through RawConn")
	}
	data := bytes.Repeat([]byte("0123456789"), 5000)
	go client.Write(data)
	if got := readAll(t, cr, len(data)); !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
	expectIdleWithoutBuffer(t, cr, client)
	client.Close()
	if _, err := cr.next(); err == nil {
		t.Fatal("no EOF after the peer closed")
	}
}

func TestChunkReaderTLSHoldsNoBufferWhileQuiet(t *testing.T) {
	srv, cl := tlsPair(t)
	var pool bytebufferpool.Pool
	cr := newChunkReader(&pool, cl, 16<<10)
	defer cr.release()
	data := bytes.Repeat([]byte("abcdefghij"), 7000) // several records: the reader goes busy
	go srv.Write(data)
	if got := readAll(t, cr, len(data)); !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
	expectIdleWithoutBuffer(t, cr, srv)
	// A hard deadline ends a quiet read.
	cr.setHardDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := cr.next(); !upstream.IsTimeout(err) {
		t.Fatalf("hard deadline: %v", err)
	}
}
