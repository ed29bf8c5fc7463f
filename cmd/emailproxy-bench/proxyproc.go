package main

// The proxy under test as a child process: started, watched, stopped.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// startProxy starts the proxy under test and waits for its listeners.
func (b *bench) startProxy(cfgPath, caPath, workdir string, ports []int) error {
	if b.f.proxyAddr != "" {
		b.pid = b.f.proxyPid
		fmt.Fprintf(b.errw, "using the proxy at %s; its configuration: %s (CA %s)\n", b.f.proxyAddr, cfgPath, caPath)
		return waitPorts(b.f.proxyAddr, ports, 2*time.Minute, nil)
	}
	var cmd *exec.Cmd
	if b.f.proxyCmd != "" {
		line := strings.NewReplacer("{config}", cfgPath, "{ca}", caPath).Replace(b.f.proxyCmd)
		cmd = exec.Command("sh", "-c", "exec "+line)
	} else {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		sp, err := freePorts(1)
		if err != nil {
			return err
		}
		b.statsAddr = "127.0.0.1:" + strconv.Itoa(sp[0])
		// Wait for the stats endpoint too: the first phase reads it at once.
		ports = append(ports[:len(ports):len(ports)], sp[0])
		args := []string{"proxy", "--no-gui", "--config-file", cfgPath, "--stats-addr", b.statsAddr}
		if b.abuseRuns && !strings.Contains(b.f.proxyArg, "send-timeout") {
			// Stalled downloads end after the send timeout: a short one
			// keeps the run short (the default is 60 s).
			args = append(args, "--send-timeout", "5s")
		}
		args = append(args, strings.Fields(b.f.proxyArg)...)
		cmd = exec.Command(self, args...)
	}
	exited, err := launch(cmd, caPath, filepath.Join(workdir, "proxy.log"), ports)
	if cmd.Process != nil {
		b.proxy, b.pid, b.exited = cmd, cmd.Process.Pid, exited
		fmt.Fprintf(b.errw, "proxy started (pid %d): %s\n", b.pid, strings.Join(cmd.Args, " "))
	}
	if err != nil {
		b.stopProxy()
		return err
	}
	return nil
}

// launch starts a proxy child process with the mock's CA trusted, its
// output to logPath, in a process group of its own, and waits for it to
// listen on ports. exited is closed when the process ends (nil if it did
// not start). On an error the log's tail is in it.
func launch(cmd *exec.Cmd, caPath, logPath string, ports []int) (exited chan struct{}, err error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+caPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	ownProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the proxy: %w", err)
	}
	exited = make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	if err := waitPorts("127.0.0.1", ports, time.Minute, exited); err != nil {
		tail, _ := os.ReadFile(logPath)
		return exited, fmt.Errorf("%w; proxy log:\n%s", err, lastLines(tail, 20))
	}
	return exited, nil
}

func (b *bench) stopProxy() {
	if b.proxy == nil {
		return
	}
	stopChild(b.proxy, b.exited)
	b.proxy = nil
}

// stopChild asks a proxy process to stop (SIGTERM to its group), and
// kills it if it has not ended (exited closed) within 10 s.
func stopChild(cmd *exec.Cmd, exited <-chan struct{}) {
	terminate(cmd)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// freePorts returns n distinct free ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitPorts waits until host accepts connections on every port, or the
// proxy process ends (exited, if not nil).
func waitPorts(host string, ports []int, limit time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(limit)
	for _, p := range ports {
		addr := net.JoinHostPort(host, strconv.Itoa(p))
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the proxy does not listen on %s", addr)
			}
			select {
			case <-exited:
				return errors.New("the proxy exited at start")
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
