//go:build windows

package main

import "os/exec"

func ownProcessGroup(*exec.Cmd) {}

// terminate stops cmd: Windows has no SIGTERM to send another process.
func terminate(cmd *exec.Cmd) { cmd.Process.Kill() }
