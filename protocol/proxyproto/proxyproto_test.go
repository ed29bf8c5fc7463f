package proxyproto

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

func v2(cmd, fam byte, body []byte) []byte {
	h := append([]byte(nil), signature...)
	h = append(h, 0x20|cmd, fam, 0, 0)
	binary.BigEndian.PutUint16(h[14:], uint16(len(body)))
	return append(h, body...)
}

func TestParse(t *testing.T) {
	tcp4 := v2(1, 0x11, []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x30, 0x39, 0x03, 0xE1})
	tcp6 := v2(1, 0x21, append(append(netip.MustParseAddr("2001:db8::7").AsSlice(), netip.MustParseAddr("2001:db8::1").AsSlice()...), 0x30, 0x39, 0x03, 0xE1))
	for _, c := range []struct {
		name string
		in   string
		n    int
		src  string
		done bool
		bad  bool
	}{
		{"v1 tcp4", "PROXY TCP4 203.0.113.7 10.0.0.1 12345 993\r\nA1 LOGIN", 43, "203.0.113.7:12345", true, false},
		{"v1 tcp6", "PROXY TCP6 2001:db8::7 2001:db8::1 12345 993\r\n", 46, "[2001:db8::7]:12345", true, false},
		{"v1 unknown", "PROXY UNKNOWN\r\n", 15, "invalid AddrPort", true, false},
		{"v1 partial", "PROXY TCP4 203.0", 0, "invalid AddrPort", false, false},
		{"v1 wrong family", "PROXY TCP4 2001:db8::7 2001:db8::1 1 2\r\n", 0, "invalid AddrPort", false, true},
		{"v1 bad port", "PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", 0, "invalid AddrPort", false, true},
		{"v1 too long", "PROXY TCP4 " + string(make([]byte, 120)), 0, "invalid AddrPort", false, true},
		{"no header", "a1 CAPABILITY\r\n", 0, "invalid AddrPort", false, true},
		{"v2 tcp4", string(tcp4) + "rest", len(tcp4), "203.0.113.7:12345", true, false},
		{"v2 tcp6", string(tcp6), len(tcp6), "[2001:db8::7]:12345", true, false},
		{"v2 local", string(v2(0, 0, nil)), 16, "invalid AddrPort", true, false},
		{"v2 partial", string(tcp4[:20]), 0, "invalid AddrPort", false, false},
		{"v2 short body", string(v2(1, 0x11, []byte{1, 2})), 0, "invalid AddrPort", false, true},
		{"v2 bad signature", "\r\n\r\nX", 0, "invalid AddrPort", false, true},
	} {
		n, src, done, err := Parse([]byte(c.in))
		if (err != nil) != c.bad || n != c.n || done != c.done || src.String() != c.src {
			t.Errorf("%s: n %d src %s done %v err %v", c.name, n, src, done, err)
		}
	}
}

// Whatever arrives, in any split, Parse neither panics nor claims more
// bytes than it was given, and a header found whole is found in pieces.
func FuzzParse(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 10.0.0.1 12345 993\r\n"))
	f.Add(v2(1, 0x11, []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x30, 0x39, 0x03, 0xE1}))
	f.Fuzz(func(t *testing.T, in []byte) {
		n, src, done, err := Parse(in)
		if n < 0 || n > len(in) || (done && err != nil) {
			t.Fatalf("n %d of %d, done %v, err %v", n, len(in), done, err)
		}
		if !done || err != nil {
			return
		}
		for cut := 0; cut < n; cut++ {
			if _, _, d, e := Parse(in[:cut]); d || (e != nil) {
				t.Fatalf("prefix of %d bytes: done %v err %v (the whole header parses)", cut, d, e)
			}
		}
		if n2, src2, _, _ := Parse(in[:n]); n2 != n || src2 != src {
			t.Fatal("the header alone parses differently")
		}
	})
}
