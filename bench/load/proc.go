package load

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

var timeZero time.Time

// clockTick is the kernel's USER_HZ: /proc reports CPU time in these.
const clockTick = 100

// ProcStat is one reading of a process's CPU time and memory.
type ProcStat struct {
	CPU time.Duration // user + system
	RSS int64         // resident set, bytes
}

// ReadProc reads /proc/PID/stat and /proc/PID/status.
func ReadProc(pid int) (ProcStat, error) {
	var ps ProcStat
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	rest := stat[bytes.LastIndexByte(stat, ')')+1:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return ps, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	ps.CPU = time.Duration(utime+stime) * time.Second / clockTick
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			ps.RSS = kb << 10
		}
	}
	return ps, nil
}

// GoMem is the Go runtime's view of a proxy's memory, from its
// --stats-addr endpoint.
type GoMem struct {
	HeapInuse  int64 `json:"heap_inuse"`
	StackInuse int64 `json:"stack_inuse"`
	Goroutines int   `json:"goroutines"`
	Parked     int   `json:"parked"` // relay directions without a goroutine
}

// ReadGoMem asks a proxy's stats endpoint for live memory after a GC.
func ReadGoMem(statsAddr string) (GoMem, error) { return readGoMem(statsAddr, "") }

// SettleGoMem is ReadGoMem after the proxy has returned the memory it can
// to the operating system: take it before an RSS baseline.
func SettleGoMem(statsAddr string) (GoMem, error) { return readGoMem(statsAddr, "?free=1") }

func readGoMem(statsAddr, query string) (GoMem, error) {
	var m GoMem
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + statsAddr + "/debug/heap" + query)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("stats endpoint: %s", resp.Status)
	}
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

// Sampler records a process's RSS and CPU over time.
type Sampler struct {
	pid   int
	start time.Time
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	samples []TimedStat
}

// TimedStat is a ProcStat at a time since the run started.
type TimedStat struct {
	At time.Duration
	ProcStat
}

// StartSampler reads pid every interval until Stop.
func StartSampler(pid int, every time.Duration) *Sampler {
	s := &Sampler{pid: pid, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if ps, err := ReadProc(pid); err == nil {
				s.mu.Lock()
				s.samples = append(s.samples, TimedStat{At: time.Since(s.start), ProcStat: ps})
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Since is how long the sampler has run: the time axis of its samples.
func (s *Sampler) Since() time.Duration { return time.Since(s.start) }

// Stop ends sampling and returns the samples.
func (s *Sampler) Stop() []TimedStat {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}
