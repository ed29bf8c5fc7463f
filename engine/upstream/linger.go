package upstream

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine/internal/readwait"
	"github.com/emailproxy/emailproxy/engine/internal/tlstrim"
	"github.com/emailproxy/emailproxy/protocol/imap"
)

// Session reuse (opt-in: Options.IMAPSessionReuse, SMTPSessionReuse).
//
// IMAP. A poller logs
// in, reads its mail and logs out, every minute, for ever; each login
// costs the provider a TLS handshake and an OAuth check and costs the
// poller several round trips. With reuse on, the proxy answers a
// client's LOGOUT itself, resets the upstream session with UNSELECT (no
// mailbox stays selected, nothing is expunged) and keeps it, logged in,
// for the next login of the same account with the same password on the
// same server section. Only sessions whose clients used commands that
// leave no state behind (see reusableCommands) are kept, and only on
// servers that have UNSELECT. POP3 sessions are never reused: a POP3
// session locks the maildrop and commits deletions only at QUIT.
//
// SMTP. An app that sends each message on a connection of its own (a
// scanner, a notifier) costs a TLS handshake, an EHLO and an OAuth check
// per message. With reuse on, the proxy answers the client's QUIT itself,
// sends RSET (no transaction survives) and keeps the session for the next
// login of the same account, password and server section. A session whose
// client used a command other than a transaction's is not kept.

// reusableCommands leave no session state that UNSELECT would not reset.
// Any other command (ENABLE, COMPRESS, NOTIFY, extensions) makes the
// session single-use.
var reusableCommands = map[string]bool{
	"CAPABILITY": true, "NOOP": true, "SELECT": true, "EXAMINE": true, "CREATE": true,
	"DELETE": true, "RENAME": true, "SUBSCRIBE": true, "UNSUBSCRIBE": true, "LIST": true,
	"LSUB": true, "NAMESPACE": true, "STATUS": true, "APPEND": true, "IDLE": true,
	"CHECK": true, "CLOSE": true, "UNSELECT": true, "EXPUNGE": true, "SEARCH": true,
	"FETCH": true, "STORE": true, "COPY": true, "MOVE": true, "UID": true, "ID": true,
	"GETQUOTA": true, "GETQUOTAROOT": true, "MYRIGHTS": true, "GETACL": true,
	"LISTRIGHTS": true, "GETMETADATA": true, "LOGOUT": true,
}

// IsReusable looks name up in reusableCommands, ignoring case, without
// allocating (it runs for every command of a reusable session).
func IsReusable(name []byte) bool {
	var buf [16]byte
	if len(name) > len(buf) {
		return false
	}
	for i, c := range name {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		buf[i] = c
	}
	return reusableCommands[string(buf[:len(name)])]
}

// CONDSTORE (RFC 7162), once on, stays on for the rest of a session
// (UNSELECT does not end it), and then every FETCH answer carries a MODSEQ
// item the session's next client did not ask for: a session where it was
// turned on is not kept. condstoreWords are the words of the commands
// that turn it on: SELECT ... (CONDSTORE), FETCH ... (MODSEQ) or
// (CHANGEDSINCE n), STORE (UNCHANGEDSINCE n), STATUS (HIGHESTMODSEQ),
// SEARCH MODSEQ, ENABLE CONDSTORE.
var condstoreWords = [...]string{"MODSEQ", "CHANGEDSINCE", "CONDSTORE"}

// TurnsOnCondstore reports whether a command's start has one of
// condstoreWords, ignoring case, without allocating.
func TurnsOnCondstore(cmd []byte) bool {
	for _, w := range condstoreWords {
		if indexFold(cmd, w, 0) >= 0 {
			return true
		}
	}
	return false
}

// ShowsCondstore reports whether an answer's start has a MODSEQ item, as
// a FETCH answer has once CONDSTORE is on; not [HIGHESTMODSEQ n], which
// servers (Dovecot, Gmail) send on every SELECT of a mailbox that keeps
// modification sequences.
func ShowsCondstore(answer []byte) bool {
	for i := indexFold(answer, "MODSEQ", 0); i >= 0; i = indexFold(answer, "MODSEQ", i+1) {
		if i > 0 && (answer[i-1] == ' ' || answer[i-1] == '(') {
			return true
		}
	}
	return false
}

// indexFold is the index of word (upper-case letters) in b from from on,
// ignoring case; -1 if it is not there.
func indexFold(b []byte, word string, from int) int {
	for i := from; i+len(word) <= len(b); i++ {
		j := 0
		for j < len(word) && b[i+j]&^0x20 == word[j] {
			j++
		}
		if j == len(word) {
			return i
		}
	}
	return -1
}

// ResetTag tags the UNSELECT the proxy sends; clients' tags are echoed
// only for their own commands, so the proxy recognises its answer.
const ResetTag = "EPXRESET"

// Linger holds authenticated IMAP and SMTP upstream sessions between
// logins.
type Linger struct {
	life Life
	salt [32]byte // keys hold a salted hash of the password, never the password
	// Waiter, if set before the first Park, watches kept sessions'
	// sockets: a kept session then holds no goroutine. Without it each
	// has a goroutine reading it.
	Waiter *readwait.Waiter

	mu    sync.Mutex
	byKey map[string][]*lingering
	stats ReuseStats
}

