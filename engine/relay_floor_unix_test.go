//go:build unix

package engine

import (
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emailproxy/emailproxy/engine/internal/loopback"
	"github.com/emailproxy/emailproxy/engine/upstream"
)

// The relay against its floor. A download: an upstream server sends over
// TLS, the proxy decrypts and writes to a plaintext client socket that a
// reader drains; an upload: the reverse. "relay" is the proxy's pipe (the
// upstream side read one TLS record at a time, as dialled connections
// are); "floor" is a plain io.Copy through crypto/tls. Each reports the
// process's CPU per byte (cpu-ns/B, every goroutine: the sender's TLS and
// the reader are the same in both, so relay/floor is the proxy's overhead
// over the least any TLS-terminating copy must do).
//
//	go test -run '^$' -bench 'Relay(Download|Upload)' -benchtime 2000x ./engine
func BenchmarkRelayDownload(b *testing.B) {
	for _, c := range []struct {
		name  string
		relay bool
	}{{"relay", true}, {"floor", false}} {
		b.Run(c.name, func(b *testing.B) {
			var wrap func(net.Conn) net.Conn
			if c.relay {
				wrap = upstream.RecordReader
			}
			server, up := loopback.TLSPair(b, wrap)
			proxySide, client := loopback.TCPPair(b)
			go io.Copy(io.Discard, client)
			copyOnce := func() {
				if c.relay {
					s := &Server{opts: Options{RelayBuffer: 16 << 10}}
					w := &timedWriter{c: proxySide, timeout: time.Minute, active: new(atomic.Int64)}
					s.pipe(w, up, nil, nil)
				} else {
					io.Copy(proxySide, up)
				}
			}
			benchDirection(b, server, copyOnce)
		})
	}
}

func BenchmarkRelayUpload(b *testing.B) {
	for _, c := range []struct {
		name  string
		relay bool
	}{{"relay", true}, {"floor", false}} {
		b.Run(c.name, func(b *testing.B) {
			server, up := loopback.TLSPair(b, upstream.RecordReader)
			proxySide, client := loopback.TCPPair(b)
			go io.Copy(io.Discard, server)
			copyOnce := func() {
				if c.relay {
					s := &Server{opts: Options{RelayBuffer: 16 << 10}}
					w := &timedWriter{c: up, timeout: time.Minute, active: new(atomic.Int64)}
					s.pipe(w, proxySide, nil, nil)
				} else {
					io.Copy(up, proxySide)
				}
			}
			benchDirection(b, client, copyOnce)
		})
	}
}

// benchDirection writes b.N chunks of 64 KiB to sender while copyOnce
// relays them, and reports throughput and the process's CPU per byte.
func benchDirection(b *testing.B, sender net.Conn, copyOnce func()) {
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	go func() {
		for range b.N {
			if _, err := sender.Write(chunk); err != nil {
				return
			}
		}
		if t, ok := sender.(*tls.Conn); ok {
			t.CloseWrite()
		} else {
			sender.(*net.TCPConn).CloseWrite()
		}
	}()
	copyOnce()
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N*len(chunk)), "cpu-ns/B")
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
