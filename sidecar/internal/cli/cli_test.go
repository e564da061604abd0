package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func run(args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	err = Run(args, &o, &e)
	return o.String(), e.String(), err
}

// flagsOf lists every flag each command must document.
var flagsOf = map[string][]string{
	"serve":      {"listen", "plugins-dir", "metrics-listen", "metrics-per-expert", "plugin-timeout", "exit-with-parent", "allow-remote", "log-level"},
	"plan":       {"strategy", "loads", "world-size", "slots", "ranks-per-node", "iteration", "option", "plugins-dir", "json", "plugin-timeout"},
	"strategies": {"plugins-dir", "json"},
	"discover":   {"json"},
	"version":    {},
}

func TestHelpOnEveryCommand(t *testing.T) {
	if len(flagsOf) != len(commands()) {
		t.Fatalf("flagsOf covers %d commands, the CLI has %d", len(flagsOf), len(commands()))
	}
	for name, flags := range flagsOf {
		for _, h := range []string{"--help", "-h"} {
			t.Run(name+h, func(t *testing.T) {
				out, _, err := run(name, h)
				if err != nil || ExitCode(err) != 0 {
					t.Fatalf("got %v (exit %d), want success", err, ExitCode(err))
				}
				for _, want := range append([]string{"Usage:", "swiftmoe-sidecar " + name, "Example:", "--help"}, prefixed(flags)...) {
					if !strings.Contains(out, want) {
						t.Errorf("help of %s lacks %q:\n%s", name, want, out)
					}
				}
			})
		}
	}
	out, _, err := run("--help")
	if err != nil || !strings.Contains(out, "Commands:") {
		t.Errorf("top-level --help: got %v and\n%s", err, out)
	}
}

func prefixed(flags []string) []string {
	out := make([]string, len(flags))
	for i, f := range flags {
		out[i] = "--" + f
	}
	return out
}

func TestUsageErrorsExit2(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"serve", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"serve", "--plugin-timeout", "0s"}, "--plugin-timeout 0s is out of range"},
		{[]string{"serve", "--log-level", "loud"}, `--log-level "loud" is not a level`},
		{[]string{"serve", "--listen", "tcp://0.0.0.0:0"}, "not a loopback address"},
		{[]string{"serve", "--listen", "tcp://127.0.0.1"}, "want HOST:PORT"},
		{[]string{"serve", "--listen", "unix://relative.sock"}, "must be absolute"},
		{[]string{"serve", "--listen", "unix:///" + strings.Repeat("x", 200)}, "the limit is 107"},
		{[]string{"serve", "--listen", "http://127.0.0.1:80"}, "use unix:///abs/path.sock or tcp://"},
		{[]string{"serve", "--metrics-listen", "10.1.2.3:9464"}, "--allow-remote"},
		{[]string{"serve", "--metrics-listen", "127.0.0.1"}, "--metrics-listen \"127.0.0.1\": want HOST:PORT"},
		{[]string{"plan", "--world-size", "x"}, "invalid value"},
		{[]string{"plan"}, "--strategy is required"},
		{[]string{"plan", "--strategy", "s"}, "--loads is required"},
		{[]string{"plan", "--strategy", "s", "--loads", "f", "--world-size", "0", "--slots", "1"}, "--world-size 0 is out of range"},
		{[]string{"plan", "--strategy", "s", "--loads", "f", "--world-size", "4", "--slots", "0"}, "--slots 0 is out of range"},
		{[]string{"plan", "--strategy", "s", "--loads", "f", "--world-size", "4", "--slots", "1", "--ranks-per-node", "3"}, "--ranks-per-node 3 does not divide --world-size 4"},
		{[]string{"plan", "--strategy", "s", "--loads", "f", "--world-size", "4", "--slots", "1", "--iteration", "-2"}, "--iteration -2 is negative"},
		{[]string{"plan", "--strategy", "s", "--loads", "f", "--world-size", "65536", "--slots", "128"}, "= 8388608 slots per layer exceed the limit of 4194304"},
		{[]string{"plan", "--option", "novalue"}, `"novalue" is not key=value`},
		{[]string{"plan", "--option", "a=1", "--option", "a=2"}, `option "a" is given twice`},
		{[]string{"strategies", "extra"}, `unexpected argument "extra"`},
		{[]string{"version", "--json"}, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, stderr, err := run(tc.args...)
			if !errors.Is(err, ErrUsage) || ExitCode(err) != 2 {
				t.Fatalf("got %v (exit %d), want a usage error (exit 2)", err, ExitCode(err))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if !strings.Contains(stderr, "Usage:") {
				t.Errorf("stderr lacks the usage text:\n%s", stderr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run("version")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"swiftmoe-sidecar dev", "go go1.", "commit "} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}

func TestDiscoverJSON(t *testing.T) {
	out, _, err := run("discover", "--json")
	if err != nil {
		t.Fatalf("discover --json: %v", err)
	}
	if !strings.HasPrefix(strings.TrimSpace(out), "{") || !strings.Contains(out, `"gpu_count"`) {
		t.Errorf("discover --json printed no report object:\n%.400s", out)
	}
}
