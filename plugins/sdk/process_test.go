package sdk

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"reflect"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
)

const helperEnv = "SWIFTMOE_SDK_TEST_PLUGIN"

// TestHelperProcess is not a test: re-executed with helperEnv set, the test
// binary becomes a plugin process serving rotate through Serve.
func TestHelperProcess(*testing.T) {
	if os.Getenv(helperEnv) != "1" {
		return
	}
	Serve(rotate{})
	os.Exit(0)
}

func pluginClient(t *testing.T, checksum []byte) *plugin.Client {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	c := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          PluginMap(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		SecureConfig:     &plugin.SecureConfig{Checksum: checksum, Hash: sha256.New()},
		StartTimeout:     30 * time.Second,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: io.Discard}),
	})
	t.Cleanup(c.Kill)
	return c
}

func selfChecksum(t *testing.T) []byte {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return sum[:]
}

// TestPluginProcess serves a strategy written against the SDK from a real
// plugin process (AutoMTLS, checksum checked) and calls it.
func TestPluginProcess(t *testing.T) {
	c := pluginClient(t, selfChecksum(t))
	rpc, err := c.Client()
	if err != nil {
		t.Fatalf("starting plugin: %v", err)
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		t.Fatalf("dispensing %q: %v", PluginName, err)
	}
	s, ok := raw.(*GRPCClient)
	if !ok {
		t.Fatalf("dispensed %T, want *GRPCClient", raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.Describe(ctx)
	if err != nil || info.Name != "rotate" {
		t.Fatalf("Describe = %+v, %v; want rotate", info, err)
	}
	req := sampleRequest()
	req.Options = nil
	got, err := s.Plan(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := rotate{}.Plan(ctx, req)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Plan from the plugin process = %+v, want %+v", got, want)
	}
	for i, l := range got.Layers {
		if err := ValidateSlots(l, req.Layers[i].NumExperts, req.Topology); err != nil {
			t.Errorf("layer %d: %v", i, err)
		}
	}
}

func TestPluginChecksumMismatchRefused(t *testing.T) {
	bad := selfChecksum(t)
	bad[0] ^= 0xff
	c := pluginClient(t, bad)
	if _, err := c.Client(); !errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
		t.Errorf("starting a plugin with a wrong checksum: got %v, want ErrChecksumsDoNotMatch", err)
	}
}
