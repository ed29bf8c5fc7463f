//go:build linux

package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// --park-after: a quiet session parks (the stats endpoint's /debug/heap
// counts its two directions) and still answers when the client speaks;
// --park-after 0 turns parking off.
func TestParkAfterFlag(t *testing.T) {
	up, dir := startUpstream(t)
	for _, tc := range []struct {
		flag   string
		parked string
	}{{"50ms", `"parked":2`}, {"0", `"parked":0`}} {
		t.Run(tc.flag, func(t *testing.T) {
			statsAddr := freeAddr(t)
			_, c, br, _ := runWithIMAP(t, up, dir, "--stats-addr", statsAddr, "--park-after", tc.flag)
			fmt.Fprint(c, "L LOGIN a@x pw\r\n")
			if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "L OK") {
				t.Fatalf("login: %q", l)
			}
			time.Sleep(300 * time.Millisecond) // six times --park-after, for the 50ms case
			var body string
			for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if _, body = get(t, "http://"+statsAddr+"/debug/heap"); strings.Contains(body, tc.parked) {
					break
				}
			}
			if !strings.Contains(body, tc.parked) {
				t.Fatalf("/debug/heap: %s, want %s", body, tc.parked)
			}
			fmt.Fprint(c, "N NOOP\r\n")
			if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "N OK") {
				t.Fatalf("NOOP after parking: %q", l)
			}
		})
	}
}
