package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/discover"
)

// discoverTimeout bounds hardware discovery.
const discoverTimeout = 30 * time.Second

func runDiscover(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("discover", "[--json]",
		"Reports this machine's GPUs (through NVML; zero GPUs when NVIDIA's library is absent) and network\ninterfaces (netlink and sysfs, with RDMA devices), and the defaults derived from them.",
		"swiftmoe-sidecar discover --json", stdout, stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.parse(args); err != nil {
		return done(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), discoverTimeout)
	defer cancel()
	rep, err := discover.Discover(ctx)
	if err != nil {
		return fmt.Errorf("discover: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return rep.WriteText(stdout)
}
