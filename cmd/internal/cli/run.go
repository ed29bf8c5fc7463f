// Package cli is the emailproxy command: flags, logging, signals, the demo
// and the authorise subcommand. It lives apart from package main so that
// the bench harness can run the very same proxy as a child process of its
// own binary.
package cli

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/emailproxy/emailproxy/auth"
	"github.com/emailproxy/emailproxy/cluster"
	"github.com/emailproxy/emailproxy/config"
	"github.com/emailproxy/emailproxy/engine"
	"github.com/emailproxy/emailproxy/telemetry"
)

// Run is the emailproxy command without the process exit: it returns the
// exit status. stop, if not nil, ends the proxy as a signal would.
func Run(args []string, stdout, stderr io.Writer, stop <-chan struct{}) int {
	if len(args) > 0 && (args[0] == "authorise" || args[0] == "authorize") {
		return authorise(args[1:], os.Stdin, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "service" {
		return service(args[1:], stdout, stderr)
	}
	fl, err := parseFlags(args, stdout, stderr)
	if err != nil {
		if err == errHelp {
			return 0
		}
		return 2
	}
	if fl.version {
		fmt.Fprintln(stdout, "Email OAuth 2.0 Proxy (Go)", version)
		return 0
	}
	if fl.checkConfig {
		return checkConfig(fl.configFile, stdout)
	}
	log, closeLog, err := newLogger(fl, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy:", err)
		return 1
	}
	defer closeLog()

	var eopts engine.Options
	if pool, err := extraRoots(); err != nil {
		fmt.Fprintln(stderr, "emailproxy:", err)
		return 1
	} else if pool != nil {
		eopts.RootCAs = pool
	}
	if fl.demo {
		d, err := startDemo(fl, stdout)
		if err != nil {
			log.Error().Err(err).Msg("cannot start the demo")
			return 1
		}
		defer d.Close()
		fl.configFile = d.configPath
		eopts.RootCAs = d.up.CA.Pool
	}

	cfg, err := config.Load(fl.configFile)
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("%w; write one there (the README's Configuration section has an example), "+
			"or run with --demo to try the proxy against a built-in mock mail provider", err)
	}
	if err != nil {
		cannotStart(fl, log, stderr, err)
		return 1
	}
	store, closeStore, err := openStore(fl.cacheStore, cfg.Path, log)
	if err != nil {
		cannotStart(fl, log, stderr, err)
		return 1
	}
	defer closeStore()
	if rs := store.redis; rs != nil {
		telemetry.Gauge("emailproxy_shared_store_up", func() float64 {
			if rs.Up() {
				return 1
			}
			return 0
		})
		// The fleet's mailbox caps live beside its token cache.
		mailboxes := cluster.NewMailboxes(rs.Client())
		mailboxes.Report = rs.Observe
		mailboxes.Start()
		defer mailboxes.Close()
		eopts.SharedMailboxes = mailboxes
	}
	// A login to an interactive account without tokens can start its
	// authorisation: the URL (or device code) is printed on stderr and the
	// redirect is received locally (--local-server-auth, which wins as in
	// emailproxy.py) or pasted on the terminal (--external-auth).
	var interactive *auth.Prompt
	switch {
	case fl.localServerAuth:
		interactive = &auth.Prompt{Out: stderr, LocalServer: true}
	case fl.externalAuth:
		interactive = &auth.Prompt{Out: stderr, In: bufio.NewReader(os.Stdin)}
	}

	provider := auth.NewProvider(cfg, auth.Options{
		Store:         store.Store,
		StoreIsConfig: store.isConfig,
		Interactive:   interactive,
		TokenTimeout:  fl.tokenTimeout,
		RefreshMargin: fl.refreshMargin,
		Logger:        log.With().Str("component", "auth").Logger(),
	})
	provider.Start()
	defer provider.Close()

	applyTuning(&eopts, fl)
	eopts.Logger = log
	srv := engine.New(cfg, provider, eopts)
	if err := srv.Start(); err != nil {
		cannotStart(fl, log, stderr, err)
		return 1
	}
	log.Info().Str("version", version).Str("config", cfg.Path).Msg("emailproxy started")
	if fl.metricsAddr != "" {
		// Bound after the listeners: /readyz needs no check of its own
		// that they are.
		stop, err := serveMetrics(fl.metricsAddr, provider)
		if err != nil {
			log.Error().Err(err).Msg("cannot serve metrics")
			fmt.Fprintln(stderr, "emailproxy:", err)
			srv.Stop(context.Background())
			return 1
		}
		defer stop()
		log.Info().Str("url", "http://"+fl.metricsAddr+"/metrics").Msg("serving metrics, /healthz and /readyz")
	}
	if fl.statsAddr != "" {
		stop, err := serveStats(fl.statsAddr, srv)
		if err != nil {
			log.Error().Err(err).Msg("cannot serve statistics")
			fmt.Fprintln(stderr, "emailproxy:", err)
			srv.Stop(context.Background())
			return 1
		}
		defer stop()
		log.Info().Str("url", "http://"+fl.statsAddr+"/debug/vars").Msg("serving statistics")
	}

	// Signals stay caught until the end: one during the final stop must
	// not kill the process before the token store is closed.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, append([]os.Signal{syscall.SIGINT, syscall.SIGTERM}, extraSignals...)...)
	defer signal.Stop(sigs)
	serveUntilStopped(fl, log, srv, provider, sigs, stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Stop(ctx)
	return 0
}

// applyTuning copies the tuning flags into the engine's options.
func applyTuning(eopts *engine.Options, fl *flags) {
	eopts.FrontEnd = fl.frontEnd
	eopts.EventLoops = fl.eventLoops
	eopts.LoginTimeout = fl.loginTimeout
	eopts.DialTimeout = fl.dialTimeout
	eopts.IdleTimeout = fl.idleTimeout
	eopts.SendTimeout = fl.sendTimeout
	eopts.IMAPIdleTimeout, eopts.POP3IdleTimeout, eopts.SMTPIdleTimeout = fl.imapIdle, fl.pop3Idle, fl.smtpIdle
	eopts.ParkAfter = fl.parkAfter
	if eopts.ParkAfter <= 0 {
		eopts.ParkAfter = -1 // never
	}
	eopts.PendingLimit = fl.pendingLimit
	eopts.RelayBuffer = fl.relayBuffer
	eopts.WarmConnections, eopts.MailboxLimit = orNone(fl.warmConns), orNone(fl.mailboxLimit)
	eopts.WarmMaxAge, eopts.IMAPSessionReuse, eopts.SMTPSessionReuse = fl.warmMaxAge, fl.imapReuse, fl.smtpReuse
	eopts.POP3InitialResponse = fl.pop3IR
	eopts.IMAPLimits.MaxLine, eopts.IMAPLimits.MaxLiteral, eopts.IMAPLimits.MaxErrors = fl.maxLine, fl.maxLine, fl.maxErrors
	eopts.POPLimits.MaxLine, eopts.POPLimits.MaxErrors = fl.maxLine, fl.maxErrors
	eopts.SMTPLimits.MaxLine, eopts.SMTPLimits.MaxErrors = fl.maxLine, fl.maxErrors
}

// serveUntilStopped handles signals (and the Windows service's controls)
// until the proxy is to stop: SIGHUP reloads, SIGUSR1 toggles debug
// logging, the first SIGINT or SIGTERM (or stop) drains, a second one or
// the end of the drain stops.
func serveUntilStopped(fl *flags, log zerolog.Logger, srv *engine.Server, provider *auth.Provider, sigs <-chan os.Signal, stop <-chan struct{}) {
	// reload applies the whole configuration file again: servers and
	// accounts added, changed or removed; a file that does not load
	// leaves the running configuration in place.
	reload := func(why string) {
		next, err := config.Load(fl.configFile)
		if err == nil {
			err = srv.Reload(next)
		}
		if err != nil {
			log.Error().Str("error", err.Error()).Str("reason", why).Msg("reload failed; the running configuration stays in place")
			return
		}
		provider.Reload(next)
		srv.ReloadCertificates()
		log.Info().Str("reason", why).Int("servers", len(next.Servers)).Msg("configuration reloaded")
	}
	var drained chan struct{} // closed when a drain has finished; nil: none begun
	drain := func(why string) {
		if drained != nil {
			return
		}
		log.Info().Str("reason", why).Str("drain_timeout", fl.drainTimeout.String()).
			Msg("shutting down: no new clients; sessions may finish (a second signal stops at once)")
		drained = make(chan struct{})
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), fl.drainTimeout)
			defer cancel()
			srv.Drain(ctx)
			close(drained)
		}()
	}
