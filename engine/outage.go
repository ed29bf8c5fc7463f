package engine

import "time"

// outage keeps an unreachable upstream from being logged once per client.
// While a section's greeting is unknown, each client that arrives starts a
// dial to learn it; when the server is down (or server_address is wrong),
// that is one failure per client. The first failure is logged, then at
// most one a minute with how many it stands for, or at once when the
// reason changes; the first success after them is logged too.
type outage struct {
	since    time.Time // first failure (zero: the server was reached)
	logged   time.Time // last failure logged
	reason   string    // and its reason
	unlogged int       // failures since then
	total    int       // failures since since
}

const outageLogEvery = time.Minute

// failed records a failure for reason; log says whether to log it, and
// failures how many failures the line stands for.
func (o *outage) failed(now time.Time, reason string) (log bool, failures int) {
	if o.since.IsZero() {
		o.since = now
	}
	o.total++
	o.unlogged++
	if o.logged.IsZero() || reason != o.reason || now.Sub(o.logged) >= outageLogEvery {
		failures = o.unlogged
		o.logged, o.reason, o.unlogged = now, reason, 0
		return true, failures
	}
	return false, 0
}

// reached records a success and says how long the server was away and how
// many dials failed meanwhile (0: it was not away).
func (o *outage) reached(now time.Time) (away time.Duration, failures int) {
	if o.since.IsZero() {
		return 0, 0
	}
	away, failures = now.Sub(o.since), o.total
	*o = outage{}
	return away, failures
}
