package smtp

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// scanAll feeds in to a Commands in pieces of at most size bytes, acting
// as a relay would (DATA accepted, BDAT sizes skipped), and lists what it
// found.
func scanAll(in string, size int) []string {
	var c Commands
	var got []string
	b := []byte(in)
	for len(b) > 0 {
		piece := b[:min(size, len(b))]
		b = b[len(piece):]
		for len(piece) > 0 {
			n, ev := c.Scan(piece)
			piece = piece[n:]
			switch ev {
			case CommandEnd:
				line := c.Head()
				got = append(got, "cmd "+string(line))
				if bytes.EqualFold(Verb(line), []byte("DATA")) {
					c.StartContent()
				}
				if n, ok := ChunkSize(line); ok {
					c.SkipChunk(n)
				}
			case ContentEnd:
				got = append(got, "content end")
			case ChunkEnd:
				got = append(got, "chunk end")
			}
		}
	}
	if !c.Idle() {
		got = append(got, "not idle")
	}
	return got
}

func TestCommandsTellCommandsFromContent(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"pipelined transaction", "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: s\r\n\r\nQUIT\r\nRSET\r\n..leading dot\r\n.\r\nQUIT\r\n",
			[]string{"cmd MAIL FROM:<a@x>", "cmd RCPT TO:<b@y>", "cmd DATA", "content end", "cmd QUIT"}},
		{"empty message", "DATA\r\n.\r\nNOOP\r\n", []string{"cmd DATA", "content end", "cmd NOOP"}},
		{"dot lines that do not end it", "DATA\r\n.x\r\n. \r\n\r\n.\r\r\n.\n\n.\r\n\r\n.\r\nQUIT\r\n",
			[]string{"cmd DATA", "content end", "cmd QUIT"}},
		{"bare LF dot does not end it", "DATA\r\nline\n.\nQUIT\r\n.\r\nNOOP\r\n", []string{"cmd DATA", "content end", "cmd NOOP"}},
		{"CRs before the end", "DATA\r\na\r\r\r\n.\r\nNOOP\r\n", []string{"cmd DATA", "content end", "cmd NOOP"}},
		{"bdat chunks hold command lines", "BDAT 12\r\nQUIT\r\nRSET\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
			[]string{"cmd BDAT 12", "chunk end", "cmd BDAT 6 LAST", "chunk end", "cmd NOOP"}},
		{"empty bdat", "BDAT 0 LAST\r\nQUIT\r\n", []string{"cmd BDAT 0 LAST", "cmd QUIT"}},
		{"long line keeps its start", "MAIL FROM:<" + strings.Repeat("a", 300) + "@x>\r\nQUIT\r\n",
			[]string{"cmd MAIL FROM:<" + strings.Repeat("a", headSize-len("MAIL FROM:<")), "cmd QUIT"}},
		{"unfinished content", "DATA\r\nhalf a message\r\n", []string{"cmd DATA", "not idle"}},
		{"unfinished command", "NOOP\r\nQU", []string{"cmd NOOP", "not idle"}},
	} {
		for _, size := range []int{1, 2, 3, 5, 7, 64, 4096} {
			if got := scanAll(tc.in, size); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("%s, pieces of %d: got %q\nwant %q", tc.name, size, got, tc.want)
			}
		}
	}
}

func TestChunkSize(t *testing.T) {
	for line, want := range map[string]int64{"BDAT 10": 10, "bdat 0 last": 0, "BDAT 99999999999 LAST": 99999999999,
		"BDAT": -1, "BDAT x": -1, "BDAT -1": -1, "BDAT 5 NOW": -1, "BDAT 5 LAST more": -1, "DATA 5": -1} {
		n, ok := ChunkSize([]byte(line))
		if (want < 0) == ok || (ok && n != want) {
			t.Errorf("ChunkSize(%q) = %d, %v; want %d", line, n, ok, want)
		}
	}
}

func TestRepliesFindFinalLines(t *testing.T) {
	in := "250-mx\r\n250-SIZE\r\n250 OK\r\n354 go on\r\n5\r\n221 bye\n"
	type line struct {
		code      int
		last, ok  bool
		lineBytes int
	}
	want := []line{{250, false, true, 8}, {250, false, true, 10}, {250, true, true, 8}, {354, true, true, 11}, {0, true, false, 3}, {221, true, true, 8}}
	for _, size := range []int{1, 2, 4, 100} {
		var r Replies
		var got []line
		b, n := []byte(in), 0
		for len(b) > 0 {
			piece := b[:min(size, len(b))]
			b = b[len(piece):]
			for len(piece) > 0 {
				m, done := r.Scan(piece)
				piece, n = piece[m:], n+m
				if done {
					code, last, ok := r.Reply()
					got = append(got, line{code, last, ok, n})
					n = 0
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("pieces of %d: got %v, want %v", size, got, want)
		}
	}
}

// However a client's bytes are split into reads, the stream finds the same
// commands, content ends and chunk ends.
func FuzzCommandsSplit(f *testing.F) {
	f.Add("MAIL FROM:<a>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n", 3)
	f.Add("BDAT 5\r\nQUIT\r\nBDAT 0 LAST\r\nNOOP\r\n", 1)
	f.Add("DATA\r\n\r\n.\r\r\n.\r\n", 2)
	f.Fuzz(func(t *testing.T, in string, size int) {
		if size <= 0 || size > len(in) {
			return
		}
		whole, split := scanAll(in, len(in)), scanAll(in, size)
		if fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Fatalf("whole: %q\nin pieces of %d: %q", whole, size, split)
		}
	})
}