loop:
	for {
		select {
		case sig := <-sigs:
			switch {
			case sig == debugSignal:
				toggleDebug(log)
			case sig == reloadSignal:
				reload(sig.String())
			case drained != nil:
				log.Info().Str("signal", sig.String()).Msg("second signal: stopping at once")
				break loop
			default:
				drain(sig.String())
			}
		case <-reloads: // the Windows service's parameter-change control
			reload("parameter change")
		case <-stop:
			drain("stop requested")
			stop = nil
		case <-drained: // nil until a drain begins
			break loop
		}
	}
}

// orNone maps a flag's 0 ("none") to the engine's negative "none" (its
// zero means "default").
func orNone(v int) int {
	if v == 0 {
		return -1
	}
	return v
}

func toggleDebug(log zerolog.Logger) {
	if zerolog.GlobalLevel() == zerolog.DebugLevel {
		zerolog.SetGlobalLevel(zerolog.InfoLevel)
	} else {
		zerolog.SetGlobalLevel(zerolog.DebugLevel)
	}
	log.Info().Str("level", zerolog.GlobalLevel().String()).Msg("SIGUSR1: log level changed")
}

// extraRoots honours SSL_CERT_FILE where Go's own TLS does not (Windows,
// where the system store is used): the certificates in it are then the
// ones trusted upstream, as on Linux and macOS.
func extraRoots() (*x509.CertPool, error) {
	path := os.Getenv("SSL_CERT_FILE")
	if path == "" || runtime.GOOS != "windows" {
		return nil, nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("SSL_CERT_FILE: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("SSL_CERT_FILE %s holds no PEM certificate", path)
	}
	return pool, nil
}

// checkConfig is --check-config: parse and validate the configuration,
// print what it holds and what is wrong, and exit 0 (usable) or 1.
func checkConfig(path string, stdout io.Writer) int {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stdout, "error:", err)
		return 1
	}
	r := config.Check(cfg)
	fmt.Fprintf(stdout, "%s: %s, %s\n", cfg.Path, count(len(r.Servers), "server section"), count(len(r.Accounts), "account"))
	for _, part := range []struct {
		title string
		lines []string
	}{{"servers", r.Servers}, {"accounts", r.Accounts}, {"warnings", r.Warnings}, {"errors", r.Errors}} {
		if len(part.lines) > 0 {
			fmt.Fprintf(stdout, "%s:\n  %s\n", part.title, strings.Join(part.lines, "\n  "))
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(stdout, "%d errors\n", len(r.Errors))
		return 1
	}
	fmt.Fprintln(stdout, "configuration OK")
	return 0
}

// cannotStart says why the proxy cannot start, once: in the log, which
// goes to stderr unless --log-file names a file; then also on stderr,
// where whoever just ran the command (or the service manager) looks.
func cannotStart(fl *flags, log zerolog.Logger, stderr io.Writer, err error) {
	log.Error().Msg(err.Error())
	if fl.logFile != "" {
		fmt.Fprintln(stderr, "emailproxy:", err)
	}
}

// count is n and what it counts, plural unless n is 1.
func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
