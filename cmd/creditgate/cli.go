package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// command is one of creditgate's sub-commands.
type command struct {
	name, args, summary string
	// flags declares the command's flags on fs and returns what runs it
	// once they are parsed.
	flags func(fs *flag.FlagSet) func(args []string) error
}

func commands() []command {
	return []command{
		{"serve", "[flags]", "run the gateway: SIP, the admin API, metrics", serveFlags},
		{"demo", "[flags]", "set up org \"demo\" on a running gateway and place one short call through it", demoFlags},
		{"cluster seed", "[flags]", "move a single node's configuration, API keys and money into a new cluster", seedFlags},
		{"version", "", "print the version and the commit it was built from", func(*flag.FlagSet) func([]string) error {
			return func([]string) error { fmt.Println(version()); return nil }
		}},
		{"help", "[command]", "this help, or a command's flags", func(*flag.FlagSet) func([]string) error {
			return func(args []string) error { return help(os.Stdout, args) }
		}},
	}
}

const intro = `creditgate: real-time call authorization for SIP trunks.

usage: creditgate <command> [flags]

`

const outro = `
With no flags, serve listens for SIP on 127.0.0.1:5060 (UDP and TCP) and for
the admin API on 127.0.0.1:8080, keeps its data in ./creditgate-data and
prices calls with the built-in sample deck. configs/creditgate.example.yaml
documents every setting; "creditgate help serve" lists the flags.
`

func usage(w io.Writer) {
	fmt.Fprint(w, intro+"commands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, outro)
}

// run is main's body: it returns the exit status. 0: done (or help asked
// for); 1: the command failed; 2: the command line was wrong.
func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(os.Stdout)
		return 0
	case "-version", "--version":
		fmt.Println(version())
		return 0
	}
	name, rest := commandName(args)
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		fs.SetOutput(io.Discard) // errors and help are printed below, once
		runCmd := c.flags(fs)
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				commandHelp(os.Stdout, c, fs)
				return 0
			}
			fmt.Fprintf(os.Stderr, "creditgate %s: %v\n\n", c.name, err)
			commandHelp(os.Stderr, c, fs)
			return 2
		}
		if err := runCmd(fs.Args()); err != nil {
			fmt.Fprintf(os.Stderr, "creditgate %s: %v\n", c.name, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "creditgate: unknown command %q\n\n", name)
	usage(os.Stderr)
	return 2
}

// commandName splits the command's name off args: one word, or two for a
// command of a group ("cluster seed"); the rest are its flags.
func commandName(args []string) (name string, rest []string) {
	if len(args) > 1 {
		two := args[0] + " " + args[1]
		for _, c := range commands() {
			if c.name == two {
				return two, args[2:]
			}
		}
	}
	return args[0], args[1:]
}

func help(w io.Writer, args []string) error {
	if len(args) == 0 {
		usage(w)
		return nil
	}
	name, _ := commandName(args)
	for _, c := range commands() {
		if c.name == name {
			fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
			c.flags(fs)
			commandHelp(w, c, fs)
			return nil
		}
	}
	return fmt.Errorf("no command %q (see creditgate help)", name)
}

func commandHelp(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: creditgate %s %s\n\n%s.\n", c.name, c.args, strings.ToUpper(c.summary[:1])+c.summary[1:])
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nflags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
}

// version is the module version and the commit of the build, from the
// build information Go embeds: "v1.2.3" for go install …@v1.2.3,
// "(devel)" for a build from a checkout, with the revision either way.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "creditgate (no build information)"
	}
	s := "creditgate " + bi.Main.Version
	var rev, at, dirty string
	for _, kv := range bi.Settings {
		switch kv.Key {
		case "vcs.revision":
			rev = kv.Value
		case "vcs.time":
			at = kv.Value
		case "vcs.modified":
			if kv.Value == "true" {
				dirty = ", with uncommitted changes"
			}
		}
	}
	if rev != "" {
		s += fmt.Sprintf(" (commit %.12s, %s%s)", rev, at, dirty)
	} else {
		s += " (no commit recorded: built outside a checkout or with -buildvcs=false)"
	}
	return s + fmt.Sprintf(" %s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
