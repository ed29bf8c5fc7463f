package upstream

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Exchange Online throttles a mailbox that a client works too hard: it
// answers "Request is throttled. Suggested Backoff Time: 299910
// milliseconds", at a login or at a command (often followed by "* BYE"
// and a close). Every login made meanwhile is refused the same way and
// may lengthen the penalty, so the proxy answers the mailbox's logins
// itself until the time the server asked for has passed.
const (
	// throttleHoldDefault is how long logins are held back when the
	// server says it throttles without saying for how long.
	throttleHoldDefault = time.Minute
	// throttleHoldMax bounds what a server (or a line that only looks
	// like its answer) can hold a mailbox for.
	throttleHoldMax = 15 * time.Minute
)

// Throttled is a login refused, by the server or by the proxy on its
// behalf, because the server throttles the mailbox: no verdict on the
// token. Its text is safe to show the client.
type Throttled struct {
	Said  string    // the server's words ("" when the proxy answered for it)
	Since time.Time // when the server throttled the mailbox
	Until time.Time // when the mailbox's logins go to the server again
}

func (e *Throttled) Error() string {
	// Whole seconds, rounded up: "in 0s" would send the client back early.
	left := (max(time.Until(e.Until), 0) + time.Second - 1).Truncate(time.Second)
	if e.Said != "" {
		return fmt.Sprintf("the server throttles this mailbox (it said: %s); try again in %s", e.Said, left)
	}
	return fmt.Sprintf("the server throttled this mailbox %s ago and asked for %s without logins; try again in %s",
		time.Since(e.Since).Round(time.Second), e.Until.Sub(e.Since).Round(time.Second), left)
}

// throttleWords is how a throttled request starts in Exchange's answers.
const throttleWords = "request is throttled"

// throttleFor reads the text of a server's refusal (after its status:
// "NO", "-ERR", "454"): whether it says the mailbox is throttled, and for
// how long the server asks to be left alone (bounded). The words must
// open the text (after a response code): a server that echoes a command
// in its refusal ("-ERR unknown command: ...") does not throttle.
func throttleFor(text string) (time.Duration, bool) {
	lower := strings.ToLower(strings.TrimSpace(text))
	if strings.HasPrefix(lower, "[") { // an IMAP or POP3 response code
		if end := strings.IndexByte(lower, ']'); end > 0 {
			lower = strings.TrimLeft(lower[end+1:], " ")
		}
	}
	// An SMTP reply code and enhanced status code (RFC 3463): 421 4.7.0.
	for range 2 {
		if code, rest, ok := strings.Cut(lower, " "); ok && code != "" && strings.Trim(code, "0123456789.") == "" {
			lower = strings.TrimLeft(rest, " ")
		}
	}
	if !strings.HasPrefix(lower, throttleWords) {
		return 0, false
	}
	rest := lower[len(throttleWords):]
	j := strings.Index(rest, "backoff time:")
	if j < 0 {
		return throttleHoldDefault, true
	}
	rest = strings.TrimLeft(rest[j+len("backoff time:"):], " ")
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	ms, err := strconv.ParseInt(rest[:n], 10, 64)
	if err != nil || ms <= 0 {
		return throttleHoldDefault, true
	}
	if ms > throttleHoldMax.Milliseconds() {
		return throttleHoldMax, true
	}
	return time.Duration(ms) * time.Millisecond, true
}

// throttleTail is how far from a chunk's end ThrottleAtEnd looks: the
// refusal line and a "* BYE" after it.
const throttleTail = 256

// ThrottleAtEnd looks at the end of a chunk the server sent for a
// throttled command's answer at the start of a line ("<tag> NO|BAD
// Request is throttled...", "* BAD ...", "-ERR ..."), and returns what
// it says, or nil. The relay calls it for every chunk from the server and
// heeds it if that chunk was the last before the session ended, so it
// looks at the last throttleTail bytes only.
func ThrottleAtEnd(chunk []byte) *Throttled {
	tail := chunk[max(len(chunk)-throttleTail, 0):]
	i := bytes.Index(tail, []byte("is throttled"))
	if i < 0 {
		return nil
	}
	start := bytes.LastIndexByte(tail[:i], '\n') + 1
	if start == 0 && len(tail) < len(chunk) {
		return nil // the line starts before the tail: not an answer line
	}
	end := i + bytes.IndexByte(tail[i:], '\n')
	if end < i {
		end = len(tail)
	}
	line := bytes.TrimRight(tail[start:end], "\r")
	text, ok := refusalText(line)
	if !ok {
		return nil
	}
	d, ok := throttleFor(string(text))
	if !ok {
		return nil
	}
	return newThrottled(string(line), d)
}

// refusalText returns the text of a server's refusal of a command: IMAP
// "<tag> NO|BAD text" (the tag may be "*"), POP3 "-ERR text", SMTP
// "4xx text" or "5xx text"; ok false for any other line.
func refusalText(line []byte) (text []byte, ok bool) {
	if rest, ok := bytes.CutPrefix(line, []byte("-ERR")); ok {
		return rest, true
	}
	if len(line) >= 4 && (line[0] == '4' || line[0] == '5') && isDigit(line[1]) && isDigit(line[2]) && (line[3] == ' ' || line[3] == '-') {
		return line[4:], true
	}
	_, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return nil, false
	}
	word, text, _ := bytes.Cut(rest, []byte(" "))
	if bytes.EqualFold(word, []byte("NO")) || bytes.EqualFold(word, []byte("BAD")) {
		return text, true
	}
	return nil, false
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// throttledSaid is the error for a server's refusal that says the mailbox
// is throttled, or nil if text says nothing of the kind.
func throttledSaid(text string) *Throttled {
	d, ok := throttleFor(text)
	if !ok {
		return nil
	}
	return newThrottled(text, d)
}

// newThrottled is the mailbox throttled from now for d, as said.
func newThrottled(said string, d time.Duration) *Throttled {
	now := time.Now()
	return &Throttled{Said: truncate([]byte(said)), Since: now, Until: now.Add(d)}
}
