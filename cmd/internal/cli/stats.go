package cli

import (
	"context"
	"encoding/json"
	"expvar"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/engine"
	"github.com/emailproxy/emailproxy/telemetry"
)

var publishOnce sync.Once

// serveStats serves expvar's JSON (Go's memstats and cmdline) plus the
// engine's counters under "emailproxy" on /debug/vars, and live memory on
// /debug/heap, and Go's profiles on /debug/pprof/. The bench harness reads it to
// report heap per connection; operators can graph it.
func serveStats(addr string, srv *engine.Server) (stop func(), err error) {
	current.Store(srv)
	publishOnce.Do(func() {
		expvar.Publish("emailproxy", expvar.Func(func() any {
			if s := current.Load(); s != nil {
				return s.Stats()
			}
			return nil
		}))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--stats-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/debug/vars", expvar.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	// /debug/heap collects garbage first, so what it reports is live
	// memory: the bench harness divides it by connections held.
	// With ?free=1 it also returns what it can to the operating system
	// first, so that an RSS read next is a baseline that the runtime's
	// scavenger will not lower behind the reader's back.
	mux.HandleFunc("/debug/heap", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		runtime.GC() // the second empties sync.Pool's victim caches too
		if r.URL.Query().Get("free") != "" {
			debug.FreeOSMemory()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		w.Header().Set("Content-Type", "application/json")
		parked := 0
		if s := current.Load(); s != nil {
			parked = s.Stats().Parked
		}
		json.NewEncoder(w).Encode(map[string]any{"heap_inuse": m.HeapInuse, "stack_inuse": m.StackInuse,
			"goroutines": runtime.NumGoroutine(), "parked": parked})
	})
	return serveHTTP(ln, mux), nil
}

// current is the server the published expvar reports on (expvar names
// are process-wide and cannot be published twice).
var current atomic.Pointer[engine.Server]

// serveMetrics serves /metrics (Prometheus text format), /healthz (the
// process answers: 200) and /readyz (200 when the listeners are bound and
// every account can be served; else 503 and why, one reason a line).
func serveMetrics(addr string, provider *auth.Provider) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		telemetry.Write(w)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if problems := provider.NotReady(); len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(problems, "\n"))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return serveHTTP(ln, mux), nil
}

// serveHTTP serves mux on ln until the returned stop is called.
func serveHTTP(ln net.Listener, mux *http.ServeMux) (stop func()) {
	// A client that holds a connection open and silent does not keep it
	// (or its goroutine). No write timeout: a CPU profile streams for as
	// many seconds as asked.
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	go hs.Serve(ln)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(ctx)
	}
}
