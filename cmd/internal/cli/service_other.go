//go:build !windows

package cli

import (
	"fmt"
	"io"
)

// service explains that the service command is for Windows.
func service(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
		serviceUsage(stdout)
		return 0
	}
	fmt.Fprintln(stderr, "emailproxy service: Windows services only; on Linux run emailproxy under systemd (see the README)")
	return 2
}

// defaultConfigFile is emailproxy.config in the working directory.
func defaultConfigFile() string { return "emailproxy.config" }
