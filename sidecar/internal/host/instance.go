package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"

	"github.com/swiftmoe/swiftmoe/internal/transport"
	"github.com/swiftmoe/swiftmoe/plugins/sdk"
)

// describeTimeout bounds the Describe call made when a plugin starts.
const describeTimeout = 5 * time.Second

// killGrace is how long a graceful plugin shutdown may take before the
// process is sent SIGKILL.
const killGrace = 2 * time.Second

// instance is one running plugin process.
type instance struct {
	client   *plugin.Client
	strategy *sdk.GRPCClient
	pid      int
	socket   string // the plugin's unix socket, removed once it is killed
	info     sdk.Info
	sha256   string
}

// startInstance starts the plugin binary at path, verifies its checksum
// (go-plugin SecureConfig), negotiates gRPC over AutoMTLS and describes it.
func startInstance(log hclog.Logger, sums *checksums, name, path string, startTimeout time.Duration, sockDir string) (*instance, error) {
	sum, err := sums.expected(name, path)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path)
	// go-plugin appends the host environment after this; the plugin creates
	// its listening socket in sockDir.
	cmd.Env = []string{plugin.EnvUnixSocketDir + "=" + sockDir}
	bindToParent(cmd)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginMap(),
		Cmd:              cmd,
		SecureConfig:     &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           log,
		StartTimeout:     startTimeout,
		GRPCDialOptions:  transport.PluginDialOptions(),
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return nil, &Refusal{Strategy: name, Reason: RefusedChecksum,
				Msg: fmt.Sprintf("%s does not have the SHA-256 %s expected (%s); reinstall the plugin or update %s and restart the sidecar",
					path, hex.EncodeToString(sum), pinSource(sums), SumsFile)}
		}
		return nil, fmt.Errorf("starting plugin %s: %w", path, err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("dispensing %q from plugin %s: %w", sdk.PluginName, path, err)
	}
	strategy, ok := raw.(*sdk.GRPCClient)
	if !ok {
		client.Kill()
		return nil, fmt.Errorf("plugin %s dispensed %T, want *sdk.GRPCClient", path, raw)
	}
	in := &instance{client: client, strategy: strategy, sha256: hex.EncodeToString(sum)}
	if rc := client.ReattachConfig(); rc != nil {
		in.pid = rc.Pid
		if rc.Addr != nil && rc.Addr.Network() == "unix" {
			in.socket = rc.Addr.String()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), describeTimeout)
	defer cancel()
	in.info, err = strategy.Describe(ctx)
	if err != nil {
		in.kill()
		return nil, fmt.Errorf("describing plugin %s: %w", path, err)
	}
	return in, nil
}

func pinSource(s *checksums) string {
	if s.listed != nil {
		return "listed in " + SumsFile
	}
	return "pinned when the sidecar first loaded it"
}

// kill ends the process: a graceful go-plugin shutdown, then SIGKILL if the
// process is still there after killGrace. It returns once the process is
// gone (or after a bounded wait).
func (in *instance) kill() {
	done := make(chan struct{})
	go func() {
		in.client.Kill()
		close(done)
	}()
	select {
	case <-done:
		in.removeSocket()
		return
	case <-time.After(killGrace):
	}
	if in.pid > 0 {
		_ = syscall.Kill(in.pid, syscall.SIGKILL)
	}
	select {
	case <-done:
	case <-time.After(killGrace):
	}
	in.removeSocket()
}

// removeSocket deletes the plugin's socket file, which a killed plugin
// cannot remove itself.
func (in *instance) removeSocket() {
	if in.socket != "" {
		_ = os.Remove(in.socket)
	}
}

// exited reports whether the plugin process has ended.
func (in *instance) exited() bool { return in.client.Exited() }
