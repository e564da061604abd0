// Package cli is the command line of swiftmoe-sidecar: serve, plan,
// strategies, discover and version. Run returns an error instead of exiting;
// ExitCode maps it to the process status.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/planner"
)

// MemoryLimit is the soft memory limit main gives the Go runtime (unless
// GOMEMLIMIT is set): what all jobs together may make the sidecar hold
// (planner.MaxTotalJobBytes, which the planner's estimates overstate), plus
// room for the runtime, messages in flight and a metrics scrape. Below it
// the collector runs as GOGC says, near it more often, so the garbage of
// large jobs' plans cannot pile up to several times their size.
const MemoryLimit = planner.MaxTotalJobBytes + 256<<20

// ErrUsage wraps every error caused by the command line itself (unknown
// command, bad flag, missing argument); it exits with status 2.
var ErrUsage = errors.New("usage")

// usageError is a command-line mistake; the usage text has been printed.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Unwrap() error { return ErrUsage }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// ExitCode is the process status for an error Run returned: 0 for nil, 2
// for usage errors, 1 otherwise.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	default:
		return 1
	}
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the planner daemon (gRPC for the Python shim, strategy plugins, metrics)", runServe},
		{"plan", "plan offline from one iteration of a routing trace with a strategy plugin", runPlan},
		{"strategies", "list the strategy plugins in the plugins directory", runStrategies},
		{"discover", "report GPUs and network interfaces of this machine", runDiscover},
		{"version", "print the version, Go version and commit", runVersion},
	}
}

func writeUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("swiftmoe-sidecar plans adaptive expert replication for SwiftMoE training jobs.\n\n")
	b.WriteString("Usage:\n  swiftmoe-sidecar COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-11s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'swiftmoe-sidecar COMMAND --help' for a command's flags.\n\n")
	b.WriteString("Example:\n  swiftmoe-sidecar serve --plugins-dir ./bin\n")
	_, _ = io.WriteString(w, b.String())
}

// Run runs the command line args (without the program name).
func Run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		writeUsage(stderr)
		return usagef("no command given")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		writeUsage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	writeUsage(stderr)
	return usagef("unknown command %q", args[0])
}

// flagSet is a FlagSet whose --help prints to stdout and whose usage text
// lists every flag and an example.
type flagSet struct {
	*flag.FlagSet
	stdout, stderr io.Writer
	synopsis       string
	about          string
	example        string
}

func newFlagSet(name, synopsis, about, example string, stdout, stderr io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), stdout: stdout, stderr: stderr,
		synopsis: synopsis, about: about, example: example}
	fs.SetOutput(io.Discard)
	return fs
}

func (fs *flagSet) writeUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage:\n  swiftmoe-sidecar %s %s\n\n%s\n\nFlags:\n", fs.Name(), fs.synopsis, fs.about)
	fs.VisitAll(func(f *flag.Flag) {
		kind, usage := flag.UnquoteUsage(f)
		head := "  --" + f.Name
		if kind != "" {
			head += " " + strings.ToUpper(kind)
		}
		fmt.Fprintf(w, "%s\n      %s", head, strings.ReplaceAll(usage, "\n", "\n      "))
		if def := f.DefValue; def != "" && def != "false" && def != "0" {
			fmt.Fprintf(w, " (default %s)", def)
		}
		fmt.Fprintln(w)
	})
	fmt.Fprintf(w, "  -h, --help\n      show this help\n\nExample:\n  %s\n", fs.example)
}

// parse parses args; --help prints usage to stdout and returns errHelp; a
// bad flag or a stray argument prints usage to stderr and returns a usage
// error.
func (fs *flagSet) parse(args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.writeUsage(fs.stdout)
			return errHelp
		}
		fs.writeUsage(fs.stderr)
		return usagef("%s: %v", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		fs.writeUsage(fs.stderr)
		return usagef("%s: unexpected argument %q; every input is a flag", fs.Name(), fs.Arg(0))
	}
	return nil
}

// fail prints usage to stderr and returns a usage error.
func (fs *flagSet) fail(format string, args ...any) error {
	fs.writeUsage(fs.stderr)
	return usagef("%s: %s", fs.Name(), fmt.Sprintf(format, args...))
}

// errHelp ends a command after --help; Run turns it into success.
var errHelp = errors.New("help shown")

// done maps errHelp to nil.
func done(err error) error {
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}
