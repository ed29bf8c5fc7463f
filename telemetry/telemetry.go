// Package telemetry holds what an operator watches: counters and gauges
// in the Prometheus text format (github.com/VictoriaMetrics/metrics: with
// its handles made once per server section, a login pays about 25 ns for
// its counter and latency histogram, against about 190 ns with
// prometheus/client_golang's label lookups), and the HTTP endpoints
// /metrics, /healthz and /readyz. Client addresses are never labels.
package telemetry

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Set holds every metric of one running proxy.
var Set = metrics.NewSet()

// Login results, the values of the result label.
const (
	OK                  = "ok"
	WrongPassword       = "wrong_password"
	UnknownAccount      = "unknown_account"
	LockedOut           = "locked_out"
	TokenUnavailable    = "token_unavailable"
	UpstreamRefused     = "upstream_refused"
	UpstreamUnavailable = "upstream_unavailable"
	Throttled           = "throttled"   // the server throttles the mailbox, or did and asked for time without logins
	ClientGone          = "client_gone" // the client hung up before its login was answered
	Other               = "other"
)

var results = []string{OK, WrongPassword, UnknownAccount, LockedOut, TokenUnavailable, UpstreamRefused, UpstreamUnavailable, Throttled, ClientGone, Other}

// Server is the metrics of one server section, made once.
type Server struct {
	logins  map[string]*metrics.Counter
	latency *metrics.Histogram
}

// ForServer makes the metrics of a server section.
func ForServer(proto, section string) *Server {
	s := &Server{logins: map[string]*metrics.Counter{}}
	for _, r := range results {
		s.logins[r] = Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_logins_total{proto=%q,server=%q,result=%q}`, proto, section, r))
	}
	s.latency = Set.GetOrCreateHistogram(fmt.Sprintf(`emailproxy_login_duration_seconds{proto=%q,server=%q}`, proto, section))
	return s
}

// Login counts one login and its duration. The duration of a login whose
// client hung up says how long the client waited, not how long a login
// takes, and is left out.
func (s *Server) Login(result string, took time.Duration) {
	if s == nil {
		return
	}
	c := s.logins[result]
	if c == nil {
		c = s.logins[Other]
	}
	c.Inc()
	if result != ClientGone {
		s.latency.Update(took.Seconds())
	}
}

// Proxy-wide counters.
var (
	BytesFromClients = Set.NewCounter(`emailproxy_relayed_bytes_total{direction="client_to_server"}`)
	BytesToClients   = Set.NewCounter(`emailproxy_relayed_bytes_total{direction="server_to_client"}`)
	KeyDerivations   = Set.NewCounter(`emailproxy_key_derivations_total`)
	MailboxWait      = Set.NewHistogram(`emailproxy_mailbox_wait_seconds`)
)

// Ended counts sessions the proxy ended for a reason (send_timeout,
// idle_timeout, idle_before_login, pending_limit).
func Ended(reason string) {
	Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_sessions_ended_total{reason=%q}`, reason)).Inc()
}

// TokenFetch counts a token request of account (result ok or error).
func TokenFetch(account, result string) {
	Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_token_fetches_total{account=%q,result=%q}`, account, result)).Inc()
}

var gaugeMu sync.Mutex

// Gauge registers a value read at each scrape, once per name.
func Gauge(name string, f func() float64) {
	gaugeMu.Lock()
	defer gaugeMu.Unlock()
	Set.GetOrCreateGauge(name, f)
}

// Write writes every metric in the Prometheus text format.
func Write(w io.Writer) { Set.WritePrometheus(w) }

// Panicked counts a panic recovered in the code serving one connection
// (where: front_end, login, relay, dial), which ended that connection
// only.
func Panicked(where string) {
	Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_panics_total{where=%q}`, where)).Inc()
}

// SharedStoreDegraded counts the times a shared token store (Redis) could
// not be used and the proxy went on alone (op: fetch_lock or load).
func SharedStoreDegraded(op string) {
	Set.GetOrCreateCounter(fmt.Sprintf(`emailproxy_shared_store_degraded_total{op=%q}`, op)).Inc()
}
