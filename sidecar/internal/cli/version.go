package cli

import (
	"io"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/version"
)

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "", "Prints the sidecar's version, the Go version it was built with and its commit.",
		"swiftmoe-sidecar version", stdout, stderr)
	if err := fs.parse(args); err != nil {
		return done(err)
	}
	return version.Write(stdout)
}
