package engine

import "github.com/emailproxy/emailproxy/engine/upstream"

// Stats is a snapshot of the engine's counters.
type Stats struct {
	PreLogin int                  // plaintext clients connected, not yet relayed
	Relays   int                  // authenticated sessions being relayed
	Parked   int                  // relay directions parked (no goroutine; see Options.ParkAfter)
	Warm     map[string]WarmStats // by server section
	Reuse    upstream.ReuseStats  // IMAP and SMTP session reuse (zero when off)
}

// WarmStats describes one section's warm pool and its TLS handshakes
// (Resumed: how many resumed a session).
type WarmStats struct {
	Idle, Hits, Misses, Expired, Dialed int
	Handshakes, Resumed                 int64
}

// Stats returns the engine's counters.
func (s *Server) Stats() Stats {
	st := Stats{Warm: map[string]WarmStats{}, Reuse: s.linger.Snapshot()}
	s.sessMu.Lock()
	st.PreLogin = s.sessions.n + s.silent.n
	s.sessMu.Unlock()
	s.relayMu.Lock()
	st.PreLogin += len(s.conns) // the goroutine front end's
	st.Relays = len(s.relays)
	s.relayMu.Unlock()
	st.Parked = int(s.parkedDirs.Load())
	for _, l := range s.listenerList() {
		ps, idle := l.up.Pool.Snapshot()
		hs, resumed := l.up.Dialer.Handshakes()
		st.Warm[l.srv.Section] = WarmStats{Idle: idle, Hits: ps.Hits, Misses: ps.Misses, Expired: ps.Expired, Dialed: ps.Dialed,
			Handshakes: hs, Resumed: resumed}
	}
	return st
}
