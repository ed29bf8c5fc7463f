package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// The Windows service: `emailproxy service install|uninstall|start|stop|
// status [flags]`. install registers the executable with the flags given
// (made absolute where they name files), so the service runs the same
// proxy the console would; the service control manager then starts it as
// `emailproxy service run [flags]`. Stopping the service drains as SIGTERM
// does; a parameter-change control reloads as SIGHUP does.

const (
	serviceName    = "emailproxy"
	serviceDisplay = "Email OAuth 2.0 Proxy"
	serviceAbout   = "OAuth 2.0 + TLS proxy for IMAP, POP3 and SMTP clients that only speak passwords"
)

// reloads carries reload requests from outside the signal handling (the
// Windows service's parameter-change control) to the running proxy.
var reloads = make(chan struct{}, 1)

func serviceUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: emailproxy service install|uninstall|start|stop|status [flags]

  install    register emailproxy as a Windows service that starts with the system,
             with the flags given (e.g. --config-file C:\emailproxy\emailproxy.config);
             it logs to --log-file (default: emailproxy.log next to the executable)
             and writes start, stop and fatal errors to the Windows event log
  uninstall  stop and remove the service
  start      start the service
  stop       stop the service (sessions drain as with Ctrl+C)
  status     print whether the service is running
`)
}

// serviceArgs are the flags the service runs with: the ones given at
// install, file paths made absolute (a service starts in System32), and a
// log file next to the executable unless one was given.
func serviceArgs(flags []string, exeDir string) []string {
	out := make([]string, 0, len(flags)+2)
	hasLog := false
	for i := 0; i < len(flags); i++ {
		f := flags[i]
		name, value, inline := strings.Cut(f, "=")
		trimmed := strings.TrimLeft(name, "-")
		fileFlag := trimmed == "config-file" || trimmed == "cache-store" || trimmed == "log-file"
		if trimmed == "log-file" {
			hasLog = true
		}
		if !fileFlag {
			out = append(out, f)
			continue
		}
		if !inline {
			if i+1 >= len(flags) {
				out = append(out, f)
				continue
			}
			i++
			value = flags[i]
		}
		if trimmed != "cache-store" || storeIsFile(value) {
			if abs, err := filepath.Abs(value); err == nil {
				value = abs
			}
		}
		out = append(out, "--"+trimmed, value)
	}
	if !hasLog {
		out = append(out, "--log-file", filepath.Join(exeDir, "emailproxy.log"))
	}
	return out
}

// crashFile is where a service's crash report goes: beside its log file
// (flags as serviceArgs made them), emailproxy-crash.log.
func crashFile(flags []string) string {
	dir := exeDir()
	for i, f := range flags {
		if strings.TrimLeft(f, "-") == "log-file" && i+1 < len(flags) {
			dir = filepath.Dir(flags[i+1])
		}
	}
	return filepath.Join(dir, "emailproxy-crash.log")
}

// exeDir is the folder of the running executable ("." if unknown).
func exeDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	return filepath.Dir(exe)
}
