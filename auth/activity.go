package auth

import (
	"strconv"
	"time"
)

// NoteActivity records that the server of one of the account's sessions
// sent its client data at t. emailproxy.py keeps this as the account's
// last_activity (Unix seconds; its menu shows it); here too it is kept in
// memory and written with the account's next save of its tokens and when
// the provider closes, so that sessions cost no write of their own. An
// account not in use (no login since the start or the last reload) is
// ignored, and time never goes back.
func (p *Provider) NoteActivity(name string, t time.Time) {
	p.mu.Lock()
	a := p.accounts[name]
	p.mu.Unlock()
	if a == nil {
		return
	}
	a.mu.Lock()
	a.activity = max(a.activity, t.Unix())
	a.mu.Unlock()
}

// activityToSaveLocked returns the activity to write and whether it is
// newer than what the store holds.
func (a *account) activityToSaveLocked() (string, bool) {
	if a.activity == 0 {
		return "", false
	}
	held, _ := strconv.ParseInt(a.cached["last_activity"], 10, 64)
	return strconv.FormatInt(a.activity, 10), a.activity > held
}

// saveActivity writes the accounts' activity not saved yet (at Close).
func (p *Provider) saveActivity(accts []*account) {
	for _, a := range accts {
		a.mu.Lock()
		v, newer := a.activityToSaveLocked()
		if newer {
			a.cached["last_activity"] = v
		}
		a.mu.Unlock()
		if newer {
			p.save(a.name, map[string]string{"last_activity": v}, nil)
		}
	}
}
