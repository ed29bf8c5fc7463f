package upstream

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/emailproxy/emailproxy/engine/internal/loopback"
)

// record builds one TLS record with payload p.
func record(p string) []byte {
	return append([]byte{23, 3, 3, byte(len(p) >> 8), byte(len(p))}, p...)
}

// Reads never cross a record boundary, whatever the socket delivers at
// once, and every byte arrives in order.
func TestRecordConnHandsOneRecordAtATime(t *testing.T) {
	stream := bytes.Join([][]byte{record("abc"), record(""), record("de"), record(string(bytes.Repeat([]byte("x"), 3000)))}, nil)
	server, client := net.Pipe()
	defer client.Close()
	go func() {
		for len(stream) > 0 { // uneven writes: the reader sees any split
			n := min(len(stream), 7)
			server.Write(stream[:n])
			stream = stream[n:]
		}
		server.Close()
	}()
	rc := newRecordConn(client) // a pipe: no read-ahead

	var got []byte
	var reads []int
	buf := make([]byte, 8192)
	for {
		n, err := rc.Read(buf)
		got = append(got, buf[:n]...)
		if n > 0 {
			reads = append(reads, n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	want := bytes.Join([][]byte{record("abc"), record(""), record("de"), record(string(bytes.Repeat([]byte("x"), 3000)))}, nil)
	if !bytes.Equal(got, want) {
		t.Fatalf("stream differs: %d bytes, want %d", len(got), len(want))
	}
	// Walk the records: each read must end at or before a record's end.
	ends := map[int]bool{}
	for off := 0; off < len(want); {
		hdrEnd := off + 5
		ends[hdrEnd] = true
		off = hdrEnd + (int(want[hdrEnd-2])<<8 | int(want[hdrEnd-1]))
		ends[off] = true
	}
	pos := 0
	for _, n := range reads {
		next := pos + n
		for b := pos + 1; b < next; b++ {
			if ends[b] {
				t.Fatalf("read [%d,%d) crosses a record boundary at %d", pos, next, b)
			}
		}
		pos = next
	}
}

// crypto/tls works over it: a download arrives intact.
func TestRecordConnUnderTLS(t *testing.T) {
	srv, cl := loopback.TLSPair(t, RecordReader)
	data := bytes.Repeat([]byte("0123456789abcdef"), 200000) // 3.2 MB
	go func() {
		for off := 0; off < len(data); {
			n := min(len(data)-off, 1+off%50000)
			srv.Write(data[off : off+n])
			off += n
		}
		srv.Close()
	}()
	got, err := io.ReadAll(cl)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want %d", len(got), len(data))
	}
}
