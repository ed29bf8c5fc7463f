package cli

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// emailproxy.py's own options (argparse); the rest are this proxy's
// tuning options, listed apart in --help.
var referenceFlags = map[string]bool{"no-gui": true, "external-auth": true, "local-server-auth": true,
	"config-file": true, "cache-store": true, "log-file": true, "debug": true, "version": true}

// parseArgs parses args into fs the way emailproxy.py's argparse does:
// a unique prefix of a long option names it (--config for --config-file),
// --help prints the usage on stdout (errHelp), and a mistake is one line
// on stderr with a hint, not the whole usage.
func parseArgs(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, usage func(io.Writer)) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	expanded, err := expandPrefixes(fs, args)
	if err == nil {
		for _, a := range expanded {
			if a == "--" {
				break
			}
			if a == "-h" || a == "--help" || a == "-help" {
				usage(stdout)
				return errHelp
			}
		}
		err = fs.Parse(expanded)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s\nRun '%s --help' for the options.\n", fs.Name(), strings.TrimPrefix(err.Error(), "flag provided but not defined: "), fs.Name())
		if strings.HasPrefix(err.Error(), "flag provided but not defined") {
			return fmt.Errorf("unknown option: %w", err)
		}
		return err
	}
	return nil
}

// expandPrefixes replaces every option named by a unique prefix with its
// full name.
func expandPrefixes(fs *flag.FlagSet, args []string) ([]string, error) {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			out = append(out, args[i:]...)
			break
		}
		dashes := "--"
		if !strings.HasPrefix(a, "--") {
			dashes = "-"
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "help" || name == "h" {
			out = append(out, a)
			continue
		}
		full := name
		if fs.Lookup(name) == nil {
			var matches []string
			for _, n := range names {
				if strings.HasPrefix(n, name) {
					matches = append(matches, n)
				}
			}
			sort.Strings(matches)
			switch len(matches) {
			case 0:
				return nil, fmt.Errorf("unknown option %s%s", dashes, name)
			case 1:
				full = matches[0]
			default:
				return nil, fmt.Errorf("ambiguous option %s%s: could be --%s", dashes, name, strings.Join(matches, ", --"))
			}
		}
		opt := "--" + full
		if hasValue {
			out = append(out, opt+"="+value)
			continue
		}
		out = append(out, opt)
		if bf, ok := fs.Lookup(full).Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
			if i+1 < len(args) { // the value follows: never an option name
				out = append(out, args[i+1])
				i++
			}
		}
	}
	return out, nil
}

// printFlags lists fs's options whose names pass keep, one per entry.
func printFlags(w io.Writer, fs *flag.FlagSet, keep func(string) bool) {
	fs.VisitAll(func(f *flag.Flag) {
		if !keep(f.Name) {
			return
		}
		kind, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if kind != "" {
			fmt.Fprintf(w, " %s", kind)
		}
		fmt.Fprintf(w, "\n      %s", usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}
