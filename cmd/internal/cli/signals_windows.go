//go:build windows

package cli

import "os"

// Windows has no SIGHUP or SIGUSR1: Ctrl+C and Ctrl+Break (SIGINT) and
// console close (SIGTERM) stop the proxy; reload and debug toggling have
// no signal.
var (
	debugSignal  os.Signal
	reloadSignal os.Signal
	extraSignals []os.Signal
)
