package imap

import (
	"strings"
	"testing"
)

// scanAll feeds in to a Stream in chunks of size and returns the heads of
// the lines it found and the offsets where they ended.
func scanAll(in string, size int) (heads []string, ends []int) {
	var s Stream
	b := []byte(in)
	off := 0
	for off < len(b) {
		end := min(off+size, len(b))
		chunk := b[off:end]
		for len(chunk) > 0 {
			n, done := s.Scan(chunk)
			chunk = chunk[n:]
			off += n
			if done {
				heads = append(heads, string(s.Head()))
				ends = append(ends, off)
			}
		}
	}
	return heads, ends
}

func TestStreamFindsLogicalLinesAcrossAnySplit(t *testing.T) {
	big := strings.Repeat("x\r\n", 3000) // literal data full of line ends
	in := "a1 SELECT INBOX\r\n" +
		"a2 APPEND INBOX (\\Seen) {9000}\r\n" + big + " more {5+}\r\n{x}\n\r\n" +
		"* 1 FETCH (BODY[] ~{3}\r\n)\r\n)\r\n" +
		"a3 LOGOUT\r\n" +
		"a4 NOOP {12345678901}\r\n" // not a literal: too many digits
	wantHeads := []string{"a1 SELECT INBOX", "a2 APPEND INBOX (\\Seen) {9000}", "* 1 FETCH (BODY[] ~{3}", "a3 LOGOUT", "a4 NOOP {12345678901}"}
	wantEnds := []int{17, 17 + 32 + 9000 + len(" more {5+}\r\n{x}\n\r\n")}
	for _, size := range []int{1, 2, 3, 7, 16, 64, 4096, len(in)} {
		heads, ends := scanAll(in, size)
		if strings.Join(heads, "|") != strings.Join(wantHeads, "|") {
			t.Fatalf("chunk %d: heads %q, want %q", size, heads, wantHeads)
		}
		if ends[0] != wantEnds[0] || ends[1] != wantEnds[1] || ends[len(ends)-1] != len(in) {
			t.Fatalf("chunk %d: ends %v", size, ends)
		}
	}
}

func TestStreamHeadIsBounded(t *testing.T) {
	long := "a1 SEARCH " + strings.Repeat("OR ", 500) + "ALL\r\nb2 NOOP\r\n"
	heads, _ := scanAll(long, 10)
	if len(heads) != 2 || len(heads[0]) != headSize || heads[1] != "b2 NOOP" {
		t.Fatalf("heads %q", heads)
	}
}

func TestCommandName(t *testing.T) {
	for head, want := range map[string]string{"a1 LOGOUT": "LOGOUT", "a2 uid fetch 1 (FLAGS)": "uid", "DONE": "", "x ": ""} {
		if _, got := CommandName([]byte(head)); string(got) != want {
			t.Errorf("%q: %q, want %q", head, got, want)
		}
	}
}

func BenchmarkStreamLiteral(b *testing.B) {
	chunk := make([]byte, 16<<10)
	hdr := []byte("* 1 FETCH (BODY[] {1073741824}\r\n")
	var s Stream
	s.Scan(hdr)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		if _, done := s.Scan(chunk); done {
			b.Fatal("line ended inside a literal")
		}
	}
}

// However a stream is split into reads, the same lines end at the same
// offsets with the same heads.
func FuzzStream(f *testing.F) {
	f.Add([]byte("a1 APPEND x {5}\r\nhello\r\na2 NOOP\r\n* 1 FETCH (BODY[] {3+}\r\nabc)\r\n"), uint8(3))
	f.Add([]byte("{4294967295}\r\n"), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		wantHeads, wantEnds := scanAll(string(data), len(data)+1)
		heads, ends := scanAll(string(data), int(split)%13+1)
		if strings.Join(heads, "\x00") != strings.Join(wantHeads, "\x00") || len(ends) != len(wantEnds) {
			t.Fatalf("split %d: heads %q, want %q", split%13+1, heads, wantHeads)
		}
		for i := range ends {
			if ends[i] != wantEnds[i] {
				t.Fatalf("split %d: ends %v, want %v", split%13+1, ends, wantEnds)
			}
		}
	})
}
