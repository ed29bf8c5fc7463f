// Package report turns load phases into the bench harness's results: a
// table for the terminal, JSON for machines and an HTML page with plots
// for people.
package report

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emailproxy/emailproxy/bench/load"
)

// Report is one harness run.
type Report struct {
	Started  time.Time         `json:"started"`
	Machine  Machine           `json:"machine"`
	Settings map[string]string `json:"settings"`
	Results  []Result          `json:"results"`
	Idle     *Idle             `json:"idle,omitempty"`
	Abuse    *Abuse            `json:"abuse,omitempty"`
	Fleet    *Fleet            `json:"fleet,omitempty"`
	// ProxyMemory is the proxy's RSS over the whole run.
	ProxyMemory []Point `json:"proxy_memory,omitempty"`
	Marks       []Mark  `json:"marks,omitempty"` // phase starts on ProxyMemory's time axis
}

// Machine says where the figures come from.
type Machine struct {
	CPU    string `json:"cpu"`
	Cores  int    `json:"cores"`
	Go     string `json:"go"`
	Kernel string `json:"kernel"`
}

// Point is one (x, y) of a plot.
type Point struct {
	X float64 `json:"x"`
	Y float64 `json:"y"`
}

// Mark labels a time on the memory plot.
type Mark struct {
	At    float64 `json:"at_s"`
	Label string  `json:"label"`
}

// Result is one scenario, direct and through the proxy.
type Result struct {
	Scenario string `json:"scenario"`
	Direct   *Mode  `json:"direct,omitempty"`
	Proxy    *Mode  `json:"proxy,omitempty"`
	// Ratios are proxy / direct: below 1 the proxy is faster (latency)
	// or slower (rates).
	CycleP50Ratio   float64 `json:"cycle_p50_ratio,omitempty"`
	LoginP50Ratio   float64 `json:"login_p50_ratio,omitempty"`
	ThroughputRatio float64 `json:"throughput_ratio,omitempty"` // median download rate, bulk scenarios
}

// Mode is one phase's figures.
type Mode struct {
	Cycles       int      `json:"cycles"`
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	Seconds      float64  `json:"seconds"`
	SessionsPerS float64  `json:"sessions_per_s"`
	Login        Pct      `json:"login_ms"`
	Cycle        Pct      `json:"cycle_ms"`
	MBPerS       float64  `json:"mb_per_s"`
	// TransferMBPerS is the median rate of one message download, from the
	// request to the last byte (bulk scenarios).
	TransferMBPerS float64 `json:"transfer_mb_per_s,omitempty"`
	// Measured on the proxy process (proxy mode only).
	ProxyCPUPerSessionUs float64 `json:"proxy_cpu_per_session_us,omitempty"`
	ProxyCPUPercent      float64 `json:"proxy_cpu_percent,omitempty"`
	ProxyRSSPeakMB       float64 `json:"proxy_rss_peak_mb,omitempty"`
	UpstreamLogins       int     `json:"upstream_logins"`
	TokenRequests        int     `json:"token_requests"`
	// Upstream TLS handshakes during the phase and how many resumed a
	// session (proxy mode, our proxy).
	UpstreamHandshakes int64 `json:"upstream_tls_handshakes,omitempty"`
	UpstreamResumed    int64 `json:"upstream_tls_resumed,omitempty"`
	// Profile is where the proxy spent its CPU (with --profile).
	Profile *load.CPUProfile `json:"profile,omitempty"`
	// For the plots.
	CDF        []Point `json:"cycle_cdf,omitempty"`  // cycle ms -> fraction
	Throughput []Point `json:"throughput,omitempty"` // s -> cycles/s
}

// Pct holds percentiles in milliseconds.
type Pct struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
}

