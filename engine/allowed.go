package engine

import (
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/telemetry"
)

// clientGate decides which connections a section serves, before it
// greets them: a PROXY protocol section takes headers from
// proxy_protocol_from only, and a section with allowed_clients serves
// those addresses only. The peer's address is checked as the connection
// is accepted, before the event loops or a goroutine take it; behind a
// balancer, the client's address once its header has named it.
type clientGate struct {
	balancers []netip.Prefix // proxy_protocol_from (PROXY protocol sections)
	clients   []netip.Prefix // allowed_clients (nil: every address)
	notClient refusals
	notFromLB refusals
}

// refusals counts the connections refused for one reason and logs them
// at most once a minute at warning level, with how many were refused
// since (a scanner makes thousands), else at debug level.
type refusals struct {
	counter *metrics.Counter // its label reason names the key
	lastLog atomic.Int64     // unix nanoseconds of the last warning
	since   atomic.Int64     // refused since the last warning
}

// refusedLogEvery is how often refused connections are logged.
const refusedLogEvery = time.Minute

func newClientGate(srv *config.Server) *clientGate {
	g := &clientGate{}
	// Both lists were checked when the configuration was read.
	g.balancers, _ = srv.ProxySources()
	g.clients, _ = srv.ClientNetworks()
	// The counters of the checks the section makes, and only those.
	if g.clients != nil {
		g.notClient.init(srv.Section, "allowed_clients")
	}
	if srv.ProxyProtocol {
		g.notFromLB.init(srv.Section, "proxy_protocol_from")
	}
	return g
}

func (r *refusals) init(section, reason string) {
	r.counter = telemetry.Set.GetOrCreateCounter(`emailproxy_clients_refused_total{server="` + section + `",reason="` + reason + `"}`)
}

// admitsPeer reports whether the connection from peer may go on (to its
// greeting, or to its PROXY header); if not, it is counted and logged,
// and the caller closes it.
func (l *listener) admitsPeer(peer net.Addr) bool {
	g := l.gate
	a, _ := peer.(*net.TCPAddr)
	var addr netip.Addr
	if a != nil {
		addr = a.AddrPort().Addr()
	}
	switch {
	case l.srv.ProxyProtocol && !config.InNetworks(g.balancers, addr):
		l.refuse(&g.notFromLB, peer.String(), "PROXY protocol header refused: not from proxy_protocol_from; closed without a greeting")
		return false
	case !l.srv.ProxyProtocol && g.clients != nil && !config.InNetworks(g.clients, addr):
		l.refuse(&g.notClient, peer.String(), "client refused: its address is not in allowed_clients; closed without a greeting")
		return false
	}
	return true
}

// admitsClient reports whether the client a PROXY protocol header names
// ("host:port") may be served; if not, it is counted and logged, and the
// caller closes the connection.
func (l *listener) admitsClient(hostPort string) bool {
	g := l.gate
	if g.clients == nil {
		return true
	}
	if ap, err := netip.ParseAddrPort(hostPort); err == nil && config.InNetworks(g.clients, ap.Addr()) {
		return true
	}
	l.refuse(&g.notClient, hostPort, "client refused: its address is not in allowed_clients; closed without a greeting")
	return false
}

func (l *listener) refuse(r *refusals, peer, msg string) {
	r.counter.Inc()
	n := r.since.Add(1)
	now := time.Now().UnixNano()
	last := r.lastLog.Load()
	if now-last >= int64(refusedLogEvery) && r.lastLog.CompareAndSwap(last, now) {
		r.since.Add(-n)
		l.log.Warn().Str("peer", peer).Int64("refused", n).Msg(msg + " (logged once a minute, with how many since)")
		return
	}
	l.log.Debug().Str("peer", peer).Msg(msg)
}
