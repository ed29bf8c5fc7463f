package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Abuse is the abuse scenario: honest clients polling alone, then while
// each kind of hostile client runs.
type Abuse struct {
	Clean *AbuseRow  `json:"clean"`
	Kinds []AbuseRow `json:"kinds"`
}

// AbuseRow is one phase of the abuse scenario.
type AbuseRow struct {
	Kind  string `json:"kind"`
	Alive bool   `json:"proxy_alive"`
	// HostileConnections the hostile clients opened.
	HostileConnections int64 `json:"hostile_connections"`
	// PeakRSSGrowthMB is the proxy's largest RSS during the phase less
	// its RSS at the start.
	PeakRSSGrowthMB float64 `json:"peak_rss_growth_mb"`
	// The honest clients' logins and errors.
	Login        Pct      `json:"honest_login_ms"`
	Cycles       int      `json:"honest_cycles"`
	Errors       int      `json:"honest_errors"`
	ErrorSamples []string `json:"honest_error_samples,omitempty"`
	// Goroutines of the proxy and authenticated upstream sessions (mailbox
	// slots) before the phase and once the hostile clients have left; -1:
	// unknown.
	GoroutinesBefore int `json:"goroutines_before"`
	GoroutinesAfter  int `json:"goroutines_after"`
	SessionsBefore   int `json:"upstream_sessions_before"`
	SessionsAfter    int `json:"upstream_sessions_after"`
	// SettledS is how long after the phase goroutines and sessions were
	// back to where they were (-1: not within the limit).
	SettledS float64 `json:"settled_s"`
}

// writeAbuse prints the abuse scenario for a terminal.
func (rep *Report) writeAbuse(w io.Writer) {
	a := rep.Abuse
	if a == nil {
		return
	}
	fmt.Fprintln(w, "\nabuse: honest POP3 clients polling while each kind of hostile client runs")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "hostile kind\talive\thostile conns\tpeak RSS growth\thonest login p50\tp99\tcycles\terrors\tgoroutines before→after\tup sessions before→after\tsettled in\t")
	rows := a.Kinds
	if a.Clean != nil {
		rows = append([]AbuseRow{*a.Clean}, rows...)
	}
	for _, r := range rows {
		settled := "not in time"
		if r.SettledS >= 0 {
			settled = fmt.Sprintf("%.1f s", r.SettledS)
		}
		alive := "yes"
		if !r.Alive {
			alive = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f MB\t%.1f ms\t%.1f ms\t%d\t%d\t%s→%s\t%d→%d\t%s\t\n", r.Kind, alive, r.HostileConnections,
			r.PeakRSSGrowthMB, r.Login.P50, r.Login.P99, r.Cycles, r.Errors, count(r.GoroutinesBefore), count(r.GoroutinesAfter),
			r.SessionsBefore, r.SessionsAfter, settled)
	}
	tw.Flush()
	for _, r := range rows {
		if len(r.ErrorSamples) > 0 {
			fmt.Fprintf(w, "%s: honest errors: %s\n", r.Kind, strings.Join(r.ErrorSamples, "; "))
		}
	}
}

func count(n int) string {
	if n < 0 {
		return "?"
	}
	return fmt.Sprint(n)
}
