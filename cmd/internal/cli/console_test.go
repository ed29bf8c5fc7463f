package cli

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The fast console writer prints exactly what zerolog's ConsoleWriter
// prints without colour, for the events the proxy logs and for random
// ones; what it does not read (nested objects) it hands to the
// ConsoleWriter.
func TestConsoleWriterMatchesZerolog(t *testing.T) {
	zerolog.DurationFieldUnit = time.Millisecond
	var fast, slow bytes.Buffer
	fw := newConsoleWriter(&fast)
	sw := zerolog.ConsoleWriter{Out: &slow, NoColor: true, TimeFormat: consoleTimeFormat}
	both := zerolog.New(zerolog.MultiLevelWriter(fw, sw)).With().Timestamp().Logger()
	events := []func(){
		func() {
			both.Info().Str("server", "POP-1110").Str("client", "127.0.0.1:5000").Str("proto", "POP").Msg("connection opened")
		},
		func() {
			both.Warn().Str("account", "a@x").Err(errors.New("token endpoint said \"no\"\n")).Dur("took_ms", 1500*time.Microsecond).Msg("login")
		},
		func() {
			both.Error().Bool("ok", false).Int("n", -3).Float64("f", 2.5e-7).Interface("nothing", nil).Msg("")
		},
		func() {
			both.Debug().Str("text", "tab\there, é, \x01, back\\slash").Str("client", "first").Str("client", "second").Send()
		},
		func() { both.Info().Str("zeta", "z").Str("alpha", "a").Str("error", "first!").Msg("ordered") },
		func() { both.WithLevel(zerolog.NoLevel).Str("k", "v").Msg("no level") },
		func() { both.Info().Dict("nested", zerolog.Dict().Str("a", "b")).Msg("nested goes to zerolog") },
		func() { both.Info().Strs("list", []string{"a", "b"}).Msg("arrays too") },
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("ab Z_=\"\\\t\n\x7f€😀0.-")
	randText := func() string {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteRune(alphabet[rng.IntN(len(alphabet))])
		}
		return b.String()
	}
	for range 3000 {
		events = append(events, func() {
			e := both.WithLevel(zerolog.Level(rng.IntN(6)))
			for range rng.IntN(6) {
				switch rng.IntN(4) {
				case 0:
					e = e.Str(randText(), randText())
				case 1:
					e = e.Int64(randText(), rng.Int64()-rng.Int64())
				case 2:
					e = e.Bool(randText(), rng.IntN(2) == 0)
				case 3:
					e = e.Float64(randText(), rng.NormFloat64()*1e6)
				}
			}
			e.Msg(randText())
		})
	}
	for i, ev := range events {
		fast.Reset()
		slow.Reset()
		ev()
		if fast.String() != slow.String() {
			t.Fatalf("event %d:\n fast %q\n zero %q", i, fast.String(), slow.String())
		}
	}
}

// The fast path is what runs for the proxy's lines (not the fallback).
func TestConsoleWriterFastPath(t *testing.T) {
	w := newConsoleWriter(&bytes.Buffer{})
	line := []byte(`{"level":"info","server":"IMAP-1993","client":"127.0.0.1:40000","account":"a@x","ok":true,"took_ms":0.8,"time":"2026-12-02T03:00:00Z","message":"login"}` + "\n")
	out, ok := w.format(line)
	if !ok || !strings.HasSuffix(string(out), " INF login account=a@x client=127.0.0.1:40000 ok=true server=IMAP-1993 took_ms=0.8\n") {
		t.Fatalf("%q %v", out, ok)
	}
	if _, ok := w.format([]byte(`{"a":{"b":1}}`)); ok {
		t.Fatal("a nested object was read")
	}
}

func BenchmarkConsoleWriter(b *testing.B) {
	line := []byte(`{"level":"info","server":"POP-1110","client":"127.0.0.1:40000","account":"box001@bench.example","bytes_from_client":36,"bytes_to_client":614,"session_ms":41.2,"duration_ms":130.5,"time":"2026-12-02T03:00:00Z","message":"connection closed"}` + "\n")
	for _, c := range []struct {
		name string
		w    interface{ Write([]byte) (int, error) }
	}{{"fast", newConsoleWriter(discard{})}, {"zerolog", zerolog.ConsoleWriter{Out: discard{}, NoColor: true, TimeFormat: consoleTimeFormat}}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				c.w.Write(line)
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Any input: no panic; what the fast path prints is what the
// ConsoleWriter prints.
func FuzzConsoleWriter(f *testing.F) {
	f.Add([]byte(`{"level":"info","time":"2026-12-02T03:00:00Z","client":"127.0.0.1:1","message":"login"}` + "\n"))
	f.Add([]byte(`{"level":"warn","error":"a \"b\"\n","n":-1.5e3,"ok":true,"x":null,"message":""}`))
	f.Add([]byte(`{"k\u00e9y":"v\\u00e9","k":1,"k":"2"}`))
	f.Add([]byte(`{"a":{"b":1}}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		w := newConsoleWriter(discard{})
		out, ok := w.format(p)
		if !ok {
			return
		}
		var want bytes.Buffer
		if _, err := (zerolog.ConsoleWriter{Out: &want, NoColor: true, TimeFormat: consoleTimeFormat}).Write(p); err != nil {
			t.Fatalf("the fast path read %q, which zerolog cannot: %v", p, err)
		}
		if string(out) != want.String() {
			t.Fatalf("input %q:\n fast %q\n zero %q", p, out, want.String())
		}
	})
}
