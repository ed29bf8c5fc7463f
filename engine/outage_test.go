package engine

import (
	"testing"
	"time"
)

// An outage is logged at its first failure, then once a minute with the
// failures in between, or at once when the reason changes; its end once.
func TestOutageLogsOncePerMinute(t *testing.T) {
	var o outage
	t0 := time.Unix(1_000_000, 0)
	step := func(after time.Duration, reason string, wantLog bool, wantN int) {
		t.Helper()
		log, n := o.failed(t0.Add(after), reason)
		if log != wantLog || n != wantN {
			t.Fatalf("failure at %v (%s): log %v for %d, want %v for %d", after, reason, log, n, wantLog, wantN)
		}
	}
	if away, n := o.reached(t0); away != 0 || n != 0 {
		t.Fatalf("a server never away: %v, %d", away, n)
	}
	step(0, "refused", true, 1)
	for i := 1; i <= 10; i++ {
		step(time.Duration(i)*time.Second, "refused", false, 0)
	}
	step(time.Minute, "refused", true, 11) // the ten held back and this one
	step(61*time.Second, "timed out", true, 1)
	step(62*time.Second, "timed out", false, 0)
	if away, n := o.reached(t0.Add(90 * time.Second)); away != 90*time.Second || n != 14 {
		t.Fatalf("back after 90 s and 14 failures: %v, %d", away, n)
	}
	if away, n := o.reached(t0.Add(100 * time.Second)); away != 0 || n != 0 {
		t.Fatalf("a second success: %v, %d", away, n)
	}
	step(200*time.Second, "refused", true, 1) // a new outage starts afresh
}
