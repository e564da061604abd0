package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
)

// listTimeout bounds starting and describing every plugin.
const listTimeout = time.Minute

type optionJSON struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Default     string `json:"default"`
	// Type and Accepts are the declared type ("float", "int", "enum"; empty
	// for a string the strategy checks itself) and its values in words.
	Type    string `json:"type,omitempty"`
	Accepts string `json:"accepts,omitempty"`
}

type strategyJSON struct {
	Name        string       `json:"name"`
	Description string       `json:"description"`
	Version     string       `json:"version"`
	Options     []optionJSON `json:"options"`
	Path        string       `json:"path"`
	SHA256      string       `json:"sha256"`
}

func runStrategies(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("strategies", "[--plugins-dir DIR] [--json]",
		"Lists the strategy plugins (swiftmoe-strategy-NAME) in the plugins directory: description,\n"+
			"options, path and SHA-256. Each plugin is started (with the checksum check) to describe itself.",
		"swiftmoe-sidecar strategies --plugins-dir ./bin --json", stdout, stderr)
	dirFlag := fs.String("plugins-dir", "", "directory of the plugin binaries (default: the sidecar executable's directory)")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	if err := fs.parse(args); err != nil {
		return done(err)
	}
	dir, err := pluginsDir(*dirFlag)
	if err != nil {
		return err
	}
	h, err := host.New(host.Options{Dir: dir})
	if err != nil {
		return fmt.Errorf("--plugins-dir: %w", err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), listTimeout)
	defer cancel()
	infos, err := h.List(ctx)
	if err != nil {
		return err
	}
	out := make([]strategyJSON, len(infos))
	for i, in := range infos {
		out[i] = strategyJSON{Name: in.Name, Description: in.Description, Version: in.Version,
			Path: in.Path, SHA256: in.SHA256, Options: []optionJSON{}}
		for _, o := range in.Options {
			out[i].Options = append(out[i].Options, optionJSON{Name: o.Name, Description: o.Description, Default: o.Default,
				Type: string(o.Type), Accepts: o.Accepts()})
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if len(out) == 0 {
		_, err := fmt.Fprintf(stdout, "no strategy plugins (swiftmoe-strategy-NAME) in %s\n", dir)
		return err
	}
	for i, s := range out {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "%s %s\n  %s\n  path: %s\n  sha256: %s\n", s.Name, s.Version, s.Description, s.Path, s.SHA256)
		for _, o := range s.Options {
			accepts := ""
			if o.Accepts != "" {
				accepts = "; " + o.Accepts
			}
			fmt.Fprintf(stdout, "  option %s (default %q%s): %s\n", o.Name, o.Default, accepts, o.Description)
		}
	}
	return nil
}
