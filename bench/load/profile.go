package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// Share is one function's or area's part of a CPU profile, in percent of
// the samples: Flat where it is the running function, Cum where it is
// anywhere on the stack.
type Share struct {
	Name string  `json:"name"`
	Flat float64 `json:"flat_pct,omitempty"`
	Cum  float64 `json:"cum_pct"`
}

// CPUProfile summarises where the proxy spent its CPU during a phase.
type CPUProfile struct {
	Seconds float64 `json:"seconds"`
	CPUs    float64 `json:"cpu_s"` // CPU time sampled
	Top     []Share `json:"top"`   // by flat share
	Areas   []Share `json:"areas"` // by cumulative share, see profileAreas
	File    string  `json:"file,omitempty"`
}

// profileAreas name the costs a session may carry, each by the functions
// (name prefixes) whose presence on a stack charges a sample to it.
var profileAreas = []struct {
	name     string
	prefixes []string
}{
	{"TLS handshakes", []string{"crypto/tls.(*Conn).clientHandshake", "crypto/tls.(*Conn).serverHandshake"}},
	{"  key exchange (ECDH, ML-KEM)", []string{"crypto/ecdh.", "crypto/internal/fips140/mlkem.", "crypto/internal/fips140/ecdh.", "crypto/mlkem."}},
	{"  certificate verification", []string{"crypto/tls.(*Conn).verifyServerCertificate"}},
	{"TLS records (AES-GCM, ChaCha20)", []string{"crypto/tls.(*halfConn).encrypt", "crypto/tls.(*halfConn).decrypt"}},
	{"logging", []string{"github.com/rs/zerolog."}},
	{"system calls", []string{"syscall.Syscall", "syscall.RawSyscall", "internal/runtime/syscall/", "syscall.syscall"}},
	{"allocation", []string{"runtime.mallocgc"}},
	{"garbage collection", []string{"runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.gcDrain"}},
	{"scheduler", []string{"runtime.schedule", "runtime.findRunnable"}},
	{"goroutine starts and exits", []string{"runtime.newproc", "runtime.goexit0"}},
	{"gnet event loop", []string{"github.com/panjf2000/gnet/v2."}},
	{"token and password checks", []string{"github.com/emailproxy/emailproxy/auth."}},
}

// ProfileCPU takes a CPU profile of the proxy through its --stats-addr
// for d, saves it to file (if not empty; open it with `go tool pprof`),
// and summarises it.
func ProfileCPU(ctx context.Context, statsAddr string, d time.Duration, file string) (*CPUProfile, error) {
	secs := max(int(d/time.Second), 1)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", statsAddr, secs), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("profile: %s", resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if file != "" {
		if err := os.WriteFile(file, data, 0o644); err != nil {
			return nil, err
		}
	}
	p, err := profile.ParseData(data)
	if err != nil {
		return nil, err
	}
	sum := SummarizeProfile(p, 12)
	sum.Seconds, sum.File = float64(secs), file
	return sum, nil
}

// SummarizeProfile returns the top functions by flat CPU and the areas'
// cumulative shares of p.
func SummarizeProfile(p *profile.Profile, top int) *CPUProfile {
	value := len(p.SampleType) - 1 // cpu nanoseconds is the last
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			value = i
		}
	}
	var total int64
	flat, cum := map[string]int64{}, map[string]int64{}
	areas := make([]int64, len(profileAreas))
	for _, s := range p.Sample {
		v := s.Value[value]
		total += v
		seen := map[string]bool{}
		hit := make([]bool, len(profileAreas))
		for li, loc := range s.Location {
			for fi, line := range loc.Line {
				if line.Function == nil {
					continue
				}
				name := line.Function.Name
				if li == 0 && fi == 0 {
					flat[name] += v
				}
				if !seen[name] {
					seen[name] = true
					cum[name] += v
				}
				for ai, a := range profileAreas {
					for _, prefix := range a.prefixes {
						if !hit[ai] && strings.HasPrefix(name, prefix) {
							hit[ai] = true
							areas[ai] += v
						}
					}
				}
			}
		}
	}
	out := &CPUProfile{CPUs: float64(total) / 1e9}
	if total == 0 {
		return out
	}
	pct := func(v int64) float64 { return float64(v) * 100 / float64(total) }
	names := make([]string, 0, len(flat))
	for n := range flat {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return flat[names[i]] > flat[names[j]] })
	for _, n := range names[:min(top, len(names))] {
		out.Top = append(out.Top, Share{Name: n, Flat: pct(flat[n]), Cum: pct(cum[n])})
	}
	for i, a := range profileAreas {
		out.Areas = append(out.Areas, Share{Name: a.name, Cum: pct(areas[i])})
	}
	return out
}

// ReadHandshakes sums the upstream TLS handshakes a proxy has completed
// over its server sections, and how many resumed a session, from its
// --stats-addr endpoint.
func ReadHandshakes(statsAddr string) (total, resumed int64, err error) {
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + statsAddr + "/debug/vars")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var vars struct {
		Emailproxy struct {
			Warm map[string]struct{ Handshakes, Resumed int64 }
		} `json:"emailproxy"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		return 0, 0, err
	}
	for _, w := range vars.Emailproxy.Warm {
		total += w.Handshakes
		resumed += w.Resumed
	}
	return total, resumed, nil
}

// SaveHeapProfile writes the proxy's live heap (after a collection) to
// file, for `go tool pprof -sample_index=inuse_space`.
func SaveHeapProfile(statsAddr, file string) error {
	cl := http.Client{Timeout: 30 * time.Second}
	resp, err := cl.Get("http://" + statsAddr + "/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile: %s", resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, data, 0o644)
}
