//go:build windows

package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// defaultConfigFile is emailproxy.config next to the executable, as
// emailproxy.py looks next to its script (a service starts in System32).
func defaultConfigFile() string { return filepath.Join(exeDir(), "emailproxy.config") }

func service(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		serviceUsage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "help", "-h", "--help":
		serviceUsage(stdout)
		return 0
	case "run":
		return runService(args[1:], stderr)
	case "install":
		err = installService(args[1:])
	case "uninstall":
		err = uninstallService()
	case "start":
		err = controlService(func(s *mgr.Service) error { return s.Start("service", "run") })
	case "stop":
		err = stopService()
	case "status":
		var state string
		state, err = serviceState()
		if err == nil {
			fmt.Fprintln(stdout, "emailproxy service:", state)
		}
	default:
		fmt.Fprintf(stderr, "emailproxy service: unknown action %q\n", args[0])
		serviceUsage(stderr)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "emailproxy service:", err)
		return 1
	}
	return 0
}

func installService(flags []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("cannot reach the service manager (run as Administrator): %w", err)
	}
	defer m.Disconnect()
	if s, err := m.OpenService(serviceName); err == nil {
		s.Close()
		return errors.New("already installed (uninstall it first)")
	}
	args := append([]string{"service", "run"}, serviceArgs(flags, exeDir())...)
	s, err := m.CreateService(serviceName, exe, mgr.Config{DisplayName: serviceDisplay, Description: serviceAbout,
		StartType: mgr.StartAutomatic}, args...)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := eventlog.InstallAsEventCreate(serviceName, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil &&
		!strings.Contains(err.Error(), "exists") {
		s.Delete()
		return fmt.Errorf("cannot register the event log source: %w", err)
	}
	return nil
}

func uninstallService() error {
	stopService() // not running is fine
	return controlService(func(s *mgr.Service) error {
		if err := s.Delete(); err != nil {
			return err
		}
		eventlog.Remove(serviceName)
		return nil
	})
}

func controlService(f func(*mgr.Service) error) error {
	m, err := mgr.Connect()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	s, err := m.OpenService(serviceName)
	if err != nil {
		return errors.New("not installed")
	}
	defer s.Close()
	return f(s)
}

func stopService() error {
	return controlService(func(s *mgr.Service) error {
		st, err := s.Control(svc.Stop)
		if err != nil {
			return err
		}
		for deadline := time.Now().Add(45 * time.Second); st.State != svc.Stopped; {
			if time.Now().After(deadline) {
				return errors.New("the service did not stop in time")
			}
			time.Sleep(300 * time.Millisecond)
			if st, err = s.Query(); err != nil {
				return err
			}
		}
		return nil
	})
}

func serviceState() (string, error) {
	var state string
	err := controlService(func(s *mgr.Service) error {
		st, err := s.Query()
		if err != nil {
			return err
		}
		state = map[svc.State]string{svc.Stopped: "stopped", svc.StartPending: "starting", svc.StopPending: "stopping",
			svc.Running: "running", svc.ContinuePending: "continuing", svc.PausePending: "pausing", svc.Paused: "paused"}[st.State]
		return nil
	})
	return state, err
}

// runService is what the service manager starts: the proxy, with the
// service's stop and parameter-change controls mapped to its stop and
// reload, and start, stop and fatal errors in the event log.
func runService(flags []string, stderr io.Writer) int {
	elog, err := eventlog.Open(serviceName)
	if err != nil {
		elog = nil
	}
	// A service has no console: were the process to crash, Go's report
	// would be lost. It goes to a file next to the log instead.
	if f, err := os.OpenFile(crashFile(flags), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600); err == nil {
		debug.SetCrashOutput(f, debug.CrashOptions{})
		f.Close()
	}
	h := &serviceHandler{flags: flags, elog: elog}
	if err := svc.Run(serviceName, h); err != nil {
		// Started by hand rather than by the service manager, most often.
		fmt.Fprintln(stderr, "emailproxy service run: only the service manager starts this (use `emailproxy service start`):", err)
		if elog != nil {
			elog.Error(1, "emailproxy service failed: "+err.Error())
			elog.Close()
		}
		return 2
	}
	if elog != nil {
		elog.Close()
	}
	return h.code
}

type serviceHandler struct {
	flags []string
	elog  *eventlog.Log
	code  int
}

func (h *serviceHandler) Execute(_ []string, req <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	stop := make(chan struct{})
	done := make(chan int, 1)
	var errs strings.Builder
	go func() { done <- Run(h.flags, io.Discard, &errs, stop) }()
	status <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown | svc.AcceptParamChange}
	h.info("emailproxy service started")
	for {
		select {
		case code := <-done:
			h.code = code
			if code != 0 {
				h.error(fmt.Sprintf("emailproxy stopped with status %d: %s", code, strings.TrimSpace(errs.String())))
				return true, uint32(code)
			}
			h.info("emailproxy service stopped")
			return false, 0
		case c := <-req:
			switch c.Cmd {
			case svc.Interrogate:
				status <- c.CurrentStatus
			case svc.Stop, svc.Shutdown:
				status <- svc.Status{State: svc.StopPending}
				close(stop)
				h.code = <-done
				h.info("emailproxy service stopped")
				return false, 0
			case svc.ParamChange:
				select {
				case reloads <- struct{}{}:
				default:
				}
			}
		}
	}
}

func (h *serviceHandler) info(msg string) {
	if h.elog != nil {
		h.elog.Info(1, msg)
	}
}

func (h *serviceHandler) error(msg string) {
	if h.elog != nil {
		h.elog.Error(1, msg)
	}
}
