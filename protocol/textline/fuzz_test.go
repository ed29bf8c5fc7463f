package textline

import (
	"bytes"
	"testing"
)

type event struct {
	line string
	ev   Event
}

// feed runs r over in delivered in pieces of at most step bytes, as the
// network might, and returns what it reported.
func feed(in []byte, step, limit int) []event {
	var r Reader
	var out []event
	var pending []byte
	for len(in) > 0 || len(pending) > 0 {
		n := min(step, len(in))
		pending = append(pending, in[:n]...)
		in = in[n:]
		for {
			line, used, ev := r.Next(pending, limit)
			if used < 0 || used > len(pending) {
				panic("used out of range")
			}
			pending = pending[used:]
			if ev != Wait {
				out = append(out, event{string(line), ev})
			}
			if ev == Flood {
				return out
			}
			if used == 0 && ev == Wait {
				break
			}
		}
		if n == 0 {
			break // nothing new and nothing complete
		}
	}
	return out
}

// However the bytes arrive, the lines and events are the same; lines never
// hold a line feed and never pass the limit.
func FuzzReaderSplitInvariance(f *testing.F) {
	f.Add([]byte("a LOGIN u p\r\nb NOOP\r\n"), uint8(1), uint16(16))
	f.Add(bytes.Repeat([]byte("x"), 300), uint8(7), uint16(64))
	f.Add([]byte("short\nbare lf\r\n\r\n"), uint8(3), uint16(4))
	f.Fuzz(func(t *testing.T, in []byte, step uint8, limit uint16) {
		lim := int(limit%512) + 1
		whole := feed(in, len(in)+1, lim)
		pieces := feed(in, int(step%16)+1, lim)
		if len(whole) != len(pieces) {
			t.Fatalf("whole %v, in pieces %v", whole, pieces)
		}
		for i := range whole {
			if whole[i] != pieces[i] {
				t.Fatalf("event %d: whole %v, in pieces %v", i, whole[i], pieces[i])
			}
			if l := whole[i].line; bytes.ContainsRune([]byte(l), '\n') || len(l) > lim {
				t.Fatalf("line %q (limit %d)", l, lim)
			}
		}
	})
}
