package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Fleet is the fleet scenario: the same POP3 pollers through one proxy,
// through two proxies that share nothing, and through two sharing Redis
// (--cache-store redis://), with a per-mailbox cap.
type Fleet struct {
	Mailboxes int `json:"mailboxes"`
	Clients   int `json:"clients"`
	Cap       int `json:"mailbox_limit"`
	// ProviderLimit is the mock provider's own per-mailbox cap (0: none).
	ProviderLimit int        `json:"provider_mailbox_limit"`
	Rows          []FleetRow `json:"setups"`
}

// FleetRow is one setup of the fleet scenario.
type FleetRow struct {
	Setup        string   `json:"setup"`
	Instances    int      `json:"instances"`
	SharedRedis  bool     `json:"shared_redis"`
	Cycles       int      `json:"cycles"`
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	SessionsPerS float64  `json:"sessions_per_s"`
	Login        Pct      `json:"login_ms"`
	// TokenRequests the proxies made, from their start (first logins
	// included) to the end of the phase.
	TokenRequests int `json:"token_requests"`
	// MaxSessionsPerMailbox is the most authenticated upstream sessions
	// one mailbox had open at once, over the fleet's mailboxes.
	MaxSessionsPerMailbox int `json:"max_upstream_sessions_per_mailbox"`
	// ProviderRefusals are logins the provider refused for its own cap.
	ProviderRefusals int `json:"provider_refusals"`
	// ProxyCPUPerSessionUs is the proxies' CPU, summed, per poll cycle.
	ProxyCPUPerSessionUs float64 `json:"proxy_cpu_per_session_us,omitempty"`
}

// writeFleet prints the fleet scenario for a terminal.
func (rep *Report) writeFleet(w io.Writer) {
	f := rep.Fleet
	if f == nil {
		return
	}
	fmt.Fprintf(w, "\nfleet: %d POP3 clients on %d mailboxes, --mailbox-limit %d per proxy (provider cap %d)\n", f.Clients, f.Mailboxes, f.Cap, f.ProviderLimit)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "setup\tsessions/s\tlogin p50\tp99\terrors\ttoken requests\tmost upstream sessions per mailbox\tprovider refusals\tproxy CPU/session\t")
	for _, r := range f.Rows {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f ms\t%.1f ms\t%d\t%d\t%d\t%d\t%.0f µs\t\n", r.Setup, r.SessionsPerS, r.Login.P50, r.Login.P99,
			r.Errors, r.TokenRequests, r.MaxSessionsPerMailbox, r.ProviderRefusals, r.ProxyCPUPerSessionUs)
	}
	tw.Flush()
	for _, r := range f.Rows {
		if len(r.ErrorSamples) > 0 {
			fmt.Fprintf(w, "%s: errors: %s\n", r.Setup, strings.Join(r.ErrorSamples, "; "))
		}
	}
}
