package tlstrim

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/engine/internal/loopback"
)

// capacity of c's record buffer, read through reflection.
func capacity(c *tls.Conn) int {
	return reflect.ValueOf(c).Elem().FieldByName("rawInput").FieldByName("buf").Cap()
}

// This Go's crypto/tls has the fields Trim needs: a Go upgrade that
// renames them fails here, not silently in production memory.
func TestSupported(t *testing.T) {
	if !Supported() {
		t.Fatal("crypto/tls's read buffers are not where tlstrim looks for them")
	}
}

// After a download the record buffer is large; Trim releases it, and
// the connection reads on correctly, records split across reads
// included. A partly received record is never dropped.
func TestTrimKeepsTheConnectionWorking(t *testing.T) {
	srv, cl := loopback.TLSPair(t, nil)
	send := func(b []byte) {
		go srv.Write(b)
		got := make([]byte, len(b))
		cl.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(cl, got); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("read after trim: %v, equal %v", err, bytes.Equal(got, b))
		}
	}
	big := make([]byte, 1<<20)
	rand.Read(big)
	send(big)
	if c := capacity(cl); c < 16<<10 {
		t.Fatalf("record buffer %d bytes after a download: the test no longer shows the growth", c)
	}
	if !Trim(cl) {
		t.Fatal("Trim did nothing on an idle connection")
	}
	if c := capacity(cl); c != 0 {
		t.Fatalf("record buffer %d bytes after Trim", c)
	}
	for range 3 {
		send(big[:100_000])
		send([]byte("* OK small\r\n"))
		Trim(cl)
	}

	// Half a record in the buffer: Trim leaves it.
	go srv.Write(bytes.Repeat([]byte("x"), 10_000))
	time.Sleep(50 * time.Millisecond)
	one := make([]byte, 1)
	cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(cl, one); err != nil {
		t.Fatal(err)
	}
	if Trim(cl) {
		t.Fatal("Trim dropped plaintext not yet read")
	}
	rest := make([]byte, 10_000-1)
	if _, err := io.ReadFull(cl, rest); err != nil || !bytes.Equal(rest, bytes.Repeat([]byte("x"), len(rest))) {
		t.Fatalf("the rest after a refused Trim: %v", err)
	}
}
