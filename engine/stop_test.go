package engine

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/internal/loopback"
	"github.com/emailproxy/emailproxy/engine/upstream"
)

// A relay that a login starts once Stop has begun (and has closed the
// relays it saw) is closed at once: Stop does not wait for it until its
// idle timeout.
func TestRelayStartedDuringStopIsClosed(t *testing.T) {
	opts := Options{Logger: zerolog.Nop(), ParkAfter: -1}
	opts.defaults()
	s := &Server{opts: opts, log: opts.Logger, relays: map[*relay]struct{}{}}
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	s.cancel(errStopping) // Stop has begun

	_, up := loopback.TLSPair(t, upstream.RecordReader)
	proxySide, _ := loopback.TCPPair(t)
	res := &loginResult{proto: config.POP, up: &upstream.Conn{TLS: up}, reply: []byte("+OK\r\n"), user: "u"}
	s.startRelay(proxySide, res, nil, connLog{base: s.log}, time.Now())
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay started during Stop is still running")
	}
}
