package textline

import (
	"strings"
	"testing"
)

func TestCut(t *testing.T) {
	for _, c := range []struct {
		in   string
		line string
		used int
		st   Status
	}{
		{"abc\r\ndef", "abc", 5, Line},
		{"abc\ndef", "abc", 4, Line},
		{"\r\n", "", 2, Line},
		{"abc", "", 0, NeedMore},
		{"abcdefghij", "", 0, TooLong},
		{"abcdefgh\r\n", "abcdefgh", 10, Line},
		{"abcdefghi\r\n", "", 0, TooLong},
	} {
		line, used, st := Cut([]byte(c.in), 8)
		if string(line) != c.line || used != c.used || st != c.st {
			t.Errorf("Cut(%q) = %q %d %v", c.in, line, used, st)
		}
	}
}

func TestReaderDropsOverlongLines(t *testing.T) {
	var r Reader
	in := []byte(strings.Repeat("x", 20) + "\r\nok\r\n")
	_, used, ev := r.Next(in, 8)
	if ev != Overlong || used != 0 {
		t.Fatalf("first: %v %d", ev, used)
	}
	_, used, ev = r.Next(in, 8)
	if ev != Wait || used != 22 {
		t.Fatalf("skip: %v %d", ev, used)
	}
	line, _, ev := r.Next(in[used:], 8)
	if ev != Got || string(line) != "ok" {
		t.Fatalf("after: %v %q", ev, line)
	}
	r = Reader{}
	r.Next([]byte(strings.Repeat("y", 100)), 8)
	flood := false
	for i := 0; i < 100 && !flood; i++ {
		_, _, ev := r.Next([]byte(strings.Repeat("y", 4096)), 8)
		flood = ev == Flood
	}
	if !flood {
		t.Fatal("an endless line was never reported")
	}
}

func TestEqualFoldAndWord(t *testing.T) {
	if !EqualFold([]byte("login"), "LOGIN") || EqualFold([]byte("logi"), "LOGIN") || EqualFold([]byte("LOGIN"), "LOGON") {
		t.Fatal("EqualFold")
	}
	w, rest := Word([]byte("USER a b"))
	if string(w) != "USER" || string(rest) != "a b" {
		t.Fatal("Word")
	}
	if w, rest := Word([]byte("QUIT")); string(w) != "QUIT" || rest != nil {
		t.Fatal("Word without space")
	}
}

func TestAppendText(t *testing.T) {
	for in, want := range map[string]string{
		"plain text":              "plain text",
		"a\r\nb":                  "a  b",
		"nul\x00 esc\x1b del\x7f": "nul  esc  del ",
		"tab\tutf-8 é":            "tab utf-8 é",
	} {
		if got := string(AppendText([]byte(">"), in)); got != ">"+want {
			t.Errorf("AppendText(%q) = %q, want %q", in, got, ">"+want)
		}
	}
}
