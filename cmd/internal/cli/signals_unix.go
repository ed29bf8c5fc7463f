//go:build !windows

package cli

import (
	"os"
	"syscall"
)

// SIGUSR1 toggles debug logging, SIGHUP reloads, SIGQUIT stops.
var (
	debugSignal  os.Signal = syscall.SIGUSR1
	reloadSignal os.Signal = syscall.SIGHUP
	extraSignals           = []os.Signal{syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGUSR1}
)