// Idle is the memory the proxy spends per held connection.
type Idle struct {
	PreLogin      int     `json:"pre_login_connections"`
	PreLoginRSSKB float64 `json:"pre_login_rss_kb_each"`
	PreLoginGoKB  float64 `json:"pre_login_go_kb_each"` // heap + stacks, after GC; -1 unknown
	Sessions      int     `json:"authenticated_sessions"`
	SessionRSSKB  float64 `json:"session_rss_kb_each"`
	SessionGoKB   float64 `json:"session_go_kb_each"`
	// SessionStackKB is the goroutine stacks' part of SessionGoKB.
	SessionStackKB float64 `json:"session_stack_kb_each,omitempty"`
	// SessionsParked: sessions whose relay had parked both directions
	// (no goroutine) when the figures above were read, after waiting for
	// the proxy's --park-after. The Active figures were read before, half
	// a second after the sessions were opened.
	SessionsParked       int     `json:"sessions_parked"`
	SessionActiveRSSKB   float64 `json:"session_active_rss_kb_each,omitempty"`
	SessionActiveGoKB    float64 `json:"session_active_go_kb_each,omitempty"`
	SessionActiveStackKB float64 `json:"session_active_stack_kb_each,omitempty"`
	// Stalled sessions: a large download in flight to a client that
	// stopped reading.
	Stalled      int      `json:"stalled_sessions"`
	StalledRSSKB float64  `json:"stalled_rss_kb_each"`
	StalledGoKB  float64  `json:"stalled_go_kb_each"`
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	// Together: the sessions and the pre-login clients held at once.
	Together *Together `json:"together,omitempty"`
}

// Together is the idle scenario's sessions and pre-login clients held at
// the same time by one proxy process.
type Together struct {
	Sessions     int      `json:"authenticated_sessions"`
	PreLogin     int      `json:"pre_login_connections"`
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	RSSMB        float64  `json:"rss_mb"`
	GrowthMB     float64  `json:"rss_growth_mb"`
	PollOK       bool     `json:"poll_ok"`               // a fresh poll worked while all were held
	Parked       int      `json:"sessions_parked"`       // when RSS was read
	HeldAnswers  bool     `json:"held_session_answered"` // one held session ended its IDLE and was answered
}