// ReuseStats count sessions kept after LOGOUT or QUIT (Parked), handed to a
// later login (Reused), timed out (Expired) and lost while kept (Dropped).
type ReuseStats struct {
	Parked, Reused, Expired, Dropped int
}

type lingering struct {
	u       *Conn
	reply   []byte    // the upstream's login answer; its last line is tagged
	expiry  time.Time // when the token it logged in with expires (zero: not known)
	key     string
	mailbox string // MailboxKey, for eviction by the mailbox cap
	timer   *time.Timer
	watched chan struct{} // closed when the watcher has stopped reading
	dead    atomic.Bool   // the server spoke or hung up while idle

	// With a Waiter: the socket's wait, and done once the session has
	// left the store (taken, expired, evicted), so that the waiter's
	// callback no longer reads it. Guarded by mu.
	mu     sync.Mutex
	ticket readwait.Ticket
	done   bool
}

func NewLinger(life Life) *Linger {
	ls := &Linger{life: life, byKey: map[string][]*lingering{}}
	if _, err := rand.Read(ls.salt[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	return ls
}

// Key names the sessions one login may take: same server section (scope:
// one configuration of it, so that a reload that changes the section
// leaves its kept sessions to nobody), same account, same password.
func (ls *Linger) Key(scope, user, password string) string {
	if ls == nil {
		return ""
	}
	h := sha256.New()
	h.Write(ls.salt[:])
	h.Write([]byte(password))
	return scope + "\x00" + strings.ToLower(user) + "\x00" + hex.EncodeToString(h.Sum(nil))
}

// Park keeps u for the next login under key, for at most ttl, and not
// past expiry (when the token it logged in with expires; zero: not
// known): a login is not served by a session its token no longer covers.
func (ls *Linger) Park(u *Conn, key, mailbox string, reply []byte, ttl time.Duration, expiry time.Time) {
	if !expiry.IsZero() {
		ttl = min(ttl, time.Until(expiry))
	}
	lg := &lingering{u: u, reply: reply, expiry: expiry, key: key, mailbox: mailbox, watched: make(chan struct{})}
	ls.mu.Lock()
	if ls.life.Ctx.Err() != nil {
		ls.mu.Unlock()
		u.Close()
		return
	}
	ls.byKey[key] = append(ls.byKey[key], lg)
	ls.stats.Parked++
	lg.timer = time.AfterFunc(ttl, func() {
		if ls.remove(lg) {
			ls.count(func(st *ReuseStats) { st.Expired++ })
			lg.unwatch(ls)
			lg.u.Close()
		}
	})
	ls.mu.Unlock()
	if ls.Waiter != nil {
		if sock := u.Socket(); sock != nil {
			tlstrim.Trim(u.TLS) // nothing reads it now: its record buffer goes
			close(lg.watched)   // no goroutine reads it
			lg.mu.Lock()
			ok := lg.watch(ls, sock)
			lg.mu.Unlock()
			if ok {
				return
			}
			if ls.remove(lg) {
				lg.timer.Stop()
				u.Close()
			}
			return
		}
	}
	// The watcher notices a server that logs the session out (BYE, or
	// just closing) while it waits; take interrupts it with a deadline.
	ls.life.WG.Add(1)
	go func() {
		defer ls.life.WG.Done()
		defer close(lg.watched)
		var b [1]byte
		n, err := u.TLS.Read(b[:])
		var ne net.Error
		if n > 0 || !(errors.As(err, &ne) && ne.Timeout()) {
			lg.dead.Store(true)
			if ls.remove(lg) {
				ls.count(func(st *ReuseStats) { st.Dropped++ })
				lg.timer.Stop()
				u.Close()
			}
		}
	}()
}

// watch hands lg's socket to the waiter, unless it has been taken
// already; lg.mu is held.
func (lg *lingering) watch(ls *Linger, sock syscall.RawConn) bool {
	if lg.done {
		return true
	}
	t, err := ls.Waiter.Wait(sock, func() { lg.readable(ls, sock) })
	lg.ticket = t
	return err == nil
}

// readable is the waiter's callback: the kept session's socket has data
// or was hung up on. A record that carries nothing for the client (a TLS
// session ticket) is taken and the socket watched again; anything from
// the server itself, or its end, drops the session. It waits at most a
// millisecond, and only for a record that has begun to arrive.
func (lg *lingering) readable(ls *Linger, sock syscall.RawConn) {
	lg.mu.Lock()
	if lg.done {
		lg.mu.Unlock()
		return
	}
	var b [1]byte
	// A deadline already passed would fail the read before it looks at
	// the socket; one just ahead reads what is there and waits at most
	// that long for the rest of a record.
	lg.u.TLS.SetReadDeadline(time.Now().Add(time.Millisecond))
	n, err := lg.u.TLS.Read(b[:])
	var ne net.Error
	alive := n == 0 && errors.As(err, &ne) && ne.Timeout()
	if alive && lg.watch(ls, sock) {
		lg.mu.Unlock()
		return
	}
	lg.done = true
	lg.dead.Store(true)
	lg.mu.Unlock()
	if ls.remove(lg) {
		ls.count(func(st *ReuseStats) { st.Dropped++ })
		lg.timer.Stop()
		lg.u.Close()
	}
}

// unwatch takes a session leaving the store back from the waiter, before
// its connection is used or closed, and reports whether the server spoke
// or hung up meanwhile.
func (lg *lingering) unwatch(ls *Linger) (dead bool) {
	if ls.Waiter == nil {
		return lg.dead.Load()
	}
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if !lg.done {
		lg.done = true
		ls.Waiter.Cancel(lg.ticket)
	}
	return lg.dead.Load()
}

func (ls *Linger) count(f func(*ReuseStats)) {
	ls.mu.Lock()
	f(&ls.stats)
	ls.mu.Unlock()
}

// remove takes lg out of the store; false if someone else already did.
func (ls *Linger) remove(lg *lingering) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	list := ls.byKey[lg.key]
	for i, x := range list {
		if x == lg {
			list = append(list[:i], list[i+1:]...)
			if len(list) == 0 {
				delete(ls.byKey, lg.key)
			} else {
				ls.byKey[lg.key] = list
			}
			return true
		}
	}
	return false
}

// Take returns a live lingering session for key, or nil.
func (ls *Linger) Take(key string) *lingering {
	if ls == nil || key == "" {
		return nil
	}
	for {
		ls.mu.Lock()
		list := ls.byKey[key]
		if len(list) == 0 {
			ls.mu.Unlock()
			return nil
		}
		lg := list[len(list)-1] // the most recent: least likely to have timed out
		ls.mu.Unlock()
		if !ls.remove(lg) {
			continue
		}
		lg.timer.Stop()
		if ls.Waiter == nil {
			lg.u.TLS.SetReadDeadline(time.Now())
		}
		<-lg.watched
		if lg.unwatch(ls) {
			lg.u.Close()
			continue
		}
		lg.u.TLS.SetReadDeadline(time.Time{})
		ls.count(func(st *ReuseStats) { st.Reused++ })
		return lg
	}
}

// Evict closes one lingering session of mailbox; it reports whether
// there was one.
func (ls *Linger) Evict(mailbox string) bool {
	if ls == nil {
		return false
	}
	ls.mu.Lock()
	var victim *lingering
	for _, list := range ls.byKey {
		for _, lg := range list {
			if lg.mailbox == mailbox {
				victim = lg
				break
			}
		}
		if victim != nil {
			break
		}
	}
	ls.mu.Unlock()
	if victim == nil || !ls.remove(victim) {
		return false
	}
	victim.timer.Stop()
	victim.unwatch(ls)
	victim.u.Close() // releases its mailbox slot
	return true
}

// CloseAll ends every lingering session (the server is stopping).
func (ls *Linger) CloseAll() { ls.closeWhere(func(string) bool { return true }) }

// CloseScope ends the lingering sessions kept under scope (a reload
// changed or removed their section).
func (ls *Linger) CloseScope(scope string) {
	ls.closeWhere(func(key string) bool { return strings.HasPrefix(key, scope+"\x00") })
}

// closeWhere ends the lingering sessions whose key matches.
func (ls *Linger) closeWhere(match func(key string) bool) {
	if ls == nil {
		return
	}
	ls.mu.Lock()
	var all []*lingering
	for key, list := range ls.byKey {
		if match(key) {
			all = append(all, list...)
			delete(ls.byKey, key)
		}
	}
	ls.mu.Unlock()
	for _, lg := range all {
		lg.timer.Stop()
		lg.unwatch(ls)
		lg.u.Close()
	}
}

// Snapshot returns the counters.
func (ls *Linger) Snapshot() ReuseStats {
	if ls == nil {
		return ReuseStats{}
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.stats
}

// Retag turns a stored login answer into the answer to a login tagged tag.
func Retag(reply []byte, tag string) []byte {
	body := bytes.TrimSuffix(reply, []byte("\r\n"))
	last := bytes.LastIndex(body, []byte("\r\n"))
	head, line := []byte(nil), body
	if last >= 0 {
		head, line = body[:last+2], body[last+2:]
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return nil
	}
	out := make([]byte, 0, len(reply)+len(tag))
	out = append(out, head...)
	out = append(out, tag...)
	out = append(out, line[sp:]...)
	return append(out, "\r\n"...)
}

// CanReuse reports whether sessions on this upstream may be reused: IMAP
// ones only where UNSELECT resets them; SMTP ones always (RSET is in
// every SMTP server); POP3 ones never.
func CanReuse(srv *config.Server, u *Conn, reply []byte) bool {
	switch srv.Protocol {
	case config.SMTP:
		return true
	case config.IMAP:
	default:
		return false
	}
	return imap.HasCapability(u.Caps, "UNSELECT") || imap.HasCapability(u.Caps, "IMAP4rev2") ||
		bytes.Contains(bytes.ToUpper(reply), []byte("UNSELECT"))
}
