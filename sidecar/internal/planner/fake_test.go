package planner

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/swiftmoe/swiftmoe/plugins/sdk"
	"github.com/swiftmoe/swiftmoe/sidecar/internal/host"
)

// fakeStrategies is an in-process stand-in for the plugin host: a set of
// named strategies whose Plan is a func field. Like the host, it validates
// answers and reports failures as *host.Failure.
type fakeStrategies struct {
	plan        func(ctx context.Context, name string, req *sdk.Request) (*sdk.Response, error)
	options     []sdk.Option
	down        bool   // Info fails, as for a plugin that cannot start
	description string // Info's description; "fake" when empty
	// digest is the binary's SHA-256 Trust finds on disk ("00..." when
	// empty); the first Trust pins what it decides, as the host does.
	digest, pinned string
	mu             sync.Mutex // guards pinned
	// validate, when set, is the strategy's own check of a job's options;
	// else ValidateDeclared over options decides.
	validate func(opts map[string]string) error
	// windowOption is Info's LoadWindowOption.
	windowOption string
}

func (f *fakeStrategies) Trust(name, want string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	onDisk := f.digest
	if onDisk == "" {
		onDisk = strings.Repeat("0", 64)
	}
	switch {
	case f.pinned != "" && want != "" && want != f.pinned:
		return f.pinned, &host.Refusal{Strategy: name, Reason: host.RefusedPinConflict, Msg: "the job first saw " + want}
	case f.pinned == "" && want != "":
		f.pinned = want
	case f.pinned == "":
		f.pinned = onDisk
	}
	if onDisk != f.pinned {
		return f.pinned, &host.Refusal{Strategy: name, Reason: host.RefusedChecksum, Msg: "the binary has SHA-256 " + onDisk + ", not the " + f.pinned + " trusted"}
	}
	return f.pinned, nil
}

func (f *fakeStrategies) ValidateOptions(_ context.Context, _ string, opts map[string]string) error {
	if f.validate != nil {
		return f.validate(opts)
	}
	return sdk.ValidateDeclared(opts, f.options)
}

func (f *fakeStrategies) Has(name string) error {
	if name != "fake" {
		return fmt.Errorf("%w %q: no swiftmoe-strategy-%s in plugins directory /x", host.ErrUnknownStrategy, name, name)
	}
	return nil
}

func (f *fakeStrategies) Names() ([]string, error) { return []string{"fake"}, nil }

func (f *fakeStrategies) Info(_ context.Context, name string) (host.Info, error) {
	if f.down {
		return host.Info{}, fmt.Errorf("plugin %s failed to start", name)
	}
	desc := f.description
	if desc == "" {
		desc = "fake"
	}
	return host.Info{Info: sdk.Info{Name: name, Description: desc, Options: f.options, LoadWindowOption: f.windowOption}, Path: "/x/swiftmoe-strategy-fake", SHA256: "00"}, nil
}

func (f *fakeStrategies) List(ctx context.Context) ([]host.Info, error) {
	i, err := f.Info(ctx, "fake")
	return []host.Info{i}, err
}

func (f *fakeStrategies) Plan(ctx context.Context, name string, req *sdk.Request) (*sdk.Response, error) {
	if f.plan == nil {
		return staticResponse(req), nil
	}
	resp, err := f.plan(ctx, name, req)
	if err != nil && ctx.Err() != nil {
		return nil, &host.Failure{Strategy: name, Reason: host.ReasonCanceled, Err: err}
	}
	if err != nil {
		return nil, &host.Failure{Strategy: name, Reason: host.ReasonError, Err: err}
	}
	for l, in := range req.Layers {
		if l >= len(resp.Layers) {
			return nil, &host.Failure{Strategy: name, Reason: host.ReasonLayerCount, Err: sdk.ErrInvalidPlan}
		}
		if err := sdk.ValidateSlots(resp.Layers[l], in.NumExperts, req.Topology); err != nil {
			return nil, &host.Failure{Strategy: name, Reason: host.ReasonInvalidSlots, Err: err}
		}
	}
	return resp, nil
}

func staticResponse(req *sdk.Request) *sdk.Response {
	resp := &sdk.Response{}
	for _, l := range req.Layers {
		resp.Layers = append(resp.Layers, sdk.StaticSlots(l.NumExperts, req.Topology))
	}
	return resp
}