// Summarize computes a phase's figures.
func Summarize(ph *load.Phase) *Mode {
	m := &Mode{Cycles: len(ph.Samples), Errors: ph.Errors, ErrorSamples: ph.ErrorMsg, Seconds: ph.Elapsed.Seconds()}
	if m.Seconds > 0 {
		m.SessionsPerS = float64(m.Cycles) / m.Seconds
	}
	logins := make([]float64, 0, len(ph.Samples))
	cycles := make([]float64, 0, len(ph.Samples))
	var bytes int64
	var rates []float64
	for _, s := range ph.Samples {
		logins = append(logins, ms(s.Login))
		cycles = append(cycles, ms(s.Cycle))
		bytes += s.Bytes
		if s.Transfer > 0 && s.Bytes >= 1<<20 {
			rates = append(rates, float64(s.Bytes)/(1<<20)/s.Transfer.Seconds())
		}
	}
	m.TransferMBPerS = percentiles(rates).P50
	m.Login, m.Cycle = percentiles(logins), percentiles(cycles)
	if m.Seconds > 0 {
		m.MBPerS = round(float64(bytes) / (1 << 20) / m.Seconds) // all clients together
	}
	m.CDF = cdf(cycles, 100)
	m.Throughput = throughput(ph)
	return m
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentiles(v []float64) Pct {
	if len(v) == 0 {
		return Pct{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Pct{P50: round(at(0.50)), P90: round(at(0.90)), P99: round(at(0.99))}
}

func round(x float64) float64 { return math.Round(x*100) / 100 }

// cdf samples the distribution of v at n points.
func cdf(v []float64, n int) []Point {
	if len(v) == 0 {
		return nil
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	var out []Point
	for i := 0; i <= n; i++ {
		k := min(i*(len(s)-1)/n, len(s)-1)
		out = append(out, Point{X: round(s[k]), Y: float64(k+1) / float64(len(s))})
	}
	return out
}

// throughput is completed cycles per second, per whole second of the
// phase (a last partial second would read as a drop).
func throughput(ph *load.Phase) []Point {
	secs := int(ph.Elapsed.Seconds())
	if secs == 0 {
		return nil
	}
	counts := make([]float64, secs)
	for _, s := range ph.Samples {
		i := int((s.At + s.Cycle).Seconds())
		if i >= 0 && i < secs {
			counts[i]++
		}
	}
	out := make([]Point, secs)
	for i, c := range counts {
		out[i] = Point{X: float64(i), Y: c}
	}
	return out
}

// Compare fills r's ratios from its two modes.
func (r *Result) Compare() {
	if r.Direct == nil || r.Proxy == nil {
		return
	}
	ratio := func(p, d float64) float64 {
		if d == 0 {
			return 0
		}
		return round(p / d)
	}
	r.CycleP50Ratio = ratio(r.Proxy.Cycle.P50, r.Direct.Cycle.P50)
	r.LoginP50Ratio = ratio(r.Proxy.Login.P50, r.Direct.Login.P50)
	if r.Direct.TransferMBPerS > 0 {
		r.ThroughputRatio = ratio(r.Proxy.TransferMBPerS, r.Direct.TransferMBPerS)
	}
}

// WriteTable prints the results for a terminal.
func (rep *Report) WriteTable(w io.Writer) {
	if len(rep.Results) > 0 {
		rep.writeResults(w)
	}
	rep.writeIdle(w)
	rep.writeProfiles(w)
	rep.writeAbuse(w)
	rep.writeFleet(w)
}

// writeProfiles prints, per scenario profiled, where the proxy's CPU went.
func (rep *Report) writeProfiles(w io.Writer) {
	for _, r := range rep.Results {
		m := r.Proxy
		if m == nil || m.Profile == nil {
			continue
		}
		p := m.Profile
		fmt.Fprintf(w, "\nprofile of the proxy, %s (%.0f s, %.1f CPU-seconds sampled", r.Scenario, p.Seconds, p.CPUs)
		if m.UpstreamHandshakes > 0 {
			fmt.Fprintf(w, "; upstream TLS handshakes: %d, %d resumed", m.UpstreamHandshakes, m.UpstreamResumed)
		}
		if p.File != "" {
			fmt.Fprintf(w, "; go tool pprof %s", p.File)
		}
		fmt.Fprintln(w, ")")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  area\tcum\t\ttop function\tflat\tcum\t")
		for i := 0; i < max(len(p.Areas), len(p.Top)); i++ {
			var a, t string
			if i < len(p.Areas) {
				a = fmt.Sprintf("  %s\t%.1f%%\t", p.Areas[i].Name, p.Areas[i].Cum)
			} else {
				a = "\t\t"
			}
			if i < len(p.Top) {
				t = fmt.Sprintf("\t%s\t%.1f%%\t%.1f%%\t", shortFunc(p.Top[i].Name), p.Top[i].Flat, p.Top[i].Cum)
			}
			fmt.Fprintln(tw, a+t)
		}
		tw.Flush()
	}
}

// shortFunc drops the module path of our own functions.
func shortFunc(name string) string {
	return strings.TrimPrefix(name, "github.com/emailproxy/emailproxy/")
}

func (rep *Report) writeResults(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tmode\tcycles\terrors\tsess/s\tlogin p50\tp90\tp99\tcycle p50\tp90\tp99\tMB/s\tdownload MB/s\tproxy CPU/sess\tproxy RSS\tup logins\ttoken reqs\t")
	for _, r := range rep.Results {
		for _, m := range []struct {
			name string
			m    *Mode
		}{{"direct", r.Direct}, {"proxy", r.Proxy}} {
			if m.m == nil {
				continue
			}
			x := m.m
			cpu, rss := "", ""
			if x.ProxyCPUPerSessionUs > 0 {
				cpu = fmt.Sprintf("%.0f µs", x.ProxyCPUPerSessionUs)
			}
			if x.ProxyRSSPeakMB > 0 {
				rss = fmt.Sprintf("%.1f MB", x.ProxyRSSPeakMB)
			}
			mbs, dl := "", ""
			if x.MBPerS >= 0.1 {
				mbs = fmt.Sprintf("%.1f", x.MBPerS)
			}
			if x.TransferMBPerS > 0 {
				dl = fmt.Sprintf("%.1f", x.TransferMBPerS)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%.1f ms\t%.1f\t%.1f\t%.1f ms\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%d\t%d\t\n",
				r.Scenario, m.name, x.Cycles, x.Errors, x.SessionsPerS, x.Login.P50, x.Login.P90, x.Login.P99,
				x.Cycle.P50, x.Cycle.P90, x.Cycle.P99, mbs, dl, cpu, rss, x.UpstreamLogins, x.TokenRequests)
		}
	}
	tw.Flush()
	var ratios []string
	for _, r := range rep.Results {
		if r.CycleP50Ratio == 0 {
			continue
		}
		s := fmt.Sprintf("%s: cycle p50 %.2f×, login p50 %.2f×", r.Scenario, r.CycleP50Ratio, r.LoginP50Ratio)
		if r.ThroughputRatio > 0 {
			s += fmt.Sprintf(", download MB/s %.2f×", r.ThroughputRatio)
		}
		ratios = append(ratios, s)
	}
	if len(ratios) > 0 {
		fmt.Fprintln(w, "\nproxy / direct:")
		for _, s := range ratios {
			fmt.Fprintln(w, "  "+s)
		}
	}
	for _, r := range rep.Results {
		for _, m := range []*Mode{r.Direct, r.Proxy} {
			if m != nil && len(m.ErrorSamples) > 0 {
				fmt.Fprintf(w, "\n%s errors: %s\n", r.Scenario, strings.Join(m.ErrorSamples, "; "))
			}
		}
	}
}

func (rep *Report) writeIdle(w io.Writer) {
	if i := rep.Idle; i != nil {
		fmt.Fprintln(w, "\nidle connections held by the proxy:")
		if i.PreLogin > 0 {
			fmt.Fprintf(w, "  %d pre-login clients: %s RSS each, %s Go heap+stack each\n", i.PreLogin, rss(i.PreLoginRSSKB), kb(i.PreLoginGoKB))
		}
		if i.Sessions > 0 {
			if i.SessionActiveGoKB != 0 {
				fmt.Fprintf(w, "  %d authenticated IDLE sessions (client + upstream TLS), 0.5 s after opening: %s RSS each, %s Go heap+stack each (stacks %s)\n",
					i.Sessions, rss(i.SessionActiveRSSKB), kb(i.SessionActiveGoKB), kb(i.SessionActiveStackKB))
			}
			fmt.Fprintf(w, "  %d authenticated IDLE sessions (client + upstream TLS), %d parked: %s RSS each, %s Go heap+stack each (stacks %s)\n",
				i.Sessions, i.SessionsParked, rss(i.SessionRSSKB), kb(i.SessionGoKB), kb(i.SessionStackKB))
		}
		if i.Stalled > 0 {
			fmt.Fprintf(w, "  %d sessions relaying a large message to a client that stopped reading: %s RSS each, %s Go heap+stack each\n",
				i.Stalled, rss(i.StalledRSSKB), kb(i.StalledGoKB))
		}
		if t := i.Together; t != nil {
			poll := "a fresh poll worked"
			if !t.PollOK {
				poll = "a fresh poll FAILED"
			}
			if t.HeldAnswers {
				poll += ", a held session answered"
			} else {
				poll += ", a held session did NOT answer"
			}
			fmt.Fprintf(w, "  together: %d sessions (%d parked) + %d pre-login clients at once, %d errors, proxy RSS %.1f MB (+%.1f MB); %s\n",
				t.Sessions, t.Parked, t.PreLogin, t.Errors, t.RSSMB, t.GrowthMB, poll)
			if len(t.ErrorSamples) > 0 {
				fmt.Fprintf(w, "  together: errors: %s\n", strings.Join(t.ErrorSamples, "; "))
			}
		}
		if i.Errors > 0 || len(i.ErrorSamples) > 0 {
			fmt.Fprintf(w, "  %d errors: %s\n", i.Errors, strings.Join(i.ErrorSamples, "; "))
		}
	}
}

// rss shows an RSS difference; it is negative when the proxy handed
// memory from an earlier phase back to the system meanwhile.
func rss(v float64) string {
	if v < 0 {
		return "(not measurable: memory from an earlier phase was returned to the system)"
	}
	return fmt.Sprintf("%.2f KB", v)
}

func kb(v float64) string {
	if v < 0 {
		return "(unknown)"
	}
	return fmt.Sprintf("%.2f KB", v)
}
