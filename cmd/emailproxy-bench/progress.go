package main

// Progress lines on a terminal while phases run.

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emailproxy/emailproxy/bench/load"
	"github.com/mattn/go-isatty"
)

// showProgress draws a progress bar for a timed phase on a terminal.
func (b *bench) showProgress(label string, d time.Duration, p *load.Progress) (stop func()) {
	start := time.Now()
	return b.ticker(func(final bool) string {
		el := time.Since(start)
		if final {
			el = d
		}
		frac := min(float64(el)/float64(d), 1)
		bar := strings.Repeat("█", int(frac*30)) + strings.Repeat("░", 30-int(frac*30))
		return fmt.Sprintf("%s %s %5.1fs  %d cycles  %d errors", label, bar, el.Seconds(), p.Cycles.Load(), p.Errors.Load())
	})
}

// showCount draws progress towards n connections.
func (b *bench) showCount(label string, n int, p *load.Progress) (stop func()) {
	return b.ticker(func(bool) string {
		done := int(p.Cycles.Load())
		frac := min(float64(done)/float64(max(n, 1)), 1)
		bar := strings.Repeat("█", int(frac*30)) + strings.Repeat("░", 30-int(frac*30))
		return fmt.Sprintf("%s %s %d/%d  %d errors", label, bar, done, n, p.Errors.Load())
	})
}

func (b *bench) ticker(line func(final bool) string) (stop func()) {
	var stopped atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stopped.Load() {
			if b.progress {
				fmt.Fprintf(b.errw, "\r%s\033[K", line(false))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	return func() {
		stopped.Store(true)
		<-done
		if b.progress {
			fmt.Fprintf(b.errw, "\r%s\033[K\n", line(true))
		} else {
			fmt.Fprintln(b.errw, line(true))
		}
	}
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}
