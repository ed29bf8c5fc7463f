package engine

import (
	"errors"
	"net"

	"github.com/emailproxy/emailproxy/config"
)

// Reload applies a new configuration's server sections (SIGHUP): sections
// that did not change go on as they are, with their sessions; a changed
// section serves its new settings to the next clients (sessions already
// relayed go on); an added section starts listening; a removed one
// stops. Upstream sessions kept for reuse by a
// changed or removed section are closed: a login never gets a session
// made under another configuration. On an error nothing changes.
func (s *Server) Reload(cfg *config.Config) error {
	if len(cfg.Servers) == 0 {
		return errors.New("the new configuration has no server sections; keeping the running one")
	}
	old := *s.lsn.Load()
	next := map[int]*listener{}
	var added, fresh []*listener
	for _, srv := range cfg.Servers {
		ol := old[srv.LocalPort]
		if ol != nil && !ol.removed.Load() && *ol.srv == *srv {
			next[srv.LocalPort] = ol
			continue
		}
		nl := s.newListener(srv)
		if err := nl.setupTLS(); err != nil {
			s.closeAll(added)
			return err
		}
		if ol != nil { // the port's accept loop serves the new section
			nl.ln = ol.ln
		} else {
			ln, err := s.listen(srv)
			if err != nil {
				s.closeAll(added)
				return err
			}
			nl.ln = ln
			added = append(added, nl)
		}
		next[srv.LocalPort] = nl
		fresh = append(fresh, nl)
	}
	var closing []net.Listener
	for port, ol := range old {
		if _, kept := next[port]; kept {
			continue
		}
		ol.removed.Store(true)
		closing = append(closing, ol.ln)
	}
	s.lsn.Store(&next)
	for port, ol := range old {
		if ol.reuseScope != "" && (next[port] != ol || ol.removed.Load()) {
			s.linger.CloseScope(ol.reuseScope) // kept for a configuration gone
		}
	}
	for _, l := range added {
		s.serve(l)
		l.log.Info().Str("listen", l.srv.ListenAddr()).Msg("listening (added by a reload)")
		l.warnIfExposed()
	}
	for _, ln := range closing {
		s.stopListening(ln)
	}
	for _, l := range fresh {
		l.learnEarly(s)
	}
	return nil
}
