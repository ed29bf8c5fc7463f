// Package upstream is the proxy's side towards the real mail servers:
// TLS connections dialled and verified, kept warm ahead of logins,
// authenticated with XOAUTH2 or OAUTHBEARER, capped per mailbox, and
// (IMAP, opt-in) kept after a client's LOGOUT for the next login. It
// knows nothing of the clients' connections or of the event loop.
package upstream

import (
	"context"
	"sync"
)

// Life is what background work of the upstream side (pool refills,
// watchers of kept sessions) runs under: it stops when Ctx ends, and the
// owner waits for it with WG.
type Life struct {
	Ctx context.Context
	WG  *sync.WaitGroup
}
