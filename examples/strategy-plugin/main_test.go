package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"github.com/swiftmoe/swiftmoe/examples/strategy-plugin/hotspread"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// TestBuiltPlugin builds the example as the README says, starts it as a
// plugin process and plans through it.
func TestBuiltPlugin(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build the example: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, sdk.BinaryPrefix+hotspread.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginMap(),
		Cmd:              exec.Command(bin),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		SecureConfig:     &plugin.SecureConfig{Checksum: sum[:], Hash: sha256.New()},
		StartTimeout:     30 * time.Second,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: io.Discard}),
	})
	defer c.Kill()
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("starting the plugin: %v", err)
	}
	d, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	s := d.(*sdk.GRPCClient)
	callCtx, callCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer callCancel()
	if info, err := s.Describe(callCtx); err != nil || info.Name != hotspread.Name {
		t.Fatalf("Describe = %+v, %v; want %s", info, err, hotspread.Name)
	}
	topo := sdk.Topology{WorldSize: 4, SlotsPerRank: 3}
	req := &sdk.Request{Topology: topo, Layers: []sdk.LayerInput{{NumExperts: 5, Predicted: []float64{1, 9, 2, 3, 4}}}}
	resp, err := s.Plan(callCtx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := sdk.ValidateSlots(resp.Layers[0], 5, topo); err != nil {
		t.Fatalf("plan %v: %v", resp.Layers[0], err)
	}
	if got := sdk.Replicas(resp.Layers[0], 5)[1]; got != 8 {
		t.Errorf("hottest expert has %d replicas, want 12-5+1 = 8", got)
	}
	// Its options are checked when a job registers: it accepts none.
	if err := s.ValidateOptions(callCtx, nil); err != nil {
		t.Errorf("ValidateOptions(none) = %v, want nil", err)
	}
	if err := s.ValidateOptions(callCtx, map[string]string{"hot": "2"}); !errors.Is(err, sdk.ErrBadOption) || !strings.Contains(err.Error(), `"hot"`) {
		t.Errorf("ValidateOptions(hot=2) = %v, want the option refused by name", err)
	}
}
