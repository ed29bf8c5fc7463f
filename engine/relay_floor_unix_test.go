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
func BenchmarkRelayDownload(b *testing.B) { benchAgainstFloor(b, true) }

func BenchmarkRelayUpload(b *testing.B) { benchAgainstFloor(b, false) }

// benchAgainstFloor runs one direction through the relay, then through a
// plain io.Copy.
func benchAgainstFloor(b *testing.B, download bool) {
	for _, relay := range []bool{true, false} {
		name := "floor"
		if relay {
			name = "relay"
		}
		b.Run(name, func(b *testing.B) {
			var wrap func(net.Conn) net.Conn
			if relay || !download {
				wrap = upstream.RecordReader // the upstream side as dialled
			}
			server, up := loopback.TLSPair(b, wrap)
			proxySide, client := loopback.TCPPair(b)
			// A download goes server -> up -> proxySide -> client; an
			// upload the other way.
			var src, dst, sender, sink net.Conn = up, proxySide, server, client
			if !download {
				src, dst, sender, sink = proxySide, up, client, server
			}
			go io.Copy(io.Discard, sink)
			benchDirection(b, sender, func() {
				if relay {
					s := &Server{opts: Options{RelayBuffer: 16 << 10}}
					s.pipe(&timedWriter{c: dst, timeout: time.Minute, active: new(atomic.Int64)}, src)
				} else {
					io.Copy(dst, src)
				}
			})
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
